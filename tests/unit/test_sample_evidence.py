"""The sampler's evidence (prediction log version 3): class margins and sub-threshold boxes, from decode to scores.

Decode: a synthetic raw ``(1, 4 + nc, A)`` output whose top-1/top-2 class scores and sub-threshold boxes are known.
Log: the three new columns, a version-2 file (its schema spelled out below, as the code before version 3 wrote it)
read by every reader. Scores: ``low_confidence``, ``entropy`` and ``margin`` on designed images. Config: the band's
key. The stage: a zero-detection image with evidence is selected, one without is not.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tasks import sample, validate
from tasks.config import ConfigError, load_params
from tasks.contracts import prediction_log as plog
from tasks.contracts import prediction_rows, prediction_schema
from tasks.contracts.prediction_log import ImageDetections, PredictionLogError
from tasks.contracts.validation_frames import log_files, log_schema_frame, schema_failures
from tasks.core.image_stats import ImageStats
from tasks.decisions import sampling
from tasks.runtimes.detectors import InferenceSettings, Letterbox, decode_output
from tests.conftest import tiny_params_dict
from tests.unit.test_sample import BOX, FAR, World, only, picked, scores, sha, table_of

IDENTITY = Letterbox(scale=1.0, pad_x=0, pad_y=0, width=64, height=64)
ON = InferenceSettings(imgsz=64, conf=0.25, iou=0.5, max_det=10, evidence_conf=0.05)
OFF = InferenceSettings(imgsz=64, conf=0.25, iou=0.5, max_det=10)
A, B, C, D = [20, 20, 10, 10], [21, 20, 10, 10], [50, 50, 8, 8], [10, 50, 6, 6]  # A, B overlap; C, D apart

# The columns version 2 wrote after version 1's (kept here on purpose: the test must not follow later changes).
V2_NEW = [
    pa.field("source", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    *(pa.field(n, pa.float32()) for n in ("brightness", "contrast", "sharpness", "mean_r", "mean_g", "mean_b")),
    pa.field("shadow", pa.bool_(), nullable=False),
]


def raw(boxes_cxcywh: Sequence[Sequence[float]], class_scores: Sequence[Sequence[float]]) -> np.ndarray:
    """(1, 4 + nc, A) raw layout from per-anchor boxes and per-class scores."""
    return np.concatenate([np.asarray(boxes_cxcywh, np.float32).T, np.asarray(class_scores, np.float32).T])[None]


# --- decode ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "class_scores", "margins", "evidence"),
    [
        pytest.param([A], [[0.1, 0.01]], [], (0.1, 1), id="nothing-detected-one-box-in-band"),
        pytest.param([A], [[0.01, 0.02]], [], (None, 0), id="below-evidence-conf-is-nothing"),
        pytest.param([A], [[0.9, 0.3, 0.1]], [0.6], (None, 0), id="margin-top1-minus-top2"),
        pytest.param([A], [[0.26, 0.25]], [0.01], (None, 0), id="just-above-conf-is-a-detection"),
        pytest.param([A, C], [[0.6, 0.55], [0.2, 0.0]], [0.05], (0.2, 1), id="detection-and-evidence-apart"),
        pytest.param([A, B], [[0.9, 0.0], [0.2, 0.0]], [0.9], (None, 0), id="weaker-duplicate-same-class-suppressed"),
        pytest.param([A, B], [[0.9, 0.0], [0.0, 0.2]], [0.9], (0.2, 1), id="other-class-overlap-is-evidence"),
        pytest.param([A, B], [[0.2, 0.0], [0.1, 0.0]], [], (0.2, 1), id="band-boxes-run-nms-among-themselves"),
        pytest.param([A, C, D], [[0.1, 0], [0.2, 0], [0.06, 0]], [], (0.2, 3), id="three-in-band"),
    ],
)
def test_raw_decode_gives_margins_and_evidence(boxes, class_scores, margins, evidence):
    (det,) = decode_output(raw(boxes, class_scores), [IDENTITY], ON)
    assert det.margin is not None
    np.testing.assert_allclose(det.margin, margins, atol=1e-6)
    got = (None if det.evidence_max is None else round(det.evidence_max, 6), det.evidence_count)
    assert got == evidence


def test_evidence_off_gives_none_and_never_changes_the_detections():
    rng = np.random.default_rng(0)
    n = 300
    boxes = np.column_stack([rng.uniform(0, 64, (n, 2)), rng.uniform(2, 20, (n, 2))])
    class_scores = rng.uniform(0, 1, (n, 3)) ** 3
    output = raw(boxes, class_scores)
    (off,) = decode_output(output, [IDENTITY], OFF)
    (on,) = decode_output(output, [IDENTITY], ON)
    assert (off.evidence_max, off.evidence_count) == (None, 0)
    assert on.evidence_count > 0 and on.evidence_max is not None and 0.05 <= on.evidence_max < 0.25
    for name in ("boxes_xyxy", "confidence", "class_id", "margin"):
        np.testing.assert_array_equal(getattr(on, name), getattr(off, name))  # bit for bit


def test_one_class_margin_is_nan_and_end2end_has_none():
    (det,) = decode_output(raw([A], [[0.9]]), [IDENTITY], ON)
    assert det.margin is not None and np.isnan(det.margin).all() and len(det.margin) == 1
    rows = np.asarray([[[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.1, 0], [40, 40, 50, 50, 0.01, 0]]], np.float32)
    (det,) = decode_output(rows, [IDENTITY], ON)
    assert det.margin is None and (det.evidence_count, det.evidence_max) == (1, pytest.approx(0.1))


def test_an_inverted_sub_threshold_box_is_no_evidence():
    (det,) = decode_output(raw([[20, 20, -4, 10]], [[0.2, 0.0]]), [IDENTITY], ON)
    assert (det.evidence_count, det.evidence_max) == (0, None)


# --- the log ---------------------------------------------------------------------------------------------------------


def record(name: str, confidences: Sequence[float] = (), **changes: Any) -> ImageDetections:
    n = len(confidences)
    fields: dict[str, Any] = {
        "image_id": name,
        "image_uri": f"file:///prod/{name}.png",
        "image_sha256": hashlib.sha256(name.encode()).hexdigest(),
        "width": 64,
        "height": 64,
        "latency_ms": 2.0,
        "boxes_xyxy": np.array([BOX, FAR][:n] + [BOX] * max(n - 2, 0), np.float64).reshape(-1, 4),
        "confidence": np.asarray(confidences, np.float64),
        "class_id": np.zeros(n, np.int64),
    }
    return ImageDetections(**(fields | changes))


def test_rows_carry_margin_per_box_and_evidence_per_image():
    records = [
        record("a", [0.9, 0.4], margin=np.array([0.8, np.nan]), evidence_max=0.2, evidence_count=3),
        record("b", [], evidence_max=0.1, evidence_count=1),
        record("c", [0.7]),
        ImageDetections.failed(image_id="d", image_uri="file:///d.png", image_sha256=plog.EMPTY_SHA256, error="decode"),
    ]
    table = table_of(records)
    assert table.schema.equals(plog.SCHEMA)
    got = table.select(["image_id", "margin", "evidence_max", "evidence_count"]).to_pylist()
    assert [(r["image_id"], r["margin"] and round(r["margin"], 4)) for r in got] == [
        ("a", 0.8),
        ("a", None),
        ("b", None),
        ("c", None),
        ("d", None),
    ]
    assert [r["evidence_max"] and round(r["evidence_max"], 4) for r in got] == [0.2, 0.2, 0.1, None, None]
    assert [r["evidence_count"] for r in got] == [3, 3, 1, 0, 0]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        pytest.param({"margin": np.array([0.1, 0.2])}, r"margin has shape \(2,\), expected \(1,\)", id="margin-shape"),
        pytest.param({"evidence_count": 2}, "evidence_count 2 must be", id="count-without-max"),
        pytest.param({"evidence_max": 0.2}, "evidence_count 0 must be", id="max-without-count"),
        pytest.param({"evidence_max": 1.5, "evidence_count": 1}, "evidence_max 1.5 must be in", id="max-above-one"),
        pytest.param({"evidence_max": 0.2, "evidence_count": 40_000}, "evidence_count 40000", id="count-above-int16"),
    ],
)
def test_image_detections_check_the_evidence(changes, match):
    with pytest.raises(PredictionLogError, match=match):
        record("a", [0.9], **changes)


def test_an_error_record_carries_no_evidence():
    with pytest.raises(PredictionLogError, match="nor evidence"):
        record("x", [], error="inference", evidence_max=0.2, evidence_count=1)


def v2_table(records: list[ImageDetections]) -> pa.Table:
    """A table exactly as a version-2 writer produced it."""
    current = table_of(records)
    old = pa.schema([*plog.V1_SCHEMA, *V2_NEW])
    return current.select(old.names).cast(old)


def test_v3_adds_its_columns_after_the_v2_ones():
    assert plog.SCHEMA.names[-3:] == list(prediction_schema.V3_COLUMNS) == ["margin", "evidence_max", "evidence_count"]
    fields = {f.name: f for f in plog.SCHEMA}
    assert fields["margin"].type == pa.float32() and fields["margin"].nullable
    assert fields["evidence_max"].type == pa.float32() and fields["evidence_max"].nullable
    assert fields["evidence_count"].type == pa.int16() and not fields["evidence_count"].nullable
    assert prediction_schema.V2_SCHEMA.equals(pa.schema([*plog.V1_SCHEMA, *V2_NEW]))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_upgrade_to_v3_fills_null_and_zero(version):
    table = v2_table([record("a", [0.9, 0.3]), record("b", [])])
    if version == "v1":
        table = table.select(plog.V1_SCHEMA.names)
    new = plog.upgrade(table)
    assert new.schema.equals(plog.SCHEMA)
    assert new["margin"].null_count == new["evidence_max"].null_count == 3
    assert new["evidence_count"].to_pylist() == [0, 0, 0]
    assert new.select(table.column_names).equals(table.cast(new.select(table.column_names).schema))


def test_every_reader_reads_a_version_2_file_beside_a_version_3_one(tmp_path: Path):
    old_path = tmp_path / "date=2026-11-02" / "old.parquet"
    old_path.parent.mkdir(parents=True)
    pq.write_table(v2_table([record("a", [0.9, 0.3]), record("b", [])]), old_path)
    assert pq.read_schema(old_path).names == [*plog.V1_SCHEMA.names, *(f.name for f in V2_NEW)]
    new = [record("c", [], evidence_max=0.2, evidence_count=2)]
    plog.append(tmp_path, table_of(new, date=dt.date(2026, 11, 2), version="4"), part="new")

    got = plog.read(tmp_path)
    assert got.schema.equals(plog.SCHEMA) and got.num_rows == 4
    assert sorted(got["evidence_count"].to_pylist()) == [0, 0, 0, 2]
    assert len(plog.window_files(tmp_path, days=1)) == 2
    assert {b.model_version for b in plog.logged_batches(tmp_path)} == {"3", "4"}

    key = prediction_rows.ModelKey("champion", "visionloop-detector", "3")
    rows = prediction_rows.read_image_rows([old_path], model=key)
    assert rows.starts.tolist() == [0, 2] and rows.margin is not None and np.isnan(rows.margin).all()
    assert rows.evidence_max is not None and np.isnan(rows.evidence_max).all()
    assert rows.evidence_count is not None and rows.evidence_count.tolist() == [0, 0]

    assert not schema_failures(validate.accept_v1_files(log_schema_frame(log_files(tmp_path))))
    rows_frame = validate.log_rows(log_files(tmp_path), rows_per_file=10)
    assert len(rows_frame) == 4 and set(rows_frame["evidence_count"]) == {0, 2}


def test_a_file_missing_only_some_v3_columns_is_refused(tmp_path: Path):
    path = tmp_path / "date=2026-11-02" / "half.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table_of([record("a", [0.9])]).drop_columns(["evidence_max"]), path)
    with pytest.raises(PredictionLogError, match="missing column evidence_max"):
        plog.read(tmp_path)
    assert schema_failures(validate.accept_v1_files(log_schema_frame(log_files(tmp_path)))) == {str(path)}


# --- scores ----------------------------------------------------------------------------------------------------------


def rows_of(records: list[ImageDetections]) -> prediction_rows.ImageRows:
    return prediction_rows.image_rows(table_of(records))


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        pytest.param((0.2, 1), 0.4, id="zero-detections-evidence-0.2"),
        pytest.param((0.05, 4), 0.1, id="zero-detections-weak-evidence"),
        pytest.param(None, None, id="zero-detections-no-evidence"),
    ],
)
def test_low_confidence_scores_a_zero_detection_image_by_its_evidence(evidence, expected):
    changes = {} if evidence is None else {"evidence_max": evidence[0], "evidence_count": evidence[1]}
    got = scores(sampling.score_low_confidence(rows_of([record("a", [], **changes)]), band=(0.25, 0.5)))
    assert got == [expected]


def test_low_confidence_ranks_band_boxes_then_evidence_then_nothing():
    images = [
        record("box-in-band", [0.3]),
        record("strong-evidence", [], evidence_max=0.2, evidence_count=1),
        record("weak-evidence", [], evidence_max=0.06, evidence_count=9),
        record("no-evidence", []),
        record("confident-with-evidence", [0.95], evidence_max=0.1, evidence_count=1),
    ]
    got = scores(sampling.score_low_confidence(rows_of(images), band=(0.25, 0.5)))
    assert got == [0.5, 0.4, 0.12, None, 0.2]


@pytest.mark.parametrize(
    ("images", "min_score", "expected"),
    [
        pytest.param([record("a", [], evidence_max=0.2, evidence_count=1)], 0.5, [0.7219], id="zero-det-evidence"),
        pytest.param([record("a", [])], 0.0, [None], id="zero-det-no-evidence"),
        pytest.param(
            [record("a", [0.5], evidence_max=0.2, evidence_count=1)], 0.0, [0.861], id="evidence-is-one-more-term"
        ),
        pytest.param([record("a", [0.5])], 0.0, [1.0], id="without-evidence-as-before"),
    ],
)
def test_entropy_counts_the_strongest_missed_box(images, min_score, expected):
    assert scores(sampling.score_entropy(rows_of(images), min_score=min_score)) == expected


def test_margin_and_entropy_rank_a_designed_pair_oppositely():
    images = [
        record("unsure-if-there", [0.6], margin=np.array([0.55])),  # clear class, existence a coin flip
        record("unsure-which-class", [0.9], margin=np.array([0.05])),  # sure it is there, two classes tie
    ]
    rows = rows_of(images)
    entropy = scores(sampling.score_entropy(rows, min_score=0.0))
    margin = scores(sampling.score_margin(rows, threshold=0.5, min_score=0.0))
    assert entropy[0] > entropy[1] and margin[1] > margin[0]
    assert margin == [0.45, 0.95]


@pytest.mark.parametrize(
    ("margins", "expected"),
    [
        pytest.param([0.1, 0.7], 0.9, id="smallest-margin-wins"),
        pytest.param([np.nan, 0.7], 0.9, id="box-without-margin-falls-back-to-confidence"),
        pytest.param(None, 0.9, id="no-margins-as-before"),
    ],
)
def test_margin_uses_the_logged_margin_where_present(margins, expected):
    changes = {} if margins is None else {"margin": np.array(margins)}
    image = record("a", [0.55, 0.95], **changes)
    assert scores(sampling.score_margin(rows_of([image]), threshold=0.5, min_score=0.0)) == [expected]


# --- config ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predict", "ok"),
    [
        pytest.param({"conf": 0.25, "evidence_conf": 0.05}, True, id="default"),
        pytest.param({"conf": 0.25, "evidence_conf": None}, True, id="off"),
        pytest.param({"conf": 0.25, "evidence_conf": 0.25}, False, id="equal"),
        pytest.param({"conf": 0.1, "evidence_conf": 0.3}, False, id="above"),
    ],
)
def test_evidence_conf_must_be_below_conf(tmp_path, predict, ok):
    data = tiny_params_dict(tmp_path)
    data["predict"].update(predict)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    if ok:
        assert load_params(path).predict.evidence_conf == predict["evidence_conf"]
        return
    with pytest.raises(ConfigError, match=r"predict\.evidence_conf \(.*\) must be below predict\.conf"):
        load_params(path)


# --- the stage -------------------------------------------------------------------------------------------------------


def test_the_stage_selects_a_zero_detection_image_with_evidence(tmp_path: Path):
    world = World(tmp_path)
    strong, weak, blank, confident = (world.image(n) for n in ("strong", "weak", "blank", "confident"))
    records = [
        world_record(strong, evidence=(0.2, 2)),
        world_record(weak, evidence=(0.06, 1)),
        world_record(blank),
        world_record(confident, confidences=[0.97]),
    ]
    plog.append(world.paths.predictions, table_of(records), part="p1")
    params = world.params(only("low_confidence", band=[0.25, 0.5]) | {"random": None}, budget=1)
    result = sample.run(params, cycle="c1")
    assert picked(world) == {sha(strong)}
    assert result.by_strategy["low_confidence"].candidates == 2


def world_record(path: Path, *, confidences: Sequence[float] = (), evidence: tuple[float, int] | None = None):
    n = len(confidences)
    return ImageDetections(
        image_id=path.stem,
        image_uri=path.resolve().as_uri(),
        image_sha256=plog.sha256_file(path),
        width=64,
        height=64,
        latency_ms=1.0,
        boxes_xyxy=np.array([BOX] * n, np.float64).reshape(-1, 4),
        confidence=np.asarray(confidences, np.float64),
        class_id=np.zeros(n, np.int64),
        evidence_max=None if evidence is None else evidence[0],
        evidence_count=0 if evidence is None else evidence[1],
    )


# --- diversity -------------------------------------------------------------------------------------------------------


def looks(brightness: float, n_boxes: int = 0, name: str = "") -> ImageDetections:
    """An image whose input statistics sit at ``brightness`` (the other five fixed)."""
    stats = ImageStats(brightness=brightness, contrast=30.0, sharpness=100.0, mean_r=90.0, mean_g=90.0, mean_b=90.0)
    return record(name or f"b{brightness}-{n_boxes}", [0.9] * n_boxes, stats=stats)


CLUSTERS = [looks(b) for b in (10, 11, 12, 120, 121, 240, 241)]


def diversity(images: list[ImageDetections], *, k: int, labeled: Sequence[int] = (), cycle: str = "c1") -> list[str]:
    rows = prediction_rows.image_rows(table_of(images), stats=True)
    mask = np.zeros(len(rows), bool)
    mask[list(labeled)] = True
    score = sampling.score_diversity(rows, labeled=mask, k=k, seed=7, cycle=cycle)
    order = [i for i in np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable") if not np.isnan(score[i])]
    return [images[i].image_id for i in order]


def test_diversity_covers_every_cluster_before_repeating_one():
    picks = diversity(CLUSTERS, k=3)
    brightness = sorted(float(p.split("-")[0][1:]) for p in picks)
    assert brightness[0] < 50 and 100 < brightness[1] < 150 and brightness[2] > 200, picks


def test_diversity_is_deterministic_given_seed_and_cycle():
    assert diversity(CLUSTERS, k=5) == diversity(CLUSTERS, k=5)
    firsts = {diversity(CLUSTERS, k=1, cycle=f"c{i}")[0] for i in range(12)}
    assert len(firsts) > 1  # the first center is a seeded draw, not always the same image


def test_diversity_starts_from_the_labeled_images_and_never_picks_them():
    picks = diversity(CLUSTERS, k=len(CLUSTERS), labeled=[0])
    assert CLUSTERS[0].image_id not in picks and len(picks) == len(CLUSTERS) - 1
    assert picks[0] in {"b240-0", "b241-0"}  # the farthest from the labeled dark image


@pytest.mark.parametrize(
    ("images", "k", "expected"),
    [
        pytest.param([], 3, [], id="empty"),
        pytest.param(CLUSTERS, 0, [], id="budget-0"),
        pytest.param([record("no-stats", [0.9]), looks(50)], 2, ["b50-0"], id="no-stats-no-candidate"),
        pytest.param([looks(50), looks(50, name="twin")], 2, ["b50-0", "twin"], id="identical-twins-both-last"),
    ],
)
def test_diversity_degenerate_cases(images, k, expected):
    assert sorted(diversity(images, k=k)) == sorted(expected)


def test_diversity_needs_the_statistics():
    with pytest.raises(ValueError, match="stats=True"):
        sampling.score_diversity(rows_of([looks(1)]), labeled=np.zeros(1, bool), k=1, seed=0, cycle="c")


def test_the_stage_runs_diversity_and_reports_it(tmp_path: Path):
    world = World(tmp_path)
    paths = [world.image(f"img{i}") for i in range(6)]
    stats = [ImageStats(float(b), 30.0, 100.0, 90.0, 90.0, 90.0) for b in (10, 11, 12, 120, 121, 240)]
    records = [dataclasses.replace(world_record(p), stats=s) for p, s in zip(paths, stats, strict=True)]
    plog.append(world.paths.predictions, table_of(records), part="p1")
    result = sample.run(world.params({"diversity": {"weight": 1.0, "budget": 3}}, budget=3), cycle="c1")
    assert result.by_strategy["diversity"].selected == 3 and result.by_strategy["diversity"].candidates == 6
    brightness = sorted(stats[paths.index(p)].brightness for p in paths if sha(p) in picked(world))
    assert brightness[0] < 50 and 100 < brightness[1] < 150 and brightness[2] > 200


def test_diversity_sees_the_box_count_too():
    same_look = [looks(100, n, name=f"image{i}-boxes{n}") for i, n in enumerate((0, 0, 0, 5))]
    assert "image3-boxes5" in diversity(same_look, k=2)


def test_the_band_keeps_at_most_max_det_boxes():
    apart = [[8 + 16 * (i % 4), 8 + 16 * (i // 4), 4, 4] for i in range(16)]  # 16 boxes, no two overlap
    settings = InferenceSettings(imgsz=64, conf=0.25, iou=0.5, max_det=5, evidence_conf=0.05)
    (det,) = decode_output(raw(apart, [[0.1 + 0.001 * i, 0.0] for i in range(16)]), [IDENTITY], settings)
    assert (det.evidence_count, round(det.evidence_max or 0, 6)) == (5, 0.115)
