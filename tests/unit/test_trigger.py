"""tasks/decisions/trigger.py: k windows in a row, one noisy window, cool-down, open cycle, pending retry."""

from __future__ import annotations

import datetime as dt

import pytest

from tasks.config import TriggerParams
from tasks.contracts.reports.monitor import Signal, Window
from tasks.decisions.trigger import TriggerError, confirm, decide_trigger

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
RULES = TriggerParams()  # k = 2, cool-down 24 h


def win(key: str, drifted: bool, *, side: str = "output", too_small: bool = False) -> Window:
    name = "confidence" if side == "output" else "brightness"
    signals = [Signal(name=name, side=side, test="ks", drifted=drifted)]  # type: ignore[arg-type]
    return Window(
        key=key,
        date=key,
        source=None,
        images=10 if too_small else 150,
        boxes=300,
        batches=[key],
        drifted=drifted,
        output_drifted=drifted and side == "output",
        input_drifted=drifted and side == "input",
        too_small=too_small,
        signals=signals,
    )


def stream(*flags: bool) -> list[Window]:
    return [win(f"2026-11-{i + 1:02d}", flag) for i, flag in enumerate(flags)]


@pytest.mark.parametrize(
    ("history", "k", "expected"),
    [
        ([], 1, False),
        ([True], 1, True),
        ([True], 2, False),
        ([True, True], 2, True),
        ([True, False], 2, False),
        ([False, True, True], 2, True),
        ([True, False, True], 2, False),
        ([True, True, True], 3, True),
    ],
    ids=["empty", "k1", "one-of-two", "two-in-a-row", "broken", "newest-run", "gap", "k3"],
)
def test_confirm(history, k, expected):
    assert confirm(history, k) is expected


def test_confirm_needs_k_of_at_least_one():
    with pytest.raises(TriggerError, match="confirm_windows"):
        confirm([True], 0)


def decide(windows, **kw):
    kw.setdefault("last_trigger_at", None)
    kw.setdefault("cycle_open", None)
    return decide_trigger(windows, rules=kw.pop("rules", RULES), now=kw.pop("now", NOW), **kw)


def test_k_consecutive_drifted_windows_fire():
    decision = decide(stream(False, True, True))
    assert decision.fire and decision.confirmed
    assert decision.batches == ["2026-11-02", "2026-11-03"]
    assert decision.reason.startswith("drift confirmed in the last 2 window(s) (2026-11-02, 2026-11-03)")
    assert "starting a cycle" in decision.reason


def test_one_noisy_window_does_not_fire():
    decision = decide(stream(False, False, True))
    assert not decision.fire and not decision.confirmed and decision.batches == []
    assert decision.reason.startswith("no drift confirmed: 1 of the last 2 judged window(s)")


def test_drift_that_stopped_does_not_fire():
    assert not decide(stream(True, True, False)).fire


def test_older_drifted_windows_are_flagged_too_unless_already_triggered():
    windows = stream(True, False, True, True)
    assert decide(windows).batches == ["2026-11-01", "2026-11-03", "2026-11-04"]
    assert decide(windows, triggered_batches={"2026-11-01"}).batches == ["2026-11-03", "2026-11-04"]


def test_batches_already_triggered_do_not_fire_again():
    decision = decide(stream(True, True), triggered_batches={"2026-11-01", "2026-11-02"})
    assert decision.confirmed and not decision.fire
    assert "already flagged" in decision.reason


def test_output_drift_without_input_drift_fires_as_performance_drift():
    decision = decide(stream(True, True))
    assert decision.fire
    assert "performance drift" in decision.reason and "output side (confidence)" in decision.reason


def test_input_drift_names_the_input_side():
    windows = [win("2026-11-01", True, side="input"), win("2026-11-02", True, side="input")]
    decision = decide(windows)
    assert decision.fire and "input side (brightness)" in decision.reason and "performance" not in decision.reason


def test_too_small_windows_neither_confirm_nor_break_a_run():
    windows = [win("a", True), win("b", False, too_small=True), win("c", True)]
    assert decide(windows).fire
    assert not decide([win("a", True), win("b", True, too_small=True)]).fire


def test_no_windows_no_fire():
    decision = decide([])
    assert not decision.fire and not decision.confirmed and decision.reason == "no window large enough to judge yet"


@pytest.mark.parametrize(
    ("hours_ago", "fires"),
    [(1.0, False), (23.9, False), (24.0, True), (72.0, True)],
    ids=["1h", "just-inside", "at-the-end", "long-ago"],
)
def test_cool_down_counts_from_the_last_successful_start(hours_ago, fires):
    decision = decide(stream(True, True), last_trigger_at=NOW - dt.timedelta(hours=hours_ago))
    assert decision.confirmed and decision.fire is fires
    if not fires:
        assert "cool-down" in decision.reason and decision.batches == ["2026-11-01", "2026-11-02"]


def test_an_open_cycle_blocks_the_trigger():
    decision = decide(stream(True, True), cycle_open="cycle-0007")
    assert decision.confirmed and not decision.fire
    assert "cycle cycle-0007 is still open" in decision.reason


def test_a_failed_start_fires_again_even_in_the_cool_down():
    decision = decide(
        stream(False, False),
        last_trigger_at=NOW - dt.timedelta(hours=1),
        pending_batches=["2026-10-30", "2026-10-31"],
    )
    assert decision.fire and not decision.confirmed
    assert decision.batches == ["2026-10-30", "2026-10-31"]
    assert decision.reason.startswith("retrying the start that failed")


def test_a_pending_start_adds_the_new_drifted_batches():
    decision = decide(stream(True, True), pending_batches=["2026-10-31"])
    assert decision.fire and decision.batches == ["2026-10-31", "2026-11-01", "2026-11-02"]


def test_a_pending_start_waits_for_an_open_cycle():
    assert not decide(stream(True, True), pending_batches=["x"], cycle_open="c").fire


def test_the_trigger_switched_off_never_fires():
    decision = decide(stream(True, True), rules=TriggerParams(enabled=False))
    assert decision.confirmed and not decision.fire and "enabled: false" in decision.reason


def test_k_comes_from_the_params():
    rules = TriggerParams(confirm_windows=3)
    assert not decide(stream(True, True), rules=rules).fire
    assert decide(stream(True, True, True), rules=rules).fire
    assert decide(stream(True), rules=TriggerParams(confirm_windows=1)).fire


def test_naive_times_are_refused():
    with pytest.raises(TriggerError, match="no time zone"):
        decide(stream(True, True), now=dt.datetime(2026, 11, 20))
    with pytest.raises(TriggerError, match="last_trigger_at"):
        decide(stream(True, True), last_trigger_at=dt.datetime(2026, 11, 20))
