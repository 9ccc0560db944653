"""``reports/validate.json``: what the validate stage found on a cycle, and whether it refused it.

The validate stage writes a :class:`ValidateReport` with :func:`tasks.contracts.reports.write_report` (also when it
refuses the cycle: ``status == "failed"`` with the ``error``); readers use ``load_report(reports, "validate")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ValidateReport:
    """One validate run over one cycle.

    Attributes:
        stage: always ``"validate"``.
        cycle: the cycle validated.
        run_at: ISO time of the run (UTC).
        status: ``passed`` (failing images quarantined) or ``failed`` (refused whole, nothing moved).
        error: why it failed, else None.
        checked, passed, quarantined: images checked, left in place, failing (moved when ``passed``).
        share: ``quarantined / checked``, rounded to 4 digits.
        max_quarantine_share: ``validate.max_quarantine_share``.
        reasons: failing images per check name, most frequent first.
        quarantined_images: file name -> the reasons in words.
        orphan_labels: label files without an image (ignored).
        suites: per suite, ``{"success", "statistics", "result"}`` (the GX result file) or ``{"skipped": ...}``.
        prediction_log: ``{"files", "rows_sampled"}``.
        test_images: golden + holdout images compared against.
        images_report: ``images.json`` (size and hashes of every checked image).
        data_docs: the GX data docs index, None when not built.
        quarantine_report: the cycle's ``quarantine.json``, None when nothing was ever quarantined or the run failed.
        wall_s: seconds the run took.
    """

    stage: str
    cycle: str
    run_at: str
    status: Literal["passed", "failed"]
    error: str | None
    checked: int
    passed: int
    quarantined: int
    share: float
    max_quarantine_share: float
    reasons: dict[str, int]
    quarantined_images: dict[str, list[str]]
    orphan_labels: list[str]
    suites: dict[str, dict[str, Any]]
    prediction_log: dict[str, int]
    test_images: int
    images_report: str
    data_docs: str | None = None
    quarantine_report: str | None = None
    wall_s: float = 0.0
