"""``reports/cycle.json`` (the latest cycle) and ``reports/cycles/<cycle>/report.json``: one cycle's report.

The cycle stage writes a :class:`CycleReport` with :func:`tasks.contracts.reports.write_report` (to both places);
readers use ``load_report(reports, "cycle")`` (or ``path=`` for an older cycle's folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CycleReport:
    """What a cycle's ``report.json`` holds.

    Attributes:
        cycle: the cycle's name.
        outcome: how it ended (the decision, or why it stopped early).
        summary: the numbers of the summary table (one row per cycle in the demo).
        markdown: the human report (``report.md``).
        folder: ``<reports>/cycles/<cycle>/``.
        plots: the PNG files written in ``folder``.
        mlflow_run_id: the candidate's run the report was logged to (``None``: nothing registered).
        stages: the stage reports of the cycle it summarises, by stage, as their JSON.
    """

    cycle: str
    outcome: str
    summary: dict[str, Any]
    markdown: str
    folder: str
    plots: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    stages: dict[str, Any] = field(default_factory=dict)
