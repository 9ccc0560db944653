"""How a merge weighs and splits production data: recency repeats per cycle, holdout and validation counts.

Pure, table-tested rules (``tests/unit/test_merge.py``) the merge stage applies.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping

from tasks.contracts.reports.merge import CycleRepeat


def chronological(cycles: Iterable[str], started: Mapping[str, dt.datetime] | None = None) -> list[str]:
    """Cycle names oldest first: by recorded start time when every cycle has one, else in natural name order.

    Natural order compares the digit runs of a name as numbers (``c9`` before ``c10``; the default UTC-timestamp
    names sort the same either way). A start time (the label ledger's first ``queued_at`` of the cycle) orders
    names that carry no order at all (``spring``, ``line-2-retake``).
    """
    names = sorted(set(cycles), key=_natural)
    if started and all(name in started for name in names):
        return sorted(names, key=lambda name: (started[name], _natural(name)))
    return names


def _natural(name: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def repeat_factors(
    cycles: Iterable[str], *, decay: float, max_repeat: int, started: Mapping[str, dt.datetime] | None = None
) -> dict[str, CycleRepeat]:
    """Integer repeat factor per production cycle from its age (0 = the newest, see :func:`chronological`).

    Args:
        cycles: names of the merged production cycles (any order).
        decay: weight per cycle of age, ``weight = decay ** age`` (1 = no recency preference).
        max_repeat: repeats of the newest cycle; older cycles get ``round(max_repeat * weight)``, at least 1.
        started: each cycle's recorded start (the label ledger's first ``queued_at``), when known.

    Returns:
        ``{cycle: CycleRepeat}``, empty when there is no cycle.
    """
    ordered = chronological(cycles, started)
    out = {}
    for index, cycle in enumerate(ordered):
        age = len(ordered) - 1 - index
        weight = decay**age
        repeat = min(max_repeat, max(1, math.floor(max_repeat * weight + 0.5)))
        out[cycle] = CycleRepeat(cycle=cycle, age=age, weight=round(weight, 6), repeat=repeat)
    return out


def split_counts(n: int, *, holdout_fraction: float, val_fraction: float) -> tuple[int, int]:
    """How many of ``n`` new images of a cycle go to the holdout and to validation.

    At least one holdout image when the fraction is positive and ``n >= 2``, so a small cycle still has one.
    """
    holdout = math.floor(n * holdout_fraction + 0.5)
    if holdout_fraction > 0 and n >= 2:
        holdout = max(holdout, 1)
    holdout = min(holdout, n)
    val = min(math.floor(n * val_fraction + 0.5), n - holdout)
    return holdout, val
