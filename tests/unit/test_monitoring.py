"""tasks/decisions/monitoring.py: windows of the log, every drift rule failing and passing, bad input, agreement."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy import stats

from tasks.config import DriftRules
from tasks.contracts.monitor_frames import STATS, Frames, empty_frames, frames
from tasks.contracts.reports.monitor import Signal, Window
from tasks.decisions import monitoring
from tasks.decisions.monitoring import OUTPUT_SIGNALS, agreement, compare, windows_of
from tests.unit.test_monitor_frames import IMGSZ, concat, make_log

RULES = DriftRules()


def fr(table: pa.Table) -> Frames:
    return frames(table, imgsz=IMGSZ, low_confidence=RULES.low_confidence)


@pytest.fixture(scope="module")
def baseline() -> Frames:
    return fr(make_log(300, seed=1, batch="2026-10-01", prefix="val"))


def judge(baseline: Frames, table: pa.Table, rules: DriftRules = RULES, **kw) -> Window:
    return compare(baseline, fr(table), rules, key="w", date="2026-11-02", **kw)


def signal(window: Window, name: str) -> Signal:
    return next(s for s in window.signals if s.name == name)


def drifted(window: Window) -> set[str]:
    return {s.name for s in window.signals if s.drifted}


# ------------------------------------------------------------------ each rule failing and passing


def test_same_world_does_not_drift(baseline):
    window = judge(baseline, make_log(150, seed=2))
    assert [s.name for s in window.signals] == [*OUTPUT_SIGNALS, *STATS]
    assert all(s.available for s in window.signals)
    assert not window.drifted and not window.output_drifted and not window.input_drifted
    assert drifted(window) == set()
    assert window.images == 150 and not window.too_small
    assert window.advice == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"conf": (0.3, 0.6)}, {"confidence", "max_confidence", "low_conf_share"}),
        ({"boxes": (5, 8)}, {"detections_per_image"}),
        ({"empty": 0.6}, {"empty_share", "detections_per_image"}),
        ({"size": (60.0, 90.0)}, {"box_size"}),
        ({"class_weights": (1, 1, 1, 1, 1, 12)}, {"class_mix"}),
        ({"brightness": 60.0}, {"brightness"}),
    ],
    ids=["confidence-collapse", "more-boxes", "empty-images", "bigger-objects", "class-mix", "darker-input"],
)
def test_each_signal_fires_on_its_drift(baseline, changes, expected):
    window = judge(baseline, make_log(150, seed=3, **changes))
    assert expected <= drifted(window), f"{drifted(window)} lacks {expected - drifted(window)}"
    assert window.drifted
    input_side = {"brightness"} & expected
    assert window.input_drifted == bool(input_side)
    assert window.output_drifted == bool(expected - input_side)


def test_output_drift_without_input_drift_is_reported_per_side(baseline):
    window = judge(baseline, make_log(150, seed=4, conf=(0.25, 0.5)))
    assert window.output_drifted and not window.input_drifted


def test_a_significant_but_small_difference_does_not_drift():
    """With many images the KS test rejects a tiny shift; the effect size keeps it from counting."""
    base = fr(make_log(4000, seed=5, conf=(0.55, 0.95)))
    window = judge(base, make_log(4000, seed=6, conf=(0.585, 0.985)))
    confidence = signal(window, "confidence")
    assert confidence.p_value is not None and confidence.p_value < 1e-6
    assert confidence.effect is not None and confidence.effect < RULES.min_effect
    assert not confidence.drifted


def test_a_large_effect_needs_a_significant_test_too(baseline):
    strict = RULES.model_copy(update={"alpha": 1e-12, "min_images": 5})
    window = judge(baseline, make_log(8, seed=7, conf=(0.4, 0.7)), strict)
    assert (signal(window, "confidence").effect or 0) >= RULES.min_effect
    assert not signal(window, "confidence").drifted


def test_bonferroni_divides_alpha_by_the_available_signals():
    rules = DriftRules(alpha=0.01, min_effect=0.1)
    close = Signal(name="a", side="output", test="ks", p_value=0.006, effect=0.5)
    other = Signal(name="b", side="output", test="ks", p_value=0.9, effect=0.0)
    off = Signal(name="c", side="input", test="ks", available=False)
    assert [s.drifted for s in monitoring._decide([close, other], rules, judge=True)] == [False, False]
    assert [s.drifted for s in monitoring._decide([close, off], rules, judge=True)] == [True, False]


def test_class_mix_effect_is_cramers_v_and_its_test_accounts_for_clustered_boxes(baseline):
    window = judge(baseline, make_log(150, seed=8, boxes=(4, 6), class_weights=(1, 1, 1, 1, 1, 12)))
    mix = signal(window, "class_mix")
    assert mix.test == "chi2" and mix.drifted
    assert "design effect" in mix.note and "class 5" in mix.note
    assert mix.window is not None and mix.baseline is not None and mix.window > mix.baseline
    assert 0.25 <= (mix.effect or 0) <= 1


def _one_class_per_image(table: pa.Table) -> pa.Table:
    """Every box of an image gets the class of the image's first box (boxes of an image are fully correlated)."""
    ids = table["image_id"].to_pylist()
    classes = table["class_id"].to_pylist()
    first: dict[str, int | None] = {}
    for image, cls in zip(ids, classes, strict=True):
        first.setdefault(image, cls)
    index = table.schema.get_field_index("class_id")
    return table.set_column(index, "class_id", pa.array([first[i] for i in ids], pa.int16()))


def test_class_mix_design_effect_follows_how_clustered_the_boxes_are():
    base = fr(make_log(300, seed=30, boxes=(4, 6)))
    independent = signal(judge(base, make_log(150, seed=31, boxes=(4, 6))), "class_mix")
    clustered = signal(
        compare(
            fr(_one_class_per_image(make_log(300, seed=30, boxes=(4, 6)))),
            fr(_one_class_per_image(make_log(150, seed=31, boxes=(4, 6)))),
            RULES,
            key="w",
            date="2026-11-02",
        ),
        "class_mix",
    )
    deff = [float(s.note.rsplit("design effect ", 1)[1].split(" ")[0]) for s in (independent, clustered)]
    assert deff[0] == pytest.approx(1.0, abs=0.3)
    assert 3.5 <= deff[1] <= 6.0  # about the 5 boxes per image


def test_clustered_boxes_do_not_fake_a_class_mix_drift():
    """A modest class shift carried by few images: significant if boxes were independent, not when clustered."""
    weights = (1, 1, 1, 1, 1, 2.2)
    base = fr(_one_class_per_image(make_log(300, seed=32, boxes=(6, 8))))
    window = fr(_one_class_per_image(make_log(150, seed=33, boxes=(6, 8), class_weights=weights)))
    mix = signal(compare(base, window, RULES.model_copy(update={"min_effect": 0.0}), key="w", date="d"), "class_mix")
    naive_p = float(
        stats.chi2.sf((mix.statistic or 0) * float(mix.note.rsplit("design effect ", 1)[1].split(" ")[0]), 5)
    )
    assert naive_p < RULES.alpha / 13  # counted as independent boxes, it would drift
    assert (mix.p_value or 0) > RULES.alpha / 13
    assert not mix.drifted


def test_psi_is_reported_and_decides_nothing(baseline):
    window = judge(baseline, make_log(150, seed=2))
    assert all(s.psi is not None and s.psi >= 0 for s in window.signals if s.test == "ks")
    assert not window.drifted


# ------------------------------------------------------------------ advice


def test_objects_shrinking_below_what_the_input_resolves_gives_imgsz_advice(baseline):
    window = judge(baseline, make_log(150, seed=9, size=(5.0, 9.0)))
    assert "box_size" in drifted(window)
    assert len(window.advice) == 1
    assert window.advice[0].startswith("objects now 7 px at the model's input (baseline 36 px)")
    assert "larger base.imgsz" in window.advice[0]


def test_small_but_resolvable_objects_give_no_advice(baseline):
    window = judge(baseline, make_log(150, seed=9, size=(22.0, 26.0)))  # above small_object_px (20)
    assert "box_size" in drifted(window)
    assert window.advice == []


def test_box_size_is_measured_at_the_model_input():
    """A 640 px image downscaled to 160 px: 40 px objects are 10 px at the model's input."""
    base = fr(make_log(200, seed=10, size=(120.0, 160.0), image_size=(640, 640)))
    window = judge(base, make_log(150, seed=11, size=(36.0, 44.0), image_size=(640, 640)))
    assert signal(window, "box_size").window == pytest.approx(10.0, abs=0.5)
    assert window.advice and window.advice[0].startswith("objects now 10 px")


# ------------------------------------------------------------------ bad input


def test_empty_window_is_too_small_and_does_not_crash(baseline):
    window = compare(baseline, empty_frames(), RULES, key="2026-11-02", date="2026-11-02")
    assert window.images == 0 and window.boxes == 0 and window.too_small and not window.drifted
    assert not any(s.available for s in window.signals)
    assert window.latency_ms == {"p50": None, "p95": None, "p99": None}
    assert window.batches == []


def test_small_window_is_too_small_and_never_drifts(baseline):
    window = judge(baseline, make_log(RULES.min_images - 1, seed=12, conf=(0.1, 0.3), brightness=20.0))
    assert window.too_small and not window.drifted
    assert all(not s.drifted for s in window.signals)
    assert signal(window, "confidence").available  # still measured and reported


def test_window_of_only_empty_images_still_judges_the_output_side(baseline):
    window = judge(baseline, make_log(150, seed=13, empty=1.0))
    for name in ("confidence", "max_confidence", "box_size", "low_conf_share", "class_mix"):
        assert not signal(window, name).available
        assert "no boxes in the window" in signal(window, name).note
    assert {"empty_share", "detections_per_image"} <= drifted(window)
    assert signal(window, "empty_share").window == 1.0
    assert window.output_drifted and window.boxes == 0


def test_old_log_without_input_statistics_still_judges_the_output_side(baseline):
    window = judge(baseline, make_log(150, seed=14, v2=False, conf=(0.2, 0.5)))
    for name in STATS:
        assert not signal(window, name).available
        assert signal(window, name).note.startswith("not available: the log has no input statistics")
    assert "confidence" in drifted(window)
    assert window.output_drifted and not window.input_drifted


def test_baseline_without_input_statistics_says_so():
    base = fr(make_log(200, seed=15, v2=False))
    window = judge(base, make_log(150, seed=16))
    assert not signal(window, "brightness").available
    assert "baseline" in signal(window, "brightness").note
    assert not window.drifted


def test_baseline_too_small_judges_nothing():
    base = fr(make_log(5, seed=17))
    window = judge(base, make_log(150, seed=18, conf=(0.1, 0.3)))
    assert not window.drifted
    assert any("baseline has 5 judged image(s)" in p for p in window.problems)


def _set(table: pa.Table, column: str, rows: list[int], value: float) -> pa.Table:
    values = table[column].to_pylist()
    for i in rows:
        values[i] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, table.schema.field(column).type))


def test_nan_confidences_and_negative_latencies_are_left_out_and_named(baseline):
    table = _set(_set(make_log(150, seed=19, boxes=(1, 4)), "confidence", [0], float("nan")), "latency_ms", [8], -2)
    window = judge(baseline, table)
    assert window.images == 148  # rows 0 and 8 belong to two images (at most 4 rows each)
    assert len(window.problems) == 2 and all(p.startswith("batch 2026-11-02: ") for p in window.problems)
    assert all(s.p_value is None or np.isfinite(s.p_value) for s in window.signals)
    assert not window.drifted


def test_errors_are_counted_by_kind_and_judge_nothing(baseline):
    window = judge(baseline, make_log(150, seed=20, errors=["decode", "decode", "timeout"]))
    assert window.errors == {"unreadable": 0, "decode": 2, "inference": 0, "timeout": 1}
    assert window.images == 150
    assert not window.drifted


def test_latency_percentiles(baseline):
    table = concat(make_log(100, seed=21, latency=2.0), make_log(50, seed=22, latency=10.0, prefix="slow"))
    window = judge(baseline, table)
    assert window.latency_ms["p50"] == pytest.approx(2.0)
    assert window.latency_ms["p99"] == pytest.approx(10.0)


def test_one_source_drifting_is_visible_when_judged_alone(baseline):
    table = concat(
        make_log(150, seed=23, source="cam1", prefix="a"),
        make_log(40, seed=24, source="cam2", prefix="b", conf=(0.2, 0.45)),
    )
    assert not judge(baseline, table, source="cam1").drifted
    cam2 = judge(baseline, table, source="cam2")
    assert cam2.source == "cam2" and cam2.images == 40 and cam2.drifted


# ------------------------------------------------------------------ windows


def test_windows_are_ordered_by_batch_date_then_name_not_by_timestamp():
    late = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)  # predicted before the others: timestamps out of order
    early = dt.datetime(2026, 12, 30, tzinfo=dt.UTC)
    table = concat(
        make_log(5, batch="2026-11-05", ts=late, prefix="c"),
        make_log(5, batch="2026-11-03b", date=dt.date(2026, 11, 3), ts=early, prefix="b"),
        make_log(5, batch="2026-11-03a", date=dt.date(2026, 11, 3), ts=late, prefix="a"),
        make_log(5, batch="2026-11-04", ts=early, prefix="d"),
    )
    windows = windows_of(fr(table), by="batch")
    assert [(key, date) for key, date, _ in windows] == [
        ("2026-11-03a", "2026-11-03"),
        ("2026-11-03b", "2026-11-03"),
        ("2026-11-04", "2026-11-04"),
        ("2026-11-05", "2026-11-05"),
    ]
    assert all(w.images["batch"].unique().to_list() == [key] for key, _, w in windows)
    assert all(set(w.boxes["batch"].unique().to_list()) <= {key} for key, _, w in windows)
    days = windows_of(fr(table), by="day")
    assert [key for key, _, _ in days] == ["2026-11-03", "2026-11-04", "2026-11-05"]
    assert days[0][2].images.height == 10
    assert days[0][2].boxes.height == days[0][2].images["n_detections"].sum()


def test_windows_keep_their_own_problems():
    bad = make_log(5, batch="2026-11-04", boxes=(1, 1), prefix="b")
    bad = _set(bad, "confidence", [0], float("inf"))
    windows = windows_of(fr(concat(make_log(5, batch="2026-11-03"), bad)), by="batch")
    assert windows[0][2].problems == []
    assert len(windows[1][2].problems) == 1


def test_no_rows_no_windows():
    assert windows_of(empty_frames(), by="batch") == []
    assert windows_of(empty_frames(), by="day") == []


def test_window_lists_its_batches(baseline):
    table = concat(make_log(20, batch="2026-11-04", prefix="b"), make_log(20, batch="2026-11-03", prefix="a"))
    window = judge(baseline, table)
    assert window.batches == ["2026-11-03", "2026-11-04"]


# ------------------------------------------------------------------ agreement


def _shadow(table: pa.Table, *, shift: float = 0.0, version: str = "2") -> pa.Table:
    out = table
    for column in ("x1", "x2"):
        index = out.schema.get_field_index(column)
        out = out.set_column(index, column, pc.add(out[column], pa.scalar(shift, pa.float32())))
    out = out.set_column(out.schema.get_field_index("model_version"), "model_version", pa.array([version] * len(out)))
    alias = out.schema.get_field_index("model_alias")
    return out.set_column(alias, "model_alias", pa.array(["challenger"] * len(out)))


def test_identical_shadow_agrees_fully():
    champion = make_log(30, seed=25, boxes=(0, 4))
    result = agreement(fr(champion), fr(_shadow(champion)), iou=0.5)
    assert result is not None
    assert result.shadow_version == "2" and result.images == 30
    assert result.matched_box_rate == 1.0 and result.class_agreement == 1.0
    assert result.count_difference == 0.0 and result.latency_ratio == 1.0


def test_shifted_shadow_boxes_do_not_match():
    champion = make_log(30, seed=26, boxes=(1, 3), size=(20.0, 30.0))
    result = agreement(fr(champion), fr(_shadow(champion, shift=60.0)), iou=0.5)
    assert result is not None and result.matched_box_rate is not None
    assert result.matched_box_rate < 0.2
    assert result.class_agreement is None or result.class_agreement == 1.0


def test_shadow_on_a_share_of_images_is_compared_on_those_only():
    champion = make_log(40, seed=27)
    shadow = _shadow(champion).filter(pc.is_in(champion["image_id"], pa.array(["img_00001", "img_00007"])))
    result = agreement(fr(champion), fr(shadow), iou=0.5)
    assert result is not None and result.images == 2 and result.matched_box_rate == 1.0


def test_no_common_images_no_agreement():
    assert agreement(fr(make_log(5, prefix="a")), fr(_shadow(make_log(5, prefix="b"))), iou=0.5) is None
    assert agreement(fr(make_log(5)), empty_frames(), iou=0.5) is None


def test_shadow_without_boxes_where_the_champion_has_them():
    champion = make_log(10, seed=28, boxes=(2, 2))
    result = agreement(fr(champion), fr(_shadow(make_log(10, seed=28, empty=1.0))), iou=0.5)
    assert result is not None
    assert result.matched_box_rate == 0.0 and result.class_agreement is None and result.count_difference == 2.0
