"""tasks/decisions/watch.py: a worse promotion regresses, a better one does not; holdout rule; confirmation; expiry."""

from __future__ import annotations

import pytest

from tasks.config import WatchParams
from tasks.contracts.monitor_frames import Frames, empty_frames, frames
from tasks.contracts.reports.monitor import WatchWindow
from tasks.decisions.watch import decide_watch, holdout_window, watch_window
from tests.unit.test_monitor_frames import IMGSZ, make_log

RULES = WatchParams()


def fr(**kw) -> Frames:
    kw.setdefault("seed", 1)
    return frames(make_log(150, **kw), imgsz=IMGSZ, low_confidence=0.5)


GOOD = {"conf": (0.6, 0.95), "boxes": (1, 4)}
WORSE = {"conf": (0.3, 0.6), "boxes": (0, 2), "empty": 0.3}


def test_a_worse_model_regresses():
    window = watch_window(fr(seed=2, **WORSE), fr(seed=3, **GOOD), RULES, key="2026-11-05")
    assert window.regressed and window.kind == "production" and window.images == 150
    assert len(window.reasons) == 3
    assert (window.numbers["confidence_drop"] or 0) > RULES.max_confidence_drop
    assert (window.numbers["empty_rise"] or 0) > RULES.max_empty_rise
    assert (window.numbers["detections_drop"] or 0) > RULES.max_detections_drop


def test_a_better_model_does_not_regress():
    window = watch_window(fr(seed=3, **GOOD), fr(seed=2, **WORSE), RULES, key="2026-11-05")
    assert not window.regressed
    assert window.reasons == ["no regression on 150 paired images"]


def test_the_same_model_does_not_regress():
    assert not watch_window(fr(seed=4), fr(seed=4), RULES, key="w").regressed


@pytest.mark.parametrize(
    ("new", "numbers"),
    [
        ({"conf": (0.35, 0.7)}, "confidence_drop"),
        ({"empty": 0.25, "boxes": (2, 4)}, "empty_rise"),
        ({"boxes": (1, 1)}, "detections_drop"),
    ],
    ids=["confidence", "empty", "detections"],
)
def test_each_rule_fires_alone(new, numbers):
    window = watch_window(fr(seed=5, **new), fr(seed=6), RULES, key="w")
    assert window.regressed and len(window.reasons) == 1
    assert (window.numbers[numbers] or 0) > 0


@pytest.mark.parametrize(
    "new",
    [{"conf": (0.52, 0.9)}, {"empty": 0.08}, {"boxes": (1, 3)}],
    ids=["confidence-drop-under-threshold", "empty-rise-under-threshold", "detections-drop-under-threshold"],
)
def test_a_real_but_small_loss_does_not_regress(new):
    window = watch_window(fr(seed=7, **new), fr(seed=8), RULES, key="w")
    assert not window.regressed, window.reasons


def test_a_large_drop_on_few_images_is_not_significant():
    new = frames(make_log(4, seed=9, conf=(0.3, 0.5)), imgsz=IMGSZ, low_confidence=0.5)
    old = frames(make_log(4, seed=10), imgsz=IMGSZ, low_confidence=0.5)
    window = watch_window(new, old, RULES, key="w")
    assert (window.numbers["confidence_drop"] or 0) > RULES.max_confidence_drop
    assert not window.regressed


def test_only_images_both_versions_predicted_are_paired():
    new = frames(make_log(150, seed=11, prefix="a", **WORSE), imgsz=IMGSZ, low_confidence=0.5)
    window = watch_window(new, fr(seed=12), RULES, key="w")
    assert window.images == 0 and not window.regressed
    assert window.reasons == ["no image predicted by both versions"]
    assert watch_window(empty_frames(), empty_frames(), RULES, key="w").images == 0


def test_error_rows_are_left_out_of_the_pairs():
    new = frames(make_log(20, seed=13, errors=["decode"]), imgsz=IMGSZ, low_confidence=0.5)
    old = frames(make_log(20, seed=13, errors=["decode"]), imgsz=IMGSZ, low_confidence=0.5)
    assert watch_window(new, old, RULES, key="w").images == 20


# ------------------------------------------------------------------ holdout


@pytest.mark.parametrize(
    ("high", "loss", "regressed"),
    [(-0.01, 0.0, True), (0.01, 0.0, False), (0.0, 0.0, False), (-0.01, 0.02, False), (-0.03, 0.02, True)],
    ids=["worse", "ci-covers-zero", "bound-at-zero", "inside-tolerance", "beyond-tolerance"],
)
def test_holdout_regresses_when_the_upper_bound_is_below_the_tolerated_loss(high, loss, regressed):
    rules = WatchParams(max_holdout_loss=loss)
    window = holdout_window("cycle-0003", high - 0.02, high - 0.04, high, 60, rules)
    assert window.kind == "holdout" and window.images == 60
    assert window.regressed is regressed
    assert window.numbers == {"estimate": high - 0.02, "low": high - 0.04, "high": high}
    assert window.reasons[0].startswith("holdout cycle-0003: mAP50-95 new − previous")


# ------------------------------------------------------------------ the decision


def prod(key: str, regressed: bool) -> WatchWindow:
    return WatchWindow(key=key, kind="production", images=150, regressed=regressed, reasons=[f"{key} reason"])


def watch(windows, *, since=None, rules=RULES):
    since = len([w for w in windows if w.kind == "production"]) if since is None else since
    return decide_watch(
        windows,
        rules,
        new_version="4",
        previous_version="3",
        promoted_at="2026-11-04T10:00:00+00:00",
        windows_since=since,
    )


def test_one_regressed_window_rolls_back_with_k_1():
    result = watch([prod("a", False), prod("b", True)])
    assert result.regressed and not result.expired
    assert result.reason.startswith("v4 regressed against v3 in 1 production window(s) in a row: b: b reason")
    assert [w.key for w in result.windows] == ["a", "b"]


def test_no_regressed_window_holds():
    result = watch([prod("a", False), prod("b", False)])
    assert not result.regressed and "v4 holds against v3" in result.reason


def test_confirm_windows_needs_regressions_in_a_row():
    rules = WatchParams(confirm_windows=2)
    assert not watch([prod("a", True), prod("b", False), prod("c", True)], rules=rules).regressed
    assert watch([prod("a", False), prod("b", True), prod("c", True)], rules=rules).regressed


def test_a_regressed_holdout_rolls_back_alone():
    holdout = holdout_window("cycle-0004", -0.05, -0.08, -0.02, 60, RULES)
    result = watch([prod("a", False), holdout])
    assert result.regressed and "fresh holdout" in result.reason


def test_only_the_first_windows_after_the_promotion_are_watched():
    windows = [prod("a", False), prod("b", False), prod("c", False), prod("d", True)]
    result = watch(windows, since=3)
    assert not result.regressed


def test_the_watch_expires():
    result = watch([prod("a", True)], since=RULES.windows + 1)
    assert result.expired and not result.regressed
    assert result.reason.startswith(f"watch over: {RULES.windows + 1} production windows since the promotion of v4")


def test_nothing_to_watch_yet():
    result = watch([], since=0)
    assert not result.regressed and not result.expired
