"""tasks/contracts/monitor_frames.py: log rows -> image and box frames; bad rows left out and named; old logs read.

Also home of :func:`make_log`, the synthetic prediction-log builder the other monitor tests import.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from tasks.contracts import prediction_log
from tasks.contracts.monitor_frames import BOX_SCHEMA, IMAGE_SCHEMA, STATS, FramesError, frames, select

IMGSZ = 160
V2_COLUMNS = ["source", "error", *STATS]


# long: a table builder with every knob the monitor tests turn; one vectorised pass like the real writer
def make_log(
    n_images: int,
    *,
    seed: int = 0,
    batch: str = "2026-11-02",
    date: dt.date | None = None,
    ts: dt.datetime | None = None,
    version: str = "1",
    alias: str | None = "champion",
    boxes: tuple[int, int] = (1, 4),
    conf: tuple[float, float] = (0.55, 0.95),
    size: tuple[float, float] = (20.0, 50.0),
    class_weights: Sequence[float] = (1, 1, 1, 1, 1, 1),
    empty: float = 0.0,
    brightness: float = 120.0,
    image_size: tuple[int, int] = (IMGSZ, IMGSZ),
    latency: float = 2.0,
    source: str = "default",
    v2: bool = True,
    prefix: str = "img",
    errors: Sequence[str] = (),
) -> pa.Table:
    """A prediction-log table (v2 columns unless ``v2`` is False) of ``n_images`` synthetic images.

    Each image gets ``boxes`` boxes (uniform, inclusive), or none with probability ``empty``; confidences uniform
    in ``conf``; square boxes with side uniform in ``size`` pixels of the original image; classes drawn with
    ``class_weights``; brightness normal around ``brightness`` (sd 10), the other statistics around fixed values.
    ``errors`` adds one error row per kind given (image ids ``<prefix>_err<i>``).
    """
    rng = np.random.default_rng(seed)
    date = date or dt.date.fromisoformat(batch)
    ts = ts or dt.datetime(date.year, date.month, date.day, 12, tzinfo=dt.UTC)
    counts = rng.integers(boxes[0], boxes[1] + 1, n_images)
    counts[rng.random(n_images) < empty] = 0
    rows = np.maximum(counts, 1)
    n = int(rows.sum())
    image = np.repeat(np.arange(n_images), rows).astype(np.int64)
    has_box = np.repeat(counts > 0, rows)
    for i, kind in enumerate(errors):
        del kind
        image = np.append(image, n_images + i)
        has_box = np.append(has_box, False)
    n = len(image)
    n_all = n_images + len(errors)
    ids = np.array(
        [f"{prefix}_{i:05d}" for i in range(n_images)] + [f"{prefix}_err{i}" for i in range(len(errors))], dtype=object
    )
    side = rng.uniform(size[0], size[1], n)
    x1 = rng.uniform(0, max(image_size[0] - size[1], 1), n)
    y1 = rng.uniform(0, max(image_size[1] - size[1], 1), n)
    weights = np.asarray(class_weights, dtype=float) / sum(class_weights)
    mask = ~has_box

    def boxed(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        return pa.array(values, type=arrow_type, mask=mask)

    def per_image(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        return pa.array(values[image], type=arrow_type)

    error_col = np.array([None] * n_images + list(errors), dtype=object)
    is_error = np.array([False] * n_images + [True] * len(errors), dtype=bool)
    columns: dict[str, pa.Array] = {
        "image_id": per_image(ids, pa.string()),
        "image_uri": per_image(np.array([f"file:///x/{i}" for i in ids], dtype=object), pa.string()),
        "image_sha256": pa.array(["0" * 64] * n, pa.string()),
        "batch": pa.array([batch] * n, pa.string()),
        "date": pa.array([date] * n, pa.date32()),
        "ts": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
        "model_name": pa.array(["visionloop-detector"] * n, pa.string()),
        "model_version": pa.array([version] * n, pa.string()),
        "model_alias": pa.array([alias] * n, pa.string()),
        "class_id": boxed(rng.choice(len(weights), n, p=weights).astype(np.int16), pa.int16()),
        "class_name": pa.array([None] * n, pa.string()),
        "confidence": boxed(rng.uniform(conf[0], conf[1], n).astype(np.float32), pa.float32()),
        "x1": boxed(x1.astype(np.float32), pa.float32()),
        "y1": boxed(y1.astype(np.float32), pa.float32()),
        "x2": boxed((x1 + side).astype(np.float32), pa.float32()),
        "y2": boxed((y1 + side).astype(np.float32), pa.float32()),
        **{f"{c}n": pa.array([None] * n, pa.float32()) for c in ("x1", "y1", "x2", "y2")},
        "image_width": pa.array(np.full(n, image_size[0], np.int32)),
        "image_height": pa.array(np.full(n, image_size[1], np.int32)),
        "latency_ms": per_image(np.full(n_all, latency, np.float32), pa.float32()),
        "n_detections": per_image(np.append(counts, np.zeros(len(errors), int)).astype(np.int16), pa.int16()),
    }
    if not v2:
        return pa.table(columns).cast(prediction_log.V1_SCHEMA)
    if v2:
        columns["source"] = pa.array([source] * n, pa.string())
        columns["error"] = per_image(error_col, pa.string())
        centres = {"brightness": brightness, "contrast": 40.0, "sharpness": 300.0}
        for name in STATS:
            values = rng.normal(centres.get(name, 110.0), 10.0, n_all).astype(np.float32)
            columns[name] = pa.array(values[image], pa.float32(), mask=is_error[image])
        columns["shadow"] = pa.array(np.full(n, alias not in ("champion", None)), pa.bool_())
    return prediction_log.upgrade(pa.table(columns))  # the v3 columns as an older writer leaves them


def concat(*tables: pa.Table) -> pa.Table:
    return pa.concat_tables(tables, promote_options="default")


def test_builder_matches_the_log_schemas():
    assert make_log(3, v2=False).schema.names == prediction_log.V1_SCHEMA.names
    assert make_log(3).schema.names == prediction_log.SCHEMA.names


def test_frames_one_row_per_image_and_per_box():
    table = make_log(50, boxes=(0, 3), seed=3)
    fr = frames(table, imgsz=IMGSZ, low_confidence=0.5)
    assert fr.images.height == 50
    assert fr.boxes.height == table.num_rows - table["confidence"].null_count
    assert dict(fr.images.schema) == IMAGE_SCHEMA
    assert dict(fr.boxes.schema) == BOX_SCHEMA
    assert fr.images["n_detections"].sum() == fr.boxes.height
    assert fr.problems == []
    assert fr.stats_logged


def test_image_columns_are_computed_from_its_boxes():
    table = make_log(1, boxes=(3, 3), conf=(0.3, 0.9), seed=1, image_size=(320, 160))
    fr = frames(table, imgsz=IMGSZ, low_confidence=0.5)
    row = fr.images.row(0, named=True)
    confs = np.asarray(table["confidence"].to_pylist(), dtype=float)
    sides = np.minimum(
        np.asarray(table["x2"].to_pylist()) - np.asarray(table["x1"].to_pylist()),
        np.asarray(table["y2"].to_pylist()) - np.asarray(table["y1"].to_pylist()),
    )
    assert row["n_detections"] == 3
    assert row["mean_confidence"] == pytest.approx(confs.mean(), rel=1e-6)
    assert row["max_confidence"] == pytest.approx(confs.max(), rel=1e-6)
    assert row["low_conf_share"] == pytest.approx((confs < 0.5).mean())
    # boxes measured at the model's input: a 320 px wide image is scaled by 160 / 320
    assert row["median_box_px"] == pytest.approx(np.median(sides) * 0.5, rel=1e-5)
    assert fr.boxes["box_px"].to_numpy() == pytest.approx(sides * 0.5, rel=1e-5)


def test_an_image_without_boxes_has_zero_detections_and_null_box_columns():
    fr = frames(make_log(5, empty=1.0), imgsz=IMGSZ, low_confidence=0.5)
    assert fr.images["n_detections"].to_list() == [0] * 5
    assert fr.images["mean_confidence"].null_count() == 5
    assert fr.boxes.is_empty()


def test_old_log_without_v2_columns_reads_with_defaults():
    fr = frames(make_log(10, v2=False), imgsz=IMGSZ, low_confidence=0.5)
    assert not fr.stats_logged
    assert fr.images["source"].unique().to_list() == ["default"]
    assert fr.images["error"].null_count() == 10
    assert all(fr.images[name].null_count() == 10 for name in STATS)


def test_old_log_read_through_the_upgrade_has_no_input_statistics():
    upgraded = prediction_log.upgrade(make_log(10, v2=False))
    fr = frames(upgraded, imgsz=IMGSZ, low_confidence=0.5)
    assert not fr.stats_logged
    assert frames(make_log(3, errors=["decode"]), imgsz=IMGSZ, low_confidence=0.5).stats_logged
    assert frames(make_log(0, errors=["decode"]), imgsz=IMGSZ, low_confidence=0.5).stats_logged


def test_error_rows_are_images_with_their_kind_and_no_boxes():
    fr = frames(make_log(4, errors=["decode", "timeout"]), imgsz=IMGSZ, low_confidence=0.5)
    errors = fr.images.filter(pl.col("error").is_not_null())
    assert sorted(errors["error"].to_list()) == ["decode", "timeout"]
    assert errors["n_detections"].to_list() == [0, 0]
    assert fr.boxes.filter(pl.col("image_id").str.contains("err")).is_empty()


def _with_values(table: pa.Table, column: str, index: list[int], value: float) -> pa.Table:
    values = table[column].to_pylist()
    for i in index:
        values[i] = value
    return table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
    )


@pytest.mark.parametrize(
    ("column", "value", "phrase"),
    [
        ("confidence", math.nan, "confidence"),
        ("confidence", math.inf, "confidence"),
        ("confidence", 1.5, "confidence"),
        ("latency_ms", -1.0, "latency_ms"),
        ("latency_ms", math.nan, "latency_ms"),
    ],
    ids=["nan-confidence", "inf-confidence", "confidence-above-1", "negative-latency", "nan-latency"],
)
def test_bad_rows_drop_their_image_and_are_named(column, value, phrase):
    table = make_log(20, boxes=(2, 2), seed=5)  # rows 0,1 are image 0, rows 2,3 image 1
    bad = _with_values(table, column, [0, 1] if column == "latency_ms" else [0], value)
    fr = frames(bad, imgsz=IMGSZ, low_confidence=0.5)
    assert fr.images.height == 19
    assert "img_00000" not in fr.images["image_id"].to_list()
    assert "img_00000" not in fr.boxes["image_id"].to_list()
    assert len(fr.problems) == 1
    assert fr.problems[0].startswith("batch 2026-11-02: 1 ")
    assert phrase in fr.problems[0]


def test_bad_rows_are_counted_per_batch():
    a = _with_values(make_log(10, batch="2026-11-02", boxes=(1, 1)), "confidence", [0, 1, 2], math.nan)
    b = _with_values(make_log(10, batch="2026-11-03", boxes=(1, 1)), "latency_ms", [4], -3.0)
    fr = frames(concat(a, b), imgsz=IMGSZ, low_confidence=0.5)
    assert fr.images.height == 16
    assert fr.problems == [
        "batch 2026-11-02: 3 row(s) with a NaN, infinite or out-of-range confidence; their 3 image(s) left out",
        "batch 2026-11-03: 1 image(s) with a negative, NaN or infinite latency_ms left out",
    ]


def test_the_same_image_by_two_versions_is_two_images():
    fr = frames(
        concat(make_log(5, version="1"), make_log(5, version="2", alias="challenger")), imgsz=IMGSZ, low_confidence=0.5
    )
    assert fr.images.height == 10
    assert select(fr, model_version="2").images.height == 5
    assert select(fr, model_alias="champion").boxes["model_version"].unique().to_list() == ["1"]


def test_rows_of_an_image_need_not_be_next_to_each_other():
    table = make_log(30, boxes=(2, 4), seed=9)
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    a = frames(table, imgsz=IMGSZ, low_confidence=0.5).images.sort("image_id")
    b = frames(shuffled, imgsz=IMGSZ, low_confidence=0.5).images.sort("image_id")
    assert b.height == 30
    assert a.select("image_id", "n_detections", "max_confidence").equals(
        b.select("image_id", "n_detections", "max_confidence")
    )


def test_empty_table_gives_empty_frames():
    fr = frames(make_log(0), imgsz=IMGSZ, low_confidence=0.5)
    assert fr.images.is_empty() and fr.boxes.is_empty() and fr.problems == []
    assert dict(fr.images.schema) == IMAGE_SCHEMA


def test_missing_columns_are_named():
    with pytest.raises(FramesError, match=r"confidence.*latency_ms"):
        frames(make_log(2).drop(["confidence", "latency_ms"]), imgsz=IMGSZ, low_confidence=0.5)


def test_select_keeps_only_the_batches_problems():
    a = _with_values(make_log(10, batch="2026-11-02", boxes=(1, 1)), "confidence", [0], math.nan)
    b = _with_values(make_log(10, batch="2026-11-03", boxes=(1, 1)), "confidence", [0], math.nan)
    fr = frames(concat(a, b), imgsz=IMGSZ, low_confidence=0.5)
    part = select(fr, batches=["2026-11-03"])
    assert part.images["batch"].unique().to_list() == ["2026-11-03"]
    assert [p[:16] for p in part.problems] == ["batch 2026-11-03"]
