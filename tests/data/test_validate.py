"""The validate stage: every GX gate fails on bad data and passes on good; quarantine moves, never deletes.

One module-scoped run validates a "zoo" cycle holding one image per case (GX import and context set-up are paid
once); the table below says which gate each image must trip, or that it must stay where it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.reports import load_report
from tasks.validate import (
    PredictionLogSchemaError,
    QuarantineShareError,
    ValidateResult,
    main,
    run,
)
from tests.conftest import tiny_params_dict

SIZE = 64  # px, square test images
CYCLE = "c1"
GOOD = "0 0.5 0.5 0.25 0.25\n"


def smooth_image(seed: int) -> np.ndarray:
    """A ``(SIZE, SIZE, 3)`` uint8 image of smooth random colour blobs (distinct seeds -> distant perceptual hashes)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def save(array: np.ndarray, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_params(root: Path, **validate: object) -> Params:
    """Params for a world under ``root``: 6 classes, boxes per image in [0, 5], min box 2 px, no data docs."""
    settings = {"boxes_per_image": [0, 5], "min_box_px": 2.0, "data_docs": False, **validate}
    return Params.model_validate(tiny_params_dict(root, validate=settings))


def make_test_sets(params: Params) -> dict[str, Path]:
    """Golden images ``golden_0..3`` and one holdout image; returns them by name."""
    paths = params.base.paths
    out = {f"golden_{i}": save(smooth_image(1000 + i), paths.golden / "images" / f"golden_{i}.png") for i in range(4)}
    out["holdout_0"] = save(smooth_image(2000), paths.holdouts / "c0" / "images" / "holdout_0.png")
    return out


def write_log(params: Params, *, table: pa.Table | None = None, name: str = "part.parquet") -> Path:
    """A valid prediction log file (or ``table`` written as is) under ``base.paths.predictions``."""
    if table is None:
        record = prediction_log.ImageDetections(
            image_id="p0",
            image_uri="file:///p0.png",
            image_sha256=hashlib.sha256(b"p0").hexdigest(),
            width=SIZE,
            height=SIZE,
            latency_ms=3.0,
            boxes_xyxy=np.array([[4.0, 4.0, 30.0, 30.0]]),
            confidence=np.array([0.8]),
            class_id=np.array([2]),
        )
        table = prediction_log.rows_to_table(
            [record],
            batch="2026-11-02",
            date=dt.date(2026, 11, 2),
            model_name="m",
            model_version="1",
            model_alias="champion",
            class_names=list(params.base.classes),
        )
    path = params.base.paths.predictions / "date=2026-11-02" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class Case:
    """One image of the zoo cycle and what validate must do with it."""

    label: str | bytes | None  # None: no label file
    check: str | None  # expected failing check; None: the image passes and stays
    message: str = ""  # expected in the reason's message
    image: Callable[[dict[str, Path]], bytes] | None = None  # bytes of the image file (default: a fresh PNG)
    suffix: str = ".png"
    declared: tuple[int, int] | None = None  # manifest size


def _png(array: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def _truncated(_: dict[str, Path]) -> bytes:
    data = _png(np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    return data[: len(data) // 2]


def _jpeg_of(name: str) -> Callable[[dict[str, Path]], bytes]:
    return lambda tests: _png(np.asarray(Image.open(tests[name]).convert("RGB")), format="JPEG", quality=85)


def _one_pixel_of(name: str) -> Callable[[dict[str, Path]], bytes]:
    def make(tests: dict[str, Path]) -> bytes:
        array = np.asarray(Image.open(tests[name]).convert("RGB")).copy()
        array[0, 0] = 255 - array[0, 0]
        return _png(array)

    return make


def _copy_of(name: str) -> Callable[[dict[str, Path]], bytes]:
    return lambda tests: tests[name].read_bytes()


CASES: dict[str, Case] = {
    # labels suite
    "clean": Case(GOOD, None),
    "empty-label": Case("", None),
    "blank-lines-only": Case("\n\n", None),
    "last-class": Case("5 0.5 0.5 0.25 0.25\n", None),
    "unknown-class": Case("6 0.5 0.5 0.25 0.25\n", "class_in_set", "line 1: class 6 not in base.classes [0..5]"),
    "negative-class": Case(GOOD + "-1 0.5 0.5 0.25 0.25\n", "class_in_set", "line 2: class -1"),
    "box-touching-edges": Case("0 0.125 0.125 0.25 0.25\n1 0.875 0.875 0.25 0.25\n", None),
    "box-outside": Case("0 0.95 0.5 0.2 0.2\n", "inside_image", "line 1: box corners"),
    "pixel-coordinates": Case("0 32 32 10 10\n", "inside_image", "normalised xywh expected"),
    "box-above-min-size": Case("0 0.5 0.5 0.05 0.05\n", None),  # 3.2 px
    "zero-size-box": Case("0 0.5 0.5 0 0.2\n", "min_size", "not larger than validate.min_box_px"),
    "box-at-min-size": Case("0 0.5 0.5 0.03125 0.2\n", "min_size", "box 2 x 12.8 px"),  # 2 px is not > 2 px
    "max-boxes": Case(GOOD * 5, None),
    "too-many-boxes": Case(GOOD * 6, "boxes_per_image", "6 boxes, outside validate.boxes_per_image [0, 5]"),
    "null-field": Case("0 0.5 nan 0.2 0.2\n", "not_null", "line 1: cy is null or NaN"),
    "garbled-field-count": Case(GOOD + "0 0.5 0.5 0.2\n", "parse", "line 2: expected 'class cx cy w h', got 4"),
    "garbled-class": Case("circle 0.5 0.5 0.2 0.2\n", "parse", "class 'circle' is not an integer"),
    "garbled-number": Case("0 0.5 0.5 wide 0.2\n", "parse", "is not four numbers"),
    "not-utf8": Case(b"\xff\xfe\x00garbage", "parse", "not UTF-8 text"),
    # images suite
    "missing-label": Case(None, "has_label", "labels/missing-label.txt missing"),
    "truncated-image": Case(GOOD, "readable", "unreadable or truncated image", image=_truncated),
    "size-as-declared": Case(GOOD, None, declared=(SIZE, SIZE)),
    "size-not-as-declared": Case(
        GOOD, "declared_size", "size 64x64 differs from the manifest's 64x48", declared=(64, 48)
    ),
    "golden-copy": Case(GOOD, "leak_exact", "byte-identical (SHA-256) to test image", image=_copy_of("golden_0")),
    "holdout-copy": Case(GOOD, "leak_exact", "holdout_0.png", image=_copy_of("holdout_0")),
    "golden-jpeg-reencode": Case(GOOD, "leak_near", "near-duplicate of test image", _jpeg_of("golden_1"), ".jpg"),
    "golden-one-pixel": Case(GOOD, "leak_near", "golden_2.png", image=_one_pixel_of("golden_2")),
}
# Two images with one stem share labels/dup.txt and the ids (dup, box): both are quarantined.
DUPLICATES = ("dup.png", "dup.jpg")


@dataclass(frozen=True)
class Zoo:
    params: Params
    result: ValidateResult
    before: dict[str, bytes]  # labels/<cycle> before the run, relative to it
    quarantined: dict[str, dict]  # quarantine.json entries by the image's original file name


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    root = tmp_path_factory.mktemp("zoo")
    params = make_params(root, max_quarantine_share=1.0, data_docs=True)
    tests = make_test_sets(params)
    cycle = params.base.paths.labels / CYCLE
    manifest = []
    for seed, (name, case) in enumerate(CASES.items()):
        image = cycle / "images" / f"{name}{case.suffix}"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(case.image(tests) if case.image else _png(smooth_image(seed)))
        if case.label is not None:
            label = cycle / "labels" / f"{name}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_bytes(case.label if isinstance(case.label, bytes) else case.label.encode())
        if case.declared:
            manifest.append({"image_id": name, "width": case.declared[0], "height": case.declared[1]})
    for i, name in enumerate(DUPLICATES):
        save(smooth_image(500 + i), cycle / "images" / name)
    (cycle / "labels" / "dup.txt").write_text(GOOD)
    (cycle / "manifest.json").write_text(json.dumps(manifest))
    write_log(params)
    before = snapshot(cycle)
    result = run(params, cycle=CYCLE)
    report = json.loads((params.base.paths.quarantine / CYCLE / "quarantine.json").read_text())
    by_source = {Path(entry["source_image"]).name: entry for entry in report["images"].values()}
    return Zoo(params=params, result=result, before=before, quarantined=by_source)


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_each_gate_fails_bad_and_passes_good(zoo: Zoo, name: str) -> None:
    case = CASES[name]
    cycle = zoo.params.base.paths.labels / CYCLE
    quarantine = zoo.params.base.paths.quarantine / CYCLE
    image_name = f"{name}{case.suffix}"
    if case.check is None:
        assert (cycle / "images" / image_name).read_bytes() == zoo.before[f"images/{image_name}"]
        assert (cycle / "labels" / f"{name}.txt").read_bytes() == zoo.before[f"labels/{name}.txt"]
        assert image_name not in zoo.quarantined
        return
    entry = zoo.quarantined[image_name]
    assert case.check in {r["check"] for r in entry["reasons"]}, entry["reasons"]
    assert any(case.message in r["message"] for r in entry["reasons"] if r["check"] == case.check), entry["reasons"]
    assert not (cycle / "images" / image_name).exists(), "a quarantined image must leave the downstream set"
    assert entry["image"] == str(quarantine / "images" / image_name)
    assert Path(entry["image"]).read_bytes() == zoo.before[f"images/{image_name}"]
    if case.label is not None:
        assert not (cycle / "labels" / f"{name}.txt").exists()
        assert Path(entry["label"]).read_bytes() == zoo.before[f"labels/{name}.txt"]


def test_near_duplicates_are_not_byte_copies(zoo: Zoo) -> None:
    for name in ("golden-jpeg-reencode.jpg", "golden-one-pixel.png"):
        checks = {r["check"] for r in zoo.quarantined[name]["reasons"]}
        assert checks == {"leak_near"}


def test_duplicate_ids_quarantine_both_images(zoo: Zoo) -> None:
    for name in DUPLICATES:
        reasons = zoo.quarantined[name]["reasons"]
        assert {r["check"] for r in reasons} == {"unique_id"}
    labels = [zoo.quarantined[name]["label"] for name in DUPLICATES]
    assert sum(label is not None for label in labels) == 1, "the shared label file moves once, with the first image"


def test_zoo_counts_and_downstream_set(zoo: Zoo) -> None:
    bad = [f"{n}{c.suffix}" for n, c in CASES.items() if c.check] + list(DUPLICATES)
    good = [f"{n}{c.suffix}" for n, c in CASES.items() if not c.check]
    assert zoo.result.checked == len(bad) + len(good)
    assert zoo.result.quarantined == len(bad)
    assert zoo.result.passed == len(good)
    assert zoo.result.share == pytest.approx(len(bad) / (len(bad) + len(good)))
    remaining = sorted(p.name for p in (zoo.params.base.paths.labels / CYCLE / "images").iterdir())
    assert remaining == sorted(good), "downstream sees exactly the images that passed"
    assert sorted(zoo.quarantined) == sorted(bad)


def test_nothing_is_lost(zoo: Zoo) -> None:
    after = {
        **{f"labels/{k}": v for k, v in snapshot(zoo.params.base.paths.labels / CYCLE).items()},
        **{f"quarantine/{k}": v for k, v in snapshot(zoo.params.base.paths.quarantine / CYCLE).items()},
    }
    stored = sorted(after.values())
    for name, data in zoo.before.items():
        assert data in stored, f"{name} vanished"


def test_reports_keep_the_gx_results(zoo: Zoo) -> None:
    summary = json.loads(zoo.result.report.read_text())
    assert summary["status"] == "passed"
    assert summary["quarantined"] == zoo.result.quarantined
    assert summary["reasons"]["leak_exact"] == 2
    assert summary["reasons"]["leak_near"] == 4, "a byte copy is also at perceptual distance 0"
    typed = load_report(zoo.result.report.parent, "validate")
    assert typed.quarantined == zoo.result.quarantined and typed.reasons == summary["reasons"]
    assert set(zoo.result.gx_results) == {"labels", "images", "prediction_log_schema", "prediction_log_rows"}
    labels = json.loads(zoo.result.gx_results["labels"].read_text())
    failed = [r for r in labels["results"] if not r["success"]]
    assert failed, "the labels suite result records its failures"
    assert {"image", "line"} <= set(failed[0]["result"]["unexpected_index_list"][0])
    sizes = {row["image"]: row for row in json.loads(zoo.result.images_report.read_text())}
    assert (sizes["clean.png"]["width"], sizes["clean.png"]["height"]) == (SIZE, SIZE)
    assert zoo.result.data_docs is not None and zoo.result.data_docs.is_file()


# ------------------------------------------------------------------------------------------------- share gate


def make_cycle(params: Params, *, good: int, bad: int, cycle: str = CYCLE) -> Path:
    """``good`` clean images and ``bad`` ones with an unknown class; returns the cycle folder."""
    folder = params.base.paths.labels / cycle
    for i in range(good + bad):
        name = f"{'bad' if i >= good else 'good'}_{i}"
        save(smooth_image(i), folder / "images" / f"{name}.png")
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        (folder / "labels" / f"{name}.txt").write_text("9 0.5 0.5 0.2 0.2\n" if i >= good else GOOD)
    return folder


@pytest.mark.parametrize(
    ("good", "bad", "max_share", "error"),
    [
        pytest.param(
            7, 3, 0.2, r"3 of 10 images \(30\.0%\).*max_quarantine_share = 20\.0%.*class_in_set \(3\)", id="above"
        ),
        pytest.param(7, 3, 0.3, None, id="at-threshold"),
        pytest.param(4, 0, 0.0, None, id="all-clean-zero-tolerance"),
        pytest.param(0, 0, 0.2, None, id="empty-cycle"),
    ],
)
def test_quarantine_share_gate(tmp_path: Path, good: int, bad: int, max_share: float, error: str | None) -> None:
    params = make_params(tmp_path, max_quarantine_share=max_share)
    make_test_sets(params)
    folder = make_cycle(params, good=good, bad=bad)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data"
    before = snapshot(data)
    if error:
        with pytest.raises(QuarantineShareError, match=error):
            run(params, cycle=CYCLE)
        assert snapshot(data) == before, "a failing run moves nothing"
        summary = json.loads((params.base.paths.reports / "validate.json").read_text())
        assert summary["status"] == "failed" and summary["share"] == pytest.approx(bad / (good + bad))
        return
    result = run(params, cycle=CYCLE)
    assert (result.checked, result.quarantined) == (good + bad, bad)
    kept = sorted(p.stem for p in (folder / "images").iterdir())
    assert kept == sorted(f"good_{i}" for i in range(good))
    for name in kept:
        assert (folder / "images" / f"{name}.png").read_bytes() == before[f"labels/{CYCLE}/images/{name}.png"]


# ------------------------------------------------------------------------------------------------- prediction log


def _good_table(params: Params) -> pa.Table:
    path = write_log(params, name="reference.parquet")
    table = pq.read_table(path)
    path.unlink()
    return table


def _same(table: pa.Table) -> pa.Table:
    return table


LOG_CASES = {
    # id: (change to a good table or None for garbage bytes, file name, expected message)
    "wrong-type": (
        lambda t: t.set_column(11, "confidence", t["confidence"].cast(pa.float64())),
        "bad.parquet",
        "column confidence has type double, expected float",
    ),
    "missing-column": (lambda t: t.drop_columns(["n_detections"]), "bad.parquet", "missing column n_detections"),
    "extra-column": (
        lambda t: t.append_column("note", pa.array(["x"] * t.num_rows)),
        "bad.parquet",
        "unexpected column note",
    ),
    "null-in-not-null": (
        lambda t: t.set_column(0, pa.field("image_id", pa.string()), pa.array([None] * t.num_rows, pa.string())),
        "bad.parquet",
        "break 'image_id not null'",
    ),
    "confidence-out-of-range": (
        lambda t: t.set_column(11, "confidence", pa.array([1.5] * t.num_rows, pa.float32())),
        "bad.parquet",
        "break 'confidence in [0, 1]'",
    ),
    "not-parquet": (None, "bad.parquet", "not a readable Parquet file"),
    "hidden-name-the-reader-refuses": (_same, "_bad.parquet", "a name starting with '.' or '_'"),
}


@pytest.mark.parametrize("kind", list(LOG_CASES), ids=list(LOG_CASES))
def test_wrong_prediction_log_fails_naming_the_file(tmp_path: Path, kind: str) -> None:
    params = make_params(tmp_path)
    make_test_sets(params)
    make_cycle(params, good=2, bad=1)
    write_log(params)  # a good file beside the bad one is not blamed
    change, name, message = LOG_CASES[kind]
    bad = params.base.paths.predictions / "date=2026-11-02" / name
    if change is None:
        bad.write_bytes(b"PAR1 this is not parquet")
    else:
        write_log(params, table=change(_good_table(params)), name=name)
    data = tmp_path / "data"
    before = snapshot(data)
    with pytest.raises(PredictionLogSchemaError) as err:
        run(params, cycle=CYCLE)
    assert f"{bad}: " in str(err.value) and message in str(err.value)
    assert "part.parquet" not in str(err.value)
    assert snapshot(data) == before, "a failing run moves nothing"


def test_missing_prediction_log_is_skipped(tmp_path: Path) -> None:
    params = make_params(tmp_path)
    make_test_sets(params)
    make_cycle(params, good=3, bad=0)
    result = run(params, cycle=CYCLE)
    summary = json.loads(result.report.read_text())
    assert summary["suites"]["prediction_log_schema"] == {"skipped": "no rows"}
    assert result.quarantined == 0


# ------------------------------------------------------------------------------------------------- re-runs, CLI


def test_quarantine_never_overwrites_and_reruns_are_clean(tmp_path: Path) -> None:
    params = make_params(tmp_path, max_quarantine_share=0.5)
    make_test_sets(params)
    folder = make_cycle(params, good=2, bad=1)
    quarantine = params.base.paths.quarantine / CYCLE
    earlier = save(smooth_image(99), quarantine / "images" / "bad_2.png").read_bytes()
    (quarantine / "labels").mkdir()
    (quarantine / "labels" / "bad_2.txt").write_text("earlier")
    (quarantine / "quarantine.json").write_text(json.dumps({"cycle": CYCLE, "images": {"bad_2.png": {"old": 1}}}))

    first = run(params, cycle=CYCLE)
    assert first.quarantined == 1
    assert (quarantine / "images" / "bad_2.png").read_bytes() == earlier
    assert (quarantine / "labels" / "bad_2.txt").read_text() == "earlier"
    assert (quarantine / "labels" / "bad_2.1.txt").read_text().startswith("9 ")
    report = json.loads((quarantine / "quarantine.json").read_text())
    assert report["images"]["bad_2.png"] == {"old": 1}
    assert report["images"]["bad_2.1.png"]["source_image"] == str(folder / "images" / "bad_2.png")

    second = run(params, cycle=CYCLE)
    assert (second.checked, second.quarantined, second.share) == (2, 0, 0.0)
    assert second.quarantine_report == quarantine / "quarantine.json"


@pytest.mark.parametrize(
    ("holdout_cycle", "check"),
    [
        pytest.param("c0", "leak_exact", id="other-cycles-holdout-is-leakage"),
        pytest.param(CYCLE, None, id="own-holdout-carved-by-merge-is-not"),
    ],
)
def test_holdout_copies(tmp_path: Path, holdout_cycle: str, check: str | None) -> None:
    params = make_params(tmp_path, max_quarantine_share=0.5)
    make_test_sets(params)
    folder = make_cycle(params, good=2, bad=0)
    source = folder / "images" / "good_0.png"
    target = params.base.paths.holdouts / holdout_cycle / "images" / "good_0.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    result = run(params, cycle=CYCLE)
    assert result.reasons == ({check: 1, "leak_near": 1} if check else {})
    assert source.exists() == (check is None)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        pytest.param("cycle", "no labeled images for cycle 'c1'", id="no-cycle"),
        pytest.param("golden", "golden test images not found", id="no-golden"),
    ],
)
def test_missing_inputs_fail_clearly(tmp_path: Path, remove: str, message: str) -> None:
    params = make_params(tmp_path)
    make_test_sets(params)
    make_cycle(params, good=1, bad=0)
    shutil.rmtree(params.base.paths.labels / CYCLE if remove == "cycle" else params.base.paths.golden)
    with pytest.raises(FileNotFoundError, match=message):
        run(params, cycle=CYCLE)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params_file = tmp_path / "params.yaml"
    data = tiny_params_dict(tmp_path, validate={"data_docs": False, "max_quarantine_share": 0.1})
    params_file.write_text(yaml.safe_dump(data))
    params = Params.model_validate(data)
    make_test_sets(params)
    make_cycle(params, good=3, bad=0)
    main(["--params", str(params_file), "--cycle", CYCLE])
    assert json.loads(capsys.readouterr().out) == {"cycle": CYCLE, "checked": 3, "quarantined": 0}
    make_cycle(params, good=0, bad=1, cycle="c2")
    with pytest.raises(SystemExit) as exited:
        main(["--params", str(params_file), "--cycle", "c2"])
    assert exited.value.code == 1
    assert re.search(r"validate: cycle c2: 1 of 1 images \(100\.0%\)", capsys.readouterr().err)
