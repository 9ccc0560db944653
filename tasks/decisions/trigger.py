"""The retrain trigger: does the monitor start a continuous-learning cycle now? Pure.

:func:`decide_trigger` reads the judged windows (oldest first, all sources together) and the trigger's memory
(the last *successful* start, a cycle still open, the batches of a start that failed) and returns a
:class:`~tasks.contracts.reports.monitor.Trigger` whose ``reason`` is always a sentence a person can act on.

Rules, in order:

1. Confirmation: drift in the last ``confirm_windows`` (k) judged windows in a row (:func:`confirm`), so one noisy
   window never starts a retrain. Windows too small to judge are skipped: they carry no evidence either way and
   neither confirm nor break a run. Output-side drift alone counts (a confidence collapse with unchanged inputs is
   performance drift).
2. ``trigger.enabled: false`` never fires (the decision is still reported).
3. An open cycle blocks: one cycle at a time.
4. A start that failed last time (``pending_batches``) fires again, even inside the cool-down: the cool-down counts
   from a successful start, and a failed one started nothing.
5. The cool-down: no new start within ``cooldown_hours`` of the last successful one.

``batches`` are the drifted windows' batches: those of the confirming run and of older drifted windows, minus
batches an earlier successful trigger already flagged (``triggered_batches``), plus the pending ones, in window
order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

from tasks.config import TriggerParams, VisionloopError
from tasks.contracts.reports.monitor import Trigger, Window


class TriggerError(VisionloopError, ValueError):
    """The trigger's inputs are inconsistent (e.g. a naive timestamp)."""


def confirm(drifted_history: Sequence[bool], k: int) -> bool:
    """True when the last ``k`` entries of ``drifted_history`` (oldest first) are all True (and there are k).

    Raises:
        TriggerError: ``k`` < 1.
    """
    if k < 1:
        raise TriggerError(f"confirm_windows must be >= 1, got {k}")
    return len(drifted_history) >= k and all(drifted_history[-k:])


def _aware(name: str, value: dt.datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise TriggerError(f"{name} {value.isoformat()} has no time zone; pass an aware datetime (UTC)")


def _signals(windows: Sequence[Window]) -> str:
    """``output side (confidence, empty_share); input side (brightness)`` over the windows' drifted signals."""
    names: dict[str, list[str]] = {"output": [], "input": []}
    for window in windows:
        for signal in window.signals:
            if signal.drifted and signal.name not in names[signal.side]:
                names[signal.side].append(signal.name)
    parts = [f"{side} side ({', '.join(found)})" for side, found in names.items() if found]
    text = "; ".join(parts) or "no signal named"
    if names["output"] and not names["input"]:
        text += " - performance drift: the model's answers changed while its inputs did not"
    return text


# long: the rules read in the order the module docstring lists them; splitting them would hide that order
def decide_trigger(
    windows: Sequence[Window],
    *,
    rules: TriggerParams,
    now: dt.datetime,
    last_trigger_at: dt.datetime | None,
    cycle_open: str | None,
    pending_batches: Sequence[str] = (),
    triggered_batches: Collection[str] = (),
) -> Trigger:
    """Decide whether to start a continuous-learning cycle now.

    Args:
        windows: judged windows, oldest first (all sources together; a window the stage counts as drifted because
            one source drifted arrives with ``drifted`` True).
        rules: ``monitor.trigger``.
        now: the decision time (aware).
        last_trigger_at: when a cycle was last *successfully* started by the trigger (aware), or ``None``.
        cycle_open: the id/name of a continuous-learning cycle still running, or ``None``.
        pending_batches: batches of a trigger whose start failed (it fires again, even in the cool-down).
        triggered_batches: batches an earlier successful start already flagged (not flagged again).

    Returns:
        The :class:`Trigger` (``started``/``error`` are left for the flow to fill in).

    Raises:
        TriggerError: a naive ``now`` or ``last_trigger_at``.
    """
    _aware("now", now)
    _aware("last_trigger_at", last_trigger_at)
    k = rules.confirm_windows
    judged = [w for w in windows if not w.too_small]
    confirmed = confirm([w.drifted for w in judged], k)
    run = judged[-k:] if confirmed else []
    done = set(triggered_batches)
    batches: list[str] = list(dict.fromkeys(pending_batches))
    if confirmed:
        for window in judged:
            if window.drifted:
                batches += [b for b in (window.batches or [window.key]) if b not in done and b not in batches]
    pending = bool(pending_batches)

    def decision(fire: bool, reason: str) -> Trigger:
        return Trigger(fire=fire, confirmed=confirmed, reason=reason, batches=batches if confirmed or pending else [])

    if not judged:
        return decision(pending and rules.enabled and cycle_open is None, "no window large enough to judge yet")
    newest = ", ".join(w.key for w in judged[-k:])
    if confirmed:
        what = f"drift confirmed in the last {k} window(s) ({newest}): {_signals(run)}"
    else:
        recent = sum(w.drifted for w in judged[-k:])
        seen = min(k, len(judged))
        what = (
            f"no drift confirmed: {recent} of the last {seen} judged window(s) ({newest}) drifted, {k} in a row needed"
        )
    if not rules.enabled:
        return decision(False, f"{what}; the trigger is off (monitor.trigger.enabled: false)")
    if not confirmed and not pending:
        return decision(False, what)
    if cycle_open is not None:
        return decision(False, f"{what}; not starting: cycle {cycle_open} is still open")
    if pending:
        return decision(True, f"retrying the start that failed for batches {list(pending_batches)}; {what}")
    if not batches:
        return decision(False, f"{what}; not starting: its batches were already flagged by an earlier trigger")
    if last_trigger_at is not None:
        until = last_trigger_at + dt.timedelta(hours=rules.cooldown_hours)
        if now < until:
            return decision(
                False,
                f"{what}; not starting: cool-down after the start at {last_trigger_at.isoformat()} lasts until "
                f"{until.isoformat()}",
            )
    return decision(True, f"{what}; starting a cycle for batches {batches}")
