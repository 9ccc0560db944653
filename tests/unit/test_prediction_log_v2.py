"""The prediction log's version 2: new columns, error rows, shadow rows, old files still read, the sources sidecar.

Every reader of the log meets a real version-1 file here (its schema is spelled out below, as the code before
version 2 wrote it): ``read``, ``window_files``, ``logged_batches``, ``open_dataset``, the sample stage's readers
and the validate stage's schema and row suites.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks import sample, validate
from tasks.config import Params
from tasks.contracts import prediction_log as plog
from tasks.contracts import prediction_rows
from tasks.contracts.batch_sources import SourcesError, read_sources
from tasks.contracts.prediction_log import ImageDetections, LoggedBatch, PredictionLogError
from tasks.contracts.validation_frames import log_files, log_schema_frame
from tasks.core.image_stats import ImageStats
from tasks.decisions import expectations
from tests.conftest import tiny_params_dict
from tests.unit.test_sample import BOX, FAR, World, detections, only, picked, sha, table_of

CLASSES = ["circle", "square", "triangle"]
DAY = dt.date(2026, 11, 2)
TS = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
STATS = ImageStats(brightness=120.5, contrast=30.25, sharpness=400.0, mean_r=100.0, mean_g=130.0, mean_b=90.0)

# The file format before version 2, as tasks/contracts/prediction_log.py wrote it (kept here on purpose: the test
# must not follow later changes of the code's own description of version 1).
OLD_SCHEMA = pa.schema(
    [
        pa.field(n, t, nullable=False)
        for n, t in [
            ("image_id", pa.string()),
            ("image_uri", pa.string()),
            ("image_sha256", pa.string()),
            ("batch", pa.string()),
            ("date", pa.date32()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
        ]
    ]
    + [pa.field("model_alias", pa.string()), pa.field("class_id", pa.int16()), pa.field("class_name", pa.string())]
    + [pa.field(n, pa.float32()) for n in ("confidence", "x1", "y1", "x2", "y2", "x1n", "y1n", "x2n", "y2n")]
    + [
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
        pa.field("latency_ms", pa.float32(), nullable=False),
        pa.field("n_detections", pa.int16(), nullable=False),
    ]
)


def record(name: str, n_boxes: int = 1, **changes: Any) -> ImageDetections:
    fields: dict[str, Any] = {
        "image_id": name,
        "image_uri": f"file:///prod/{name}.png",
        "image_sha256": hashlib.sha256(name.encode()).hexdigest(),
        "width": 64,
        "height": 48,
        "latency_ms": 4.0,
        "boxes_xyxy": np.array([[4.0, 4.0, 30.0, 30.0]] * n_boxes).reshape(-1, 4),
        "confidence": np.full(n_boxes, 0.8),
        "class_id": np.full(n_boxes, 1),
    }
    return ImageDetections(**(fields | changes))


def table(records: list[ImageDetections], **kwargs: Any) -> pa.Table:
    args: dict[str, Any] = {
        "batch": DAY.isoformat(),
        "date": DAY,
        "model_name": "visionloop-detector",
        "model_version": "3",
        "model_alias": "champion",
        "class_names": CLASSES,
        "ts": TS,
    }
    return plog.rows_to_table(records, **(args | kwargs))


def old_table(records: list[ImageDetections], **kwargs: Any) -> pa.Table:
    """A table exactly as a version-1 writer produced it."""
    return table(records, **kwargs).select(OLD_SCHEMA.names).cast(OLD_SCHEMA)


def write_old_file(root: Path, records: list[ImageDetections], *, name: str = "old.parquet", **kwargs: Any) -> Path:
    path = root / f"date={DAY}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(old_table(records, **kwargs), path)
    assert pq.read_schema(path).names == OLD_SCHEMA.names
    return path


# --- schema ---------------------------------------------------------------------------------------------------------


def test_v2_adds_its_columns_after_the_v1_ones() -> None:
    assert plog.SCHEMA.names[: len(OLD_SCHEMA)] == OLD_SCHEMA.names
    assert plog.V1_SCHEMA.equals(OLD_SCHEMA)
    assert plog.V2_COLUMNS == (
        "source",
        "error",
        "brightness",
        "contrast",
        "sharpness",
        "mean_r",
        "mean_g",
        "mean_b",
        "shadow",
    )
    assert plog.SCHEMA.names[len(OLD_SCHEMA) : len(OLD_SCHEMA) + len(plog.V2_COLUMNS)] == list(plog.V2_COLUMNS)
    fields = {f.name: f for f in plog.SCHEMA}
    assert not fields["source"].nullable and not fields["shadow"].nullable and fields["error"].nullable
    assert all(fields[n].type == pa.float32() and fields[n].nullable for n in plog.STAT_COLUMNS)
    assert plog.ERROR_KINDS == ("unreadable", "decode", "inference", "timeout")
    assert hashlib.sha256(b"").hexdigest() == plog.EMPTY_SHA256


def test_rows_carry_source_stats_error_and_shadow() -> None:
    records = [
        record("a", 2, source="cam-a", stats=STATS),
        record("b", 0, stats=STATS),
        ImageDetections.failed(
            image_id="c", image_uri="file:///prod/c.png", image_sha256=plog.EMPTY_SHA256, error="unreadable"
        ),
        ImageDetections.failed(
            image_id="d",
            image_uri="file:///prod/d.png",
            image_sha256=hashlib.sha256(b"d").hexdigest(),
            error="timeout",
            source="cam-b",
            width=64,
            height=48,
            latency_ms=250.0,
        ),
    ]
    rows = table(records).to_pylist()
    assert [r["image_id"] for r in rows] == ["a", "a", "b", "c", "d"]
    assert [r["source"] for r in rows] == ["cam-a", "cam-a", "default", "default", "cam-b"]
    assert [r["error"] for r in rows] == [None, None, None, "unreadable", "timeout"]
    assert [r["n_detections"] for r in rows] == [2, 2, 0, 0, 0]
    assert {r["shadow"] for r in rows} == {False}
    assert rows[0]["brightness"] == pytest.approx(120.5) and rows[2]["mean_b"] == pytest.approx(90.0)
    for row in rows[3:]:
        assert all(row[c] is None for c in ("class_id", "confidence", "x1", "x1n", *plog.STAT_COLUMNS))
    assert (rows[3]["image_width"], rows[3]["latency_ms"]) == (0, 0.0)
    assert (rows[4]["image_width"], rows[4]["image_height"], rows[4]["latency_ms"]) == (64, 48, 250.0)
    assert set(table([record("a")], shadow=True)["shadow"].to_pylist()) == {True}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        pytest.param({"error": "oops"}, "error 'oops' is not one of", id="unknown-error-kind"),
        pytest.param({"error": "decode"}, "carries no boxes and no stats", id="error-with-boxes"),
        pytest.param({"source": ""}, "source '' must be a non-empty string", id="empty-source"),
        pytest.param({"width": 0}, "image size 0x48 must be positive", id="size-0-without-error"),
    ],
)
def test_image_detections_checks_the_new_fields(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(PredictionLogError, match=match):
        record("x", 1, **changes)


def test_error_record_may_not_carry_stats_but_may_have_size_0() -> None:
    with pytest.raises(PredictionLogError, match="no boxes and no stats"):
        record("x", 0, error="inference", stats=STATS)
    assert record("x", 0, error="decode", width=0, height=0).n_detections == 0


# --- upgrade ---------------------------------------------------------------------------------------------------------


def test_upgrade_fills_the_v2_columns_of_an_old_table() -> None:
    old = old_table([record("a", 2), record("b", 0)])
    new = plog.upgrade(old)
    assert new.schema.equals(plog.SCHEMA)
    assert new.select(OLD_SCHEMA.names).equals(old.select(OLD_SCHEMA.names).cast(plog.V1_SCHEMA))
    assert set(new["source"].to_pylist()) == {"default"} and set(new["shadow"].to_pylist()) == {False}
    assert all(new[c].null_count == new.num_rows for c in ("error", *plog.STAT_COLUMNS))
    current = table([record("a", 1, source="cam", stats=STATS)])
    assert plog.upgrade(current).equals(current)  # a version-2 table passes unchanged
    shuffled = old.select(list(reversed(old.column_names)))
    assert plog.upgrade(shuffled).equals(new)


def test_upgrade_fills_null_source_and_shadow_as_open_dataset_reads_them() -> None:
    current = table([record("a")])
    nulls = current.set_column(current.schema.get_field_index("source"), "source", pa.nulls(1, pa.string()))
    nulls = nulls.set_column(nulls.schema.get_field_index("shadow"), "shadow", pa.nulls(1, pa.bool_()))
    upgraded = plog.upgrade(nulls)
    assert upgraded["source"].to_pylist() == ["default"] and upgraded["shadow"].to_pylist() == [False]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(lambda t: t.drop_columns(["error"]), "missing column error", id="v2-missing-one-new-column"),
        pytest.param(lambda t: t.drop_columns(["confidence"]), "missing column confidence", id="missing-old-column"),
        pytest.param(lambda t: t.append_column("note", pa.nulls(t.num_rows)), "unexpected column note", id="extra"),
        pytest.param(
            lambda t: t.set_column(
                t.schema.get_field_index("brightness"), "brightness", t["brightness"].cast(pa.float64())
            ),
            "column brightness has type double, expected float",
            id="mistyped-new-column",
        ),
        pytest.param(
            lambda t: t.select(OLD_SCHEMA.names).set_column(0, "image_id", pa.nulls(t.num_rows, pa.string())),
            "column image_id is not nullable but has 1 null(s)",
            id="null-in-not-null",
        ),
    ],
)
def test_upgrade_keeps_rejecting_other_schemas(change, problem: str) -> None:
    with pytest.raises(PredictionLogError, match="table to upgrade") as info:
        plog.upgrade(change(table([record("a")])))
    assert problem in str(info.value)


def test_append_refuses_an_old_table(tmp_path: Path) -> None:
    with pytest.raises(PredictionLogError, match="missing column source"):
        plog.append(tmp_path, old_table([record("a")]), part="old")


# --- every reader reads an old file ----------------------------------------------------------------------------------


def test_every_reader_reads_a_version_1_file_beside_a_version_2_one(tmp_path: Path) -> None:
    old_path = write_old_file(tmp_path, [record("a", 2), record("b", 0)])
    plog.append(tmp_path, table([record("c", 1, source="cam", stats=STATS)], model_version="4"), part="new")

    got = plog.read(tmp_path)
    assert got.schema.equals(plog.SCHEMA) and got.num_rows == 4
    old_rows = got.filter(pc.equal(got["model_version"], "3"))
    assert set(old_rows["source"].to_pylist()) == {"default"} and old_rows["brightness"].null_count == 3
    assert got.filter(pc.equal(got["model_version"], "4"))["source"].to_pylist() == ["cam"]

    new_path = tmp_path / f"date={DAY}" / "new.parquet"
    assert [path for path, _ in plog.window_files(tmp_path, days=1)] == [new_path, old_path]  # path order
    assert plog.logged_batches(tmp_path) == {
        LoggedBatch(DAY.isoformat(), "visionloop-detector", "3"),
        LoggedBatch(DAY.isoformat(), "visionloop-detector", "4"),
    }
    lazy = plog.open_dataset(tmp_path).to_table()
    assert lazy.num_rows == 4 and lazy["source"].null_count == 3  # lazy: the old file's new columns read as null
    assert plog.upgrade(lazy).sort_by("image_id").equals(got.sort_by("image_id"))

    parts = prediction_rows.window_parts(tmp_path, days=1)
    champion = prediction_rows.find_champion(parts, alias="champion")
    assert champion == prediction_rows.ModelKey("champion", "visionloop-detector", "4")
    old_key = prediction_rows.ModelKey("champion", "visionloop-detector", "3")
    rows = prediction_rows.read_image_rows([old_path], model=old_key, boxes=True)
    assert len(rows) == 2 and rows.starts.tolist() == [0, 2]
    meta = prediction_rows.image_meta([old_path], model=old_key, images=rows.images)
    assert {m["image_id"] for m in meta.values()} == {"a", "b"}


def test_the_validate_stage_accepts_an_old_file_and_error_rows(tmp_path: Path) -> None:
    params = Params.model_validate(tiny_params_dict(tmp_path))
    root = params.base.paths.predictions
    classes = list(params.base.classes)
    write_old_file(root, [record("a", 2), record("b", 0)], class_names=classes)
    errors = [
        record("c", 1, stats=STATS),
        ImageDetections.failed(
            image_id="d", image_uri="file:///d.png", image_sha256=plog.EMPTY_SHA256, error="unreadable"
        ),
        ImageDetections.failed(
            image_id="e",
            image_uri="file:///e.png",
            image_sha256=plog.EMPTY_SHA256,
            error="inference",
            width=64,
            height=48,
            latency_ms=3.0,
        ),
    ]
    plog.append(root, table(errors, class_names=classes, model_version="4"), part="new")
    assert log_problems(params) == []


BAD_ROWS = {
    "size-0-without-error": (lambda t: _set(t, "image_width", pa.array([0], pa.int32())), "image_width >= 1"),
    "unknown-error-kind": (
        lambda t: _set(_set(t, "error", pa.array(["oops"])), "class_id", pa.nulls(1, pa.int16())),
        "error null or one of",
    ),
    "error-row-with-a-box": (lambda t: _set(t, "error", pa.array(["decode"])), "n_detections 0 on an error row"),
    "error-row-with-stats": (
        lambda t: _set(
            _set(_set(t, "error", pa.array(["decode"])), "n_detections", pa.array([0], pa.int16())),
            "class_id",
            pa.nulls(1, pa.int16()),
        ),
        "brightness null on an error row",
    ),
    "brightness-out-of-range": (
        lambda t: _set(t, "brightness", pa.array([300.0], pa.float32())),
        "brightness in [0, 255]",
    ),
    "negative-sharpness": (lambda t: _set(t, "sharpness", pa.array([-1.0], pa.float32())), "sharpness >= 0"),
    "null-source": (lambda t: _set(t, "source", pa.nulls(1, pa.string())), "source not null"),
    "margin-above-1": (lambda t: _set(t, "margin", pa.array([1.5], pa.float32())), "margin in [0, 1]"),
    "negative-evidence": (lambda t: _set(t, "evidence_max", pa.array([-0.1], pa.float32())), "evidence_max in [0, 1]"),
    "negative-evidence-count": (
        lambda t: _set(t, "evidence_count", pa.array([-2], pa.int16())),
        "evidence_count >= 0",
    ),
    "error-row-with-evidence": (
        lambda t: _set(
            _set(
                _set(_set(t, "error", pa.array(["decode"])), "n_detections", pa.array([0], pa.int16())),
                "class_id",
                pa.nulls(1, pa.int16()),
            ),
            "evidence_count",
            pa.array([3], pa.int16()),
        ),
        "evidence_count 0 on an error row",
    ),
}


def _set(t: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), pa.field(name, values.type), values)


@pytest.mark.parametrize("kind", list(BAD_ROWS), ids=list(BAD_ROWS))
def test_the_validate_stage_still_rejects_genuinely_bad_rows(tmp_path: Path, kind: str) -> None:
    params = Params.model_validate(tiny_params_dict(tmp_path))
    change, rule = BAD_ROWS[kind]
    good = table([record("a", 1, stats=STATS)], class_names=list(params.base.classes))
    path = params.base.paths.predictions / f"date={DAY}" / "bad.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(change(good), path)
    assert any(str(path) in p and rule in p for p in log_problems(params)), log_problems(params)


def test_the_validate_stage_rejects_a_file_missing_only_some_v2_columns(tmp_path: Path) -> None:
    params = Params.model_validate(tiny_params_dict(tmp_path))
    path = params.base.paths.predictions / f"date={DAY}" / "half.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table([record("a")], class_names=list(params.base.classes)).drop_columns(["shadow"]), path)
    assert any("missing column shadow" in p for p in log_problems(params))


def log_problems(params: Params) -> list[str]:
    """The validate stage's prediction-log suites on the log of ``params`` (schema frame, sampled rows, GX)."""
    files = log_files(params.base.paths.predictions)
    frames = {expectations.LOG_SCHEMA: validate.accept_v1_files(log_schema_frame(files))}
    bad = validate.schema_failures(frames[expectations.LOG_SCHEMA])
    frames[expectations.LOG_ROWS] = validate.log_rows([f for f in files if str(f) not in bad], rows_per_file=100)
    suites = expectations.build_suites(params)
    results = validate.run_suites(frames, suites, docs_dir=None)
    return expectations.log_problems(results, frames) + validate.reader_problems(params.base.paths.predictions)


# --- error rows and shadow rows in the readers ------------------------------------------------------------------------


def test_shadow_rows_do_not_count_as_the_version_having_predicted_the_batch(tmp_path: Path) -> None:
    plog.append(tmp_path, table([record("a")]), part="batch=b1__model=m-v3")
    plog.append(tmp_path, table([record("a")], model_version="4", model_alias="challenger", shadow=True), part="s")
    plog.append(tmp_path, table([record("b")], batch="b2", model_version="4", model_alias="challenger"), part="b2")
    assert plog.logged_batches(tmp_path) == {
        LoggedBatch(DAY.isoformat(), "visionloop-detector", "3"),
        LoggedBatch("b2", "visionloop-detector", "4"),
    }
    assert plog.read(tmp_path).num_rows == 3  # the shadow rows are in the log all the same


def test_error_rows_are_never_sampled_and_never_disagree(tmp_path: Path) -> None:
    world = World(tmp_path)
    ok, broken, failed_other = world.image("ok"), world.image("broken"), world.image("other")
    records = [
        detections(ok, [(0, 0.3, BOX)]),
        ImageDetections.failed(
            image_id=broken.stem, image_uri=broken.resolve().as_uri(), image_sha256=sha(broken), error="decode"
        ),
        detections(failed_other, [(0, 0.3, BOX)]),
    ]
    plog.append(world.paths.predictions, table_of(records), part="champion")
    # the other version failed on one image: its error row must not read as "no boxes" (a full disagreement)
    other = [
        ImageDetections.failed(
            image_id=failed_other.stem,
            image_uri=failed_other.resolve().as_uri(),
            image_sha256=sha(failed_other),
            error="timeout",
            width=64,
            height=64,
        )
    ]
    plog.append(world.paths.predictions, table_of(other, version="4", alias="challenger"), part="other")
    strategies = only("random", rate=1.0) | only("low_confidence") | only("disagreement", min_score=0.1)
    sample.run(world.params(strategies), cycle="c1")
    manifest = world.manifest().to_pylist()
    assert {r["image_sha256"] for r in manifest} == {sha(ok), sha(failed_other)}
    assert "disagreement" not in {r["strategy"] for r in manifest}
    rows = prediction_rows.image_rows(table_of(records))
    assert rows.images["image_sha256"].to_list() == [sha(ok), sha(failed_other)]


def test_disagreement_works_when_the_shadow_covers_a_share_of_the_images(tmp_path: Path) -> None:
    world = World(tmp_path)
    images = [world.image(f"img{i}") for i in range(10)]
    world.log([(path, [(0, 0.9, BOX)]) for path in images])
    # the challenger in shadow saw 3 of the 10 images: agrees on one, flips the class on one, moves the box on one
    shadow = [
        detections(images[0], [(0, 0.9, BOX)]),
        detections(images[4], [(1, 0.9, BOX)]),
        detections(images[7], [(0, 0.9, FAR)]),
    ]
    marked = plog.rows_to_table(
        shadow,
        batch=DAY.isoformat(),
        date=DAY,
        model_name="visionloop-detector",
        model_version="4",
        model_alias="challenger",
        class_names=CLASSES,
        ts=TS,
        shadow=True,
    )
    plog.append(world.paths.predictions, marked, part=f"batch={DAY}__model=visionloop-detector-v4__shadow")
    result = sample.run(world.params(only("disagreement", min_score=0.1)), cycle="c1")
    assert picked(world) == {sha(images[4]), sha(images[7])}
    assert result.by_strategy["disagreement"].candidates == 2
    assert set(world.manifest()["model_version"].to_pylist()) == {"3"}  # the champion's rows are what is labeled
    assert {b.model_version for b in plog.logged_batches(world.paths.predictions)} == {"3"}


# --- the sources sidecar --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("image_id,source\n", {}, id="header-only"),
        pytest.param("image_id,source\na,cam-1\nb,cam-2\n", {"a": "cam-1", "b": "cam-2"}, id="two-images"),
        pytest.param("\ufeffimage_id,source\r\na,cam-1\r\n\r\n", {"a": "cam-1"}, id="bom-crlf-blank-line"),
        pytest.param("image_id, source\n a , line 3 \n", {"a": "line 3"}, id="spaces-trimmed"),
    ],
)
def test_sources_sidecar_reads(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    path = tmp_path / "sources.csv"
    path.write_text(text, encoding="utf-8")
    assert read_sources(path) == expected


def test_missing_sources_sidecar_means_default(tmp_path: Path) -> None:
    assert read_sources(tmp_path / "sources.csv") == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("", "empty; it needs the header", id="empty-file"),
        pytest.param("id,camera\na,b\n", "line 1: header", id="wrong-header"),
        pytest.param("image_id,source\na,cam\nb\n", "line 3: expected 'image_id,source'", id="one-field"),
        pytest.param("image_id,source\na,cam,extra\n", "line 2: expected", id="three-fields"),
        pytest.param("image_id,source\na,\n", "line 2: expected", id="empty-source"),
        pytest.param("image_id,source\na,x\nb,y\na,z\n", "line 4: image 'a' already named on line 2", id="twice"),
        pytest.param('image_id,source\n"a,b\n', "not valid CSV", id="open-quote"),
    ],
)
def test_malformed_sources_sidecar_names_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "sources.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourcesError, match=match) as info:
        read_sources(path)
    assert str(path) in str(info.value)


def test_sources_sidecar_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "sources.csv"
    path.write_bytes(b"image_id,source\na,\xff\xfe\n")
    with pytest.raises(SourcesError, match="cannot read"):
        read_sources(path)


def test_report_of_old_runs_still_loads(tmp_path: Path) -> None:
    """A predict report written before error counts and shadow existed still loads (new fields have defaults)."""
    from tasks.contracts.reports import load_report

    old = {
        "model_name": "m",
        "model_version": "1",
        "alias": "champion",
        "target": "onnx",
        "precision": "fp32",
        "artifact": "x.onnx",
        "fallback": None,
        "wall_s": 1.0,
        "batches": [
            {
                "batch": "b",
                "date": "2026-11-02",
                "images": 2,
                "detections": 3,
                "skipped": {},
                "files": [],
                "ms_per_image": 1.5,
            }
        ],
    }
    (tmp_path / "predict.json").write_text(json.dumps(old))
    report = load_report(tmp_path, "predict")
    assert report.shadow is None and report.batches[0].errors == {} and report.batches[0].shadow_images == 0
