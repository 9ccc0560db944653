"""How a merge weighs and splits production data: recency repeats per cycle, holdout and validation counts.

Pure, table-tested rules (``tests/unit/test_merge.py``) the merge stage applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tasks.contracts.reports.merge import CycleRepeat


def repeat_factors(cycles: Iterable[str], *, decay: float, max_repeat: int) -> dict[str, CycleRepeat]:
    """Integer repeat factor per production cycle from its age (0 = the newest by name).

    Args:
        cycles: names of the merged production cycles (any order; they sort chronologically).
        decay: weight per cycle of age, ``weight = decay ** age`` (1 = no recency preference).
        max_repeat: repeats of the newest cycle; older cycles get ``round(max_repeat * weight)``, at least 1.

    Returns:
        ``{cycle: CycleRepeat}``, empty when there is no cycle.
    """
    ordered = sorted(set(cycles))
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
