"""``reports/sample.json``: what the sample stage selected this cycle and why.

The sample stage writes a :class:`SampleResult` with :func:`tasks.contracts.reports.write_report`; readers use
``load_report(reports, "sample")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StrategyCount:
    """One strategy's numbers in the report."""

    candidates: int
    selected: int
    budget: int
    weight: float


@dataclass(frozen=True)
class SampleResult:
    """Outcome of one sampling cycle (the record of ``reports/sample.json``).

    Attributes:
        cycle: cycle name (the manifest folder).
        manifest: path of the written manifest.
        selected: images in the manifest.
        budget: ``sample.budget``.
        by_strategy: strategy -> candidates, selected, budget, weight (enabled strategies only).
        excluded: reason (``ledger``, ``day_cap``, ``near_duplicate``, ``unreadable_image``) -> images left out.
        per_day: batch date (ISO) -> images selected.
        window: ISO dates of the window, oldest first (empty without log files).
        champion: ``name/version`` of the scored model, None when there is none.
        reason: why fewer than ``budget`` images were selected, None when the budget was filled.
        champion_alias: ``sample.alias``, the alias the champion was found under.
        seed: ``base.seed``.
        config: the effective ``sample`` section (the top-level ``params`` key is the params stamp).
        timings_s: phase -> ``{"wall": s, "cpu": s}``.
        wall_s: seconds the whole stage took.
    """

    cycle: str
    manifest: str
    selected: int
    budget: int
    by_strategy: dict[str, StrategyCount]
    excluded: dict[str, int]
    per_day: dict[str, int]
    window: list[str]
    champion: str | None
    reason: str | None
    champion_alias: str = ""
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0
