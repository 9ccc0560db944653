"""The quarantine share rule: a cycle whose failing share is too high is refused whole, nothing is moved.

Pure: counts in, :class:`ShareDecision` out (table-tested in ``tests/unit/test_validate_helpers.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

TOP_REASONS = 5


@dataclass(frozen=True)
class ShareDecision:
    """Whether a cycle's quarantined share is acceptable.

    Attributes:
        checked: images checked.
        quarantined: images that failed at least one expectation.
        share: ``quarantined / checked`` (0 when nothing was checked).
        max_share: ``validate.max_quarantine_share``.
        refused: ``share > max_share``: quarantine nothing, fail the stage.
    """

    checked: int
    quarantined: int
    share: float
    max_share: float
    refused: bool


def judge_share(*, checked: int, quarantined: int, max_share: float) -> ShareDecision:
    """Decide on a cycle's quarantine share; a share equal to ``max_share`` passes.

    Args:
        checked: images checked (0: share 0, never refused).
        quarantined: images that failed, ``0 <= quarantined <= checked``.
        max_share: the largest acceptable share, in [0, 1].
    """
    share = quarantined / checked if checked else 0.0
    return ShareDecision(checked, quarantined, share, max_share, share > max_share)


def top_reasons(counts: Counter[str], *, n: int = TOP_REASONS) -> str:
    """``"check (k), ..."`` for the ``n`` most frequent checks, ``"none"`` when there is none."""
    return ", ".join(f"{check} ({k})" for check, k in counts.most_common(n)) or "none"
