"""The label stage without a server: Label Studio ↔ YOLO conversions, annotation choice, ledger, files backend."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks import label
from tasks.adapters import labelstudio
from tasks.config import AnnotatorSimParams, Params
from tasks.contracts import annotations as ls
from tasks.contracts import names, prediction_log, sample_manifest
from tasks.contracts.label_tasks import LabelError, TaskRef, image_path
from tasks.contracts.ledger import ledger_path, read_ledger, write_ledger
from tasks.contracts.reports import load_params_stamp, load_report
from tasks.contracts.sample_manifest import SampleManifestError
from tasks.sim.annotator import noisy_boxes
from tests.conftest import tiny_params_dict

CLASSES = ["circle", "triangle", "square"]
WHERE = "task 7 (image img_000001)"


def region(x: float, y: float, w: float, h: float, name: str = "circle", **extra: Any) -> dict[str, Any]:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": extra.pop("rotation", 0), "rectanglelabels": [name]}
    return {"id": "r", "type": "rectanglelabels", "from_name": "label", "to_name": "image", "value": value, **extra}


def annotation(aid: int, updated: str, *, cancelled: bool = False, result: list | None = None) -> dict[str, Any]:
    return {"id": aid, "updated_at": updated, "was_cancelled": cancelled, "result": result or []}


# --------------------------------------------------------------------------------------------------------------
# Labeling config.


@pytest.mark.parametrize(
    "classes",
    [["circle"], CLASSES, ['a "quoted" <name> & co', "ring"], [f"c{i}" for i in range(12)]],
    ids=["one", "three", "xml-escaping", "more-than-palette"],
)
def test_labeling_config_lists_classes_in_project_order(classes):
    config = ls.labeling_config(classes)
    assert ls.config_classes(config) == classes
    assert 'canRotate="false"' in config and 'value="$image"' in config


@pytest.mark.parametrize("classes", [[], ["a", "a"]], ids=["empty", "duplicate"])
def test_labeling_config_rejects_bad_class_lists(classes):
    with pytest.raises(ValueError, match="classes"):
        ls.labeling_config(classes)


def test_config_classes_of_a_foreign_config_is_empty():
    assert ls.config_classes('<View><Image name="i" value="$x"/></View>') == []


# --------------------------------------------------------------------------------------------------------------
# Coordinates.


@pytest.mark.parametrize(
    ("xyxy", "size", "expected"),
    [
        ([[0, 0, 200, 100]], (200, 100), [[0, 0, 100, 100]]),
        ([[20, 10, 60, 30]], (200, 100), [[10, 10, 20, 20]]),
        ([[-10, -5, 20, 10]], (200, 100), [[0, 0, 10, 10]]),  # sticks out top-left: clipped
        ([[180, 90, 230, 120]], (200, 100), [[90, 90, 10, 10]]),  # sticks out bottom-right: clipped
        (np.zeros((0, 4)), (200, 100), np.zeros((0, 4))),
    ],
    ids=["whole-image", "inside", "border-top-left", "border-bottom-right", "empty"],
)
def test_xyxy_to_percent(xyxy, size, expected):
    got = ls.xyxy_to_xywhp(xyxy, width=size[0], height=size[1])
    assert got.shape == np.asarray(expected).reshape(-1, 4).shape
    np.testing.assert_allclose(got, np.asarray(expected, dtype=float).reshape(-1, 4))


@pytest.mark.parametrize(
    ("xywhp", "xywhn"),
    [
        ([[0, 0, 100, 100]], [[0.5, 0.5, 1.0, 1.0]]),
        ([[10, 20, 30, 40]], [[0.25, 0.4, 0.3, 0.4]]),
        ([[90, 0, 10, 5]], [[0.95, 0.025, 0.1, 0.05]]),  # touching the right and top borders
        (np.zeros((0, 4)), np.zeros((0, 4))),
    ],
    ids=["whole-image", "inside", "at-border", "empty"],
)
def test_percent_yolo_round_trip(xywhp, xywhn):
    np.testing.assert_allclose(ls.xywhp_to_xywhn(xywhp), np.asarray(xywhn, dtype=float).reshape(-1, 4), atol=1e-12)
    np.testing.assert_allclose(ls.xywhn_to_xywhp(xywhn), np.asarray(xywhp, dtype=float).reshape(-1, 4), atol=1e-12)


def test_conversions_do_not_mutate_inputs():
    boxes = np.array([[10.0, 20.0, 30.0, 40.0]])
    ls.xyxy_to_xywhp(boxes, width=100, height=100)
    ls.xywhp_to_xywhn(boxes)
    ls.xywhn_to_xywhp(boxes / 100)
    np.testing.assert_array_equal(boxes, [[10.0, 20.0, 30.0, 40.0]])


# --------------------------------------------------------------------------------------------------------------
# Annotation → YOLO.


@pytest.mark.parametrize(
    ("result", "classes", "xywhn", "n_rejected"),
    [
        ([], [], np.zeros((0, 4)), 0),
        ([region(10, 20, 30, 40, "square")], [2], [[0.25, 0.4, 0.3, 0.4]], 0),
        ([region(0, 0, 100, 100)], [0], [[0.5, 0.5, 1.0, 1.0]], 0),
        ([region(-10, 90, 30, 20)], [0], [[0.1, 0.95, 0.2, 0.1]], 0),  # outside on two sides: clipped
        ([region(110, 10, 5, 5)], [], np.zeros((0, 4)), 1),  # fully outside: rejected
        ([region(10, 10, 0, 5)], [], np.zeros((0, 4)), 1),  # zero width: rejected
        ([region(10, 10, 5, -5)], [], np.zeros((0, 4)), 1),  # negative height: rejected
        ([region(10, 10, 5, 5), region(20, 20, 0, 0, "triangle")], [0], [[0.125, 0.125, 0.05, 0.05]], 1),
        ([{"id": "k", "type": "choices", "from_name": "x", "value": {"choices": ["a"]}}], [], np.zeros((0, 4)), 1),
    ],
    ids=[
        "empty",
        "inside",
        "whole-image",
        "clipped-at-borders",
        "outside",
        "zero-width",
        "negative-height",
        "one-kept-one-zero",
        "not-a-box",
    ],
)
def test_annotation_to_yolo(result, classes, xywhn, n_rejected):
    got = ls.annotation_to_yolo(result, classes=CLASSES, where=WHERE)
    assert got.class_id.tolist() == classes
    np.testing.assert_allclose(got.boxes_xywhn, np.asarray(xywhn, dtype=float).reshape(-1, 4), atol=1e-12)
    assert len(got.rejected) == n_rejected
    assert all(WHERE in reason for reason in got.rejected)


def test_rotated_box_becomes_its_axis_aligned_bounds():
    # 20 x 10 px box at (50, 50) px turned 90° clockwise about its top-left corner: spans x 40..50, y 50..70
    got = ls.annotation_to_yolo(
        [region(50, 50, 20, 10, rotation=90, original_width=100, original_height=100)], classes=CLASSES, where=WHERE
    )
    np.testing.assert_allclose(got.boxes_xywhn, [[0.45, 0.6, 0.1, 0.2]], atol=1e-9)


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ([region(1, 1, 5, 5, "dog")], r"task 7 \(image img_000001\) region r: label 'dog' not in base.classes"),
        ([{**region(1, 1, 5, 5), "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": []}}], "one"),
        ([region(1, 1, 5, 5, rotation=30)], "rotated box without original_width"),
        ([{**region(1, 1, 5, 5), "value": {"x": 1, "rectanglelabels": ["circle"]}}], "malformed box value"),
    ],
    ids=["unknown-label", "no-label", "rotated-without-size", "malformed"],
)
def test_annotation_to_yolo_errors_name_the_task(result, match):
    with pytest.raises(ls.LabelConversionError, match=match):
        ls.annotation_to_yolo(result, classes=CLASSES, where=WHERE)


def test_yolo_text_is_empty_for_no_objects_and_one_line_per_box():
    assert ls.annotation_to_yolo([], classes=CLASSES, where=WHERE).to_text() == ""
    text = ls.annotation_to_yolo([region(10, 20, 30, 40, "triangle")], classes=CLASSES, where=WHERE).to_text()
    assert text == "1 0.250000 0.400000 0.300000 0.400000\n"


# --------------------------------------------------------------------------------------------------------------
# Choosing the annotation that counts.


@pytest.mark.parametrize(
    ("annotations", "status", "chosen"),
    [
        ([], "pending", None),
        ([annotation(1, "2026-11-02T10:00:00Z")], "labeled", 1),
        ([annotation(1, "2026-11-02T10:00:00Z", cancelled=True)], "skipped", 1),
        ([annotation(1, "2026-11-02T10:00:00Z"), annotation(2, "2026-11-02T11:00:00Z")], "labeled", 2),
        ([annotation(3, "2026-11-02T12:00:00Z"), annotation(2, "2026-11-02T11:00:00Z")], "labeled", 3),
        ([annotation(1, "2026-11-02T10:00:00Z"), annotation(2, "2026-11-02T11:00:00Z", cancelled=True)], "labeled", 1),
        (
            [
                annotation(1, "2026-11-02T10:00:00Z", cancelled=True),
                annotation(2, "2026-11-02T11:00:00Z", cancelled=True),
            ],
            "skipped",
            2,
        ),
        ([annotation(4, "2026-11-02T10:00:00Z"), annotation(5, "2026-11-02T10:00:00Z")], "labeled", 5),  # tie: id
        ([annotation(1, "2026-11-02T10:00:00+02:00"), annotation(2, "2026-11-02T09:00:00Z")], "labeled", 2),
        ([annotation(6, "2026-11-02T10:00:00Z"), annotation(6, "2026-11-02T10:00:00Z")], "labeled", 6),  # duplicate
    ],
    ids=[
        "none",
        "one",
        "one-cancelled",
        "latest-wins",
        "latest-wins-any-order",
        "cancelled-later-ignored",
        "all-cancelled",
        "tie-by-id",
        "time-zones",
        "duplicate",
    ],
)
def test_choose_annotation(annotations, status, chosen):
    decision = ls.choose_annotation(annotations)
    assert decision.status == status
    assert decision.annotation_id == chosen


# --------------------------------------------------------------------------------------------------------------
# The stage on the files backend (and a scripted backend), with a tiny synthetic cycle.

CYCLE = "c001"
BATCH = "2026-11-02"
MANIFEST_SCHEMA = pa.schema(
    [
        ("image_sha256", pa.string()),
        ("image_id", pa.string()),
        ("image_uri", pa.string()),
        ("batch", pa.string()),
        ("date", pa.date32()),
        ("strategy", pa.string()),
        ("score", pa.float64()),
        ("rank", pa.int64()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
    ]
)


def write_cycle(params: Params, n: int = 4, *, cycle: str = CYCLE, start: int = 0) -> list[dict[str, Any]]:
    """Write ``n`` images of one batch, their predictions in the log and a sample manifest; return manifest rows."""
    images_dir = params.base.paths.production / BATCH / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for i in range(start, start + n):
        path = images_dir / f"{BATCH}_{i:06d}.png"
        Image.new("RGB", (80, 60), (40 * i % 255, 90, 160)).save(path)
        sha = prediction_log.sha256_file(path)
        boxes = np.array([[8.0, 6.0, 40.0, 30.0], [-4.0, 30.0, 20.0, 70.0]])[: i % 3]  # 0, 1 or 2 boxes
        records.append(
            prediction_log.ImageDetections(
                image_id=path.stem,
                image_uri=path.resolve().as_uri(),
                image_sha256=sha,
                width=80,
                height=60,
                latency_ms=1.0,
                boxes_xyxy=boxes,
                confidence=np.array([0.9, 0.4])[: len(boxes)],
                class_id=np.array([2, 0])[: len(boxes)],
            )
        )
        rows.append(
            {
                "image_sha256": sha,
                "image_id": path.stem,
                "image_uri": path.resolve().as_uri(),
                "batch": BATCH,
                "date": dt.date(2026, 11, 2),
                "strategy": "uncertainty",
                "score": 0.5,
                "rank": i,
                "model_name": "visionloop-detector",
                "model_version": "3",
            }
        )
    table = prediction_log.rows_to_table(
        records,
        batch=BATCH,
        date=dt.date(2026, 11, 2),
        model_name="visionloop-detector",
        model_version="3",
        model_alias="champion",
        class_names=CLASSES,
    )
    prediction_log.append(params.base.paths.predictions, table, part=f"batch={BATCH}_{start}")
    manifest = label.manifest_path(params, cycle)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    return rows


@pytest.fixture
def files_params(tmp_path: Path) -> Params:
    label_section = {"backend": "files", "document_root": str(tmp_path), "min_labeled": 3}
    data = tiny_params_dict(tmp_path, label=label_section)
    data["base"]["classes"] = CLASSES
    data["world"]["source"]["class_weights"] = None
    data["world"]["scenarios"] = {}
    data["world"]["production"].update(scenario=[], sources={"default": {"share": 1.0}})
    return Params.model_validate(data)


def export_from_outbox(params: Params, answers: dict[int, list[dict[str, Any]]]) -> Path:
    """What a person does by hand: import the outbox tasks, annotate some, export JSON into the inbox."""
    tasks = [
        t for path in sorted((params.base.paths.labels / "outbox").glob("*.json")) for t in json.loads(path.read_text())
    ]
    exported = []
    for task_id, task in enumerate(tasks, start=100):
        exported.append({"id": task_id, "data": task["data"], "annotations": answers.get(task["data"]["rank"], [])})
    inbox = params.base.paths.labels / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / "project-1-at-2026-11-03.json"
    path.write_text(json.dumps(exported))
    return path


def test_files_backend_round_trip(files_params):
    params = files_params
    rows = write_cycle(params)
    first = label.run(params, cycle=CYCLE)
    assert (first.imported, first.already_imported, first.pending, first.labeled) == (4, 0, 4, 0)
    assert first.waiting and first.backend == "files"

    outbox = sorted((params.base.paths.labels / "outbox").glob("*.json"))
    assert len(outbox) == 1
    tasks = {t["data"]["rank"]: t for t in json.loads(outbox[0].read_text())}
    assert tasks[0]["predictions"][0]["result"] == []  # a logged image without detections: empty pre-annotation
    pred = tasks[1]["predictions"][0]
    assert pred["model_version"] == "visionloop-detector-v3" and pred["score"] == pytest.approx(0.9)
    assert pred["result"][0]["value"]["rectanglelabels"] == ["square"]
    np.testing.assert_allclose(
        [pred["result"][0]["value"][k] for k in ("x", "y", "width", "height")], [10, 10, 40, 40], rtol=1e-6
    )
    assert tasks[2]["predictions"][0]["result"][1]["value"]["x"] == 0  # clipped at the left border
    assert tasks[1]["data"]["image"] == ls.local_files_url(f"data/world/production/{BATCH}/images/{BATCH}_000001.png")

    answers = {
        0: [annotation(1, "2026-11-03T10:00:00Z")],  # looked, no objects
        1: [annotation(2, "2026-11-03T10:00:00Z", result=pred["result"])],  # accepted the pre-annotation
        2: [annotation(3, "2026-11-03T10:00:00Z", cancelled=True)],  # skipped
    }  # rank 3: not annotated yet
    export_from_outbox(params, answers)
    second = label.run(params, cycle=CYCLE)
    assert (second.imported, second.already_imported, second.collected, second.skipped, second.pending) == (
        0,
        4,
        2,
        1,
        1,
    )
    assert second.labeled == 2 and second.waiting  # 2 < min_labeled 3 and one still pending

    cycle_dir = params.base.paths.labels / CYCLE
    assert (cycle_dir / "labels" / f"{rows[0]['image_id']}.txt").read_text() == ""
    assert (
        cycle_dir / "labels" / f"{rows[1]['image_id']}.txt"
    ).read_text() == "2 0.300000 0.300000 0.400000 0.400000\n"
    assert not (cycle_dir / "labels" / f"{rows[2]['image_id']}.txt").exists()
    assert sorted(p.name for p in (cycle_dir / "images").iterdir()) == [
        f"{rows[0]['image_id']}.png",
        f"{rows[1]['image_id']}.png",
    ]

    ledger = read_ledger(ledger_path(params))
    assert {r["image_id"]: r["status"] for r in ledger.values()} == {
        rows[0]["image_id"]: "labeled",
        rows[1]["image_id"]: "labeled",
        rows[2]["image_id"]: "skipped",
        rows[3]["image_id"]: "queued",
    }
    assert all(r["phash"] and r["task_id"] is not None for r in ledger.values())

    third = label.run(params, cycle=CYCLE)  # nothing new anywhere
    assert (third.imported, third.collected, third.skipped) == (0, 0, 0)
    assert len(list((params.base.paths.labels / "outbox").glob("*.json"))) == 1
    report = load_report(params.base.paths.reports, "label")
    assert report == third and report.backend == "files" and report.already_imported == 4
    assert load_params_stamp(params.base.paths.reports, "label") == params.stamp()


def test_rerun_with_a_grown_manifest_imports_only_new_images(files_params):
    params = files_params
    write_cycle(params, n=2)
    label.run(params, cycle=CYCLE)
    rows = write_cycle(params, n=2, start=2)  # the manifest now holds only the two new images
    table = pq.read_table(label.manifest_path(params, CYCLE))
    pq.write_table(table, label.manifest_path(params, CYCLE))
    result = label.run(params, cycle=CYCLE)
    assert (result.imported, result.already_imported, result.pending) == (2, 0, 4)
    assert len(read_ledger(ledger_path(params))) == 4
    assert {r["image_id"] for r in rows} <= {r["image_id"] for r in read_ledger(ledger_path(params)).values()}


def test_image_deleted_after_sampling_is_left_out_and_named(files_params):
    params = files_params
    rows = write_cycle(params, n=3)
    gone = image_path(rows[1]["image_uri"])
    gone.unlink()
    result = label.run(params, cycle=CYCLE)
    assert (result.imported, result.already_imported) == (2, 0)
    assert len(result.missing) == 1 and str(gone) in result.missing[0] and "gone" in result.missing[0]
    ledger = read_ledger(ledger_path(params))
    assert {r["image_id"] for r in ledger.values()} == {rows[0]["image_id"], rows[2]["image_id"]}
    tasks = json.loads(next((params.base.paths.labels / "outbox").glob("*.json")).read_text())
    assert {t["data"]["image_id"] for t in tasks} == {rows[0]["image_id"], rows[2]["image_id"]}


def test_unknown_label_fails_naming_the_task_and_collects_nothing(files_params):
    params = files_params
    write_cycle(params, n=2)
    label.run(params, cycle=CYCLE)
    export_from_outbox(
        params,
        {
            0: [annotation(1, "2026-11-03T10:00:00Z", result=[region(1, 1, 5, 5, "circle")])],
            1: [annotation(2, "2026-11-03T10:00:00Z", result=[region(1, 1, 5, 5, "dog")])],
        },
    )
    with pytest.raises(LabelError, match=r"task 101 .*label 'dog' not in base.classes"):
        label.run(params, cycle=CYCLE)
    assert not (params.base.paths.labels / CYCLE / "labels").exists()
    assert {r["status"] for r in read_ledger(ledger_path(params)).values()} == {"queued"}


class ScriptedBackend:
    """A backend that confirms only some tasks (as a server would after a partial failure)."""

    name = "labelstudio"
    project_id = 1

    def __init__(self, confirm: int) -> None:
        self.confirm = confirm
        self.submitted: list[list[dict[str, Any]]] = []

    def submit(self, tasks, *, folders):
        self.submitted.append(tasks)
        stamp = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
        refs = {t["data"]["image_sha256"]: TaskRef(10 + i, stamp) for i, t in enumerate(tasks[: self.confirm])}
        return refs, len(refs)

    def fetch(self, rows):
        return []


def test_ledger_records_only_confirmed_tasks_and_a_rerun_retries_the_rest(files_params):
    params = files_params
    write_cycle(params, n=3)
    with pytest.raises(labelstudio.LabelStudioError, match=r"1 task.* not confirmed"):
        label.run(params, cycle=CYCLE, backend=ScriptedBackend(confirm=2))
    ledger = read_ledger(ledger_path(params))
    assert sorted(r["task_id"] for r in ledger.values()) == [10, 11]
    retry = ScriptedBackend(confirm=5)
    result = label.run(params, cycle=CYCLE, backend=retry)
    assert [len(batch) for batch in retry.submitted] == [1]
    assert (result.imported, result.already_imported, result.pending) == (1, 2, 3)


@pytest.mark.parametrize(
    ("labeled", "pending", "min_labeled", "waiting"),
    [(0, 0, 3, False), (2, 1, 3, True), (3, 1, 3, False), (2, 0, 3, False), (0, 5, 0, False)],
    ids=["nothing-queued", "too-few-more-coming", "enough", "too-few-but-nothing-left", "min-zero"],
)
def test_waiting_rule(files_params, labeled, pending, min_labeled, waiting):
    params = files_params.model_copy(
        update={"label": files_params.label.model_copy(update={"min_labeled": min_labeled})}
    )
    write_cycle(params, n=labeled + pending)
    if labeled + pending:
        label.run(params, cycle=CYCLE)
        export_from_outbox(params, {i: [annotation(i + 1, "2026-11-03T10:00:00Z")] for i in range(labeled)})
    assert label.run(params, cycle=CYCLE).waiting is waiting


# --------------------------------------------------------------------------------------------------------------
# Inputs and preconditions.


def test_missing_manifest_names_the_sample_stage(files_params):
    with pytest.raises(SampleManifestError, match="run the sample stage"):
        label.run(files_params, cycle=CYCLE)


def test_manifest_missing_columns_are_listed(files_params, tmp_path):
    path = label.manifest_path(files_params, CYCLE)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_sha256": ["a" * 64]}), path)
    with pytest.raises(SampleManifestError, match=r"lacks column\(s\) \['image_id'"):
        label.run(files_params, cycle=CYCLE)


@pytest.mark.parametrize("cycle", ["", "../x", "a/b", ".hidden"], ids=["empty", "parent", "slash", "dot"])
def test_bad_cycle_names_are_refused(files_params, cycle):
    with pytest.raises(LabelError, match="cycle"):
        label.run(files_params, cycle=cycle)


def test_image_outside_the_document_root_names_the_fix(files_params, tmp_path):
    write_cycle(files_params, n=1)
    other_root = tmp_path / "elsewhere"
    other_root.mkdir()
    params = files_params.model_copy(
        update={"label": files_params.label.model_copy(update={"document_root": other_root})}
    )
    with pytest.raises(LabelError, match="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        label.run(params, cycle=CYCLE)
    assert not ledger_path(params).exists()


def test_inbox_file_that_is_not_an_export_is_named(files_params):
    write_cycle(files_params, n=1)
    label.run(files_params, cycle=CYCLE)
    bad = files_params.base.paths.labels / "inbox" / "bad.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps([{"id": 1, "data": {"image": "x"}}]))
    with pytest.raises(LabelError, match=r"bad.json task #0 \(id 1\): no data.image_sha256"):
        label.run(files_params, cycle=CYCLE)


def test_missing_token_is_a_clear_error(files_params, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(labelstudio.LabelStudioAuthError, match="LABEL_STUDIO_API_KEY is not set"):
        labelstudio.connect(files_params.label)


def test_server_down_is_retried_then_names_the_start_command(files_params, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "some-token")
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{port}")
    settings = files_params.label.model_copy(update={"retries": 1, "retry_delay_s": 0.0})
    with pytest.raises(labelstudio.LabelStudioUnavailable, match=rf"127.0.0.1:{port}.*2 tries.*make labelstudio-up"):
        labelstudio.connect(settings)


# --------------------------------------------------------------------------------------------------------------
# The annotator simulator's noise.

ORACLE = np.array([[0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.2, 0.2]])


@pytest.mark.parametrize(
    ("noise", "kept"),
    [
        (AnnotatorSimParams(), [True, True, True]),
        (AnnotatorSimParams(small_px=10, drop_small=1.0), [True, False, True]),  # the 5 px box is missed
        (AnnotatorSimParams(small_px=10, drop_small=0.0), [True, True, True]),
        (AnnotatorSimParams(small_px=1000, drop_small=1.0), [False, False, False]),
    ],
    ids=["off", "drop-small", "small-but-p0", "drop-all"],
)
def test_simulator_drops_small_boxes(noise, kept):
    mask, boxes = noisy_boxes(ORACLE, width=100, height=100, noise=noise, rng=np.random.default_rng(0))
    assert mask.tolist() == kept
    if noise.jitter == 0:
        np.testing.assert_array_equal(boxes, ORACLE[mask])


@pytest.mark.parametrize("jitter", [0.05, 0.2, 0.5])
def test_simulator_jitter_stays_bounded_and_inside(jitter):
    mask, boxes = noisy_boxes(
        ORACLE, width=100, height=100, noise=AnnotatorSimParams(jitter=jitter), rng=np.random.default_rng(1)
    )
    assert mask.all()
    corners = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
    oracle = np.concatenate([ORACLE[:, :2] - ORACLE[:, 2:] / 2, ORACLE[:, :2] + ORACLE[:, 2:] / 2], axis=1)
    size = np.concatenate([ORACLE[:, 2:], ORACLE[:, 2:]], axis=1)
    assert (np.abs(corners - oracle) <= jitter * size + 1e-12).all()
    assert (corners >= 0).all() and (corners <= 1).all() and (boxes[:, 2:] >= 0).all()


def test_simulator_on_no_boxes():
    mask, boxes = noisy_boxes(
        np.zeros((0, 4)), width=10, height=10, noise=AnnotatorSimParams(jitter=0.1), rng=np.random.default_rng()
    )
    assert mask.shape == (0,) and boxes.shape == (0, 4)


def test_reads_the_manifest_the_sample_stage_writes(files_params):
    rows = write_cycle(files_params, n=2)
    extra = {"phash": "8f373714acfcf4d0", "strategies": ["uncertainty"]}
    table = pa.Table.from_pylist(
        [{**r, **extra, "rank": i + 1} for i, r in enumerate(rows)], schema=sample_manifest.SCHEMA
    )
    pq.write_table(table, label.manifest_path(files_params, CYCLE))
    assert [r.phash for r in sample_manifest.read_manifest(label.manifest_path(files_params, CYCLE))] == [
        extra["phash"]
    ] * 2
    label.run(files_params, cycle=CYCLE)
    assert {r["phash"] for r in read_ledger(ledger_path(files_params)).values()} == {extra["phash"]}


# ---------------------------------------------------------------- ids from data never become paths outside the root


def test_a_tampered_manifest_image_id_is_refused_before_anything_is_imported(files_params):
    """Before: the id was joined into ``labels/<cycle>/labels/<id>.txt`` unchecked (issue 12)."""
    params = files_params
    rows = write_cycle(params)
    rows[1]["image_id"] = "../../../escaped"
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), label.manifest_path(params, CYCLE))
    with pytest.raises(LabelError, match=r"sample manifest row 1: image id '\.\./\.\./\.\./escaped'"):
        label.run(params, cycle=CYCLE)
    assert not ledger_path(params).exists() and not (params.base.paths.labels / "outbox").exists()


def test_a_tampered_ledger_image_id_never_writes_outside_the_labels_folder(files_params):
    params = files_params
    write_cycle(params)
    label.run(params, cycle=CYCLE)
    outbox = sorted((params.base.paths.labels / "outbox").glob("*.json"))
    tasks = {t["data"]["rank"]: t for t in json.loads(outbox[0].read_text())}
    ledger = read_ledger(ledger_path(params))
    target = ledger[tasks[1]["data"]["image_sha256"]]
    escaped = params.base.paths.labels / CYCLE / "labels" / ".." / ".." / ".." / "escaped"
    target["image_id"] = "../../../escaped"
    write_ledger(ledger_path(params), ledger)
    accepted = annotation(2, "2026-11-03T10:00:00Z", result=tasks[1]["predictions"][0]["result"])
    export_from_outbox(params, {1: [accepted]})
    with pytest.raises(LabelError, match=r"label ledger row of task .*: image id '\.\./\.\./\.\./escaped'"):
        label.run(params, cycle=CYCLE)
    assert not escaped.with_suffix(".txt").exists() and not list(escaped.parent.glob("escaped*"))


@pytest.mark.parametrize(
    ("image_id", "ok"),
    [
        ("2026-11-02_000001", True),
        ("cam 1 frame.0001", True),
        ("caméra_1", True),
        ("../x", False),
        ("a/b", False),
        ("a\\b", False),
        ("..", False),
        (".hidden", False),
        ("x*", False),
        ("", False),
        ("a\x00b", False),
        ("a" * 201, False),
        (None, False),
    ],
)
def test_image_id_rule(image_id, ok):
    if ok:
        assert names.check_image_id(image_id, where="test") == image_id
    else:
        with pytest.raises(ValueError, match="an image id names a file"):
            names.check_image_id(image_id, where="test")
