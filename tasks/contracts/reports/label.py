"""``reports/label.json``: what one run of the label stage queued and collected for a cycle.

The label stage writes a :class:`LabelResult` with :func:`tasks.contracts.reports.write_report`; the flow and the
cycle stage read it back with ``load_report(reports, "label")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LabelResult:
    """What ``reports/label.json`` holds.

    Attributes:
        cycle: the labeling cycle.
        backend: ``labelstudio`` or ``files``.
        project_id: the Label Studio project (None for the files backend).
        imported: tasks created by this run.
        already_imported: manifest images already queued earlier (ledger) or already tasks of the project.
        collected: annotations converted to YOLO labels by this run (new or changed since the last run).
        skipped: tasks this run found skipped/cancelled.
        pending: tasks of this cycle still waiting for an annotation.
        labeled: images of this cycle with YOLO labels (all runs).
        min_labeled: ``label.min_labeled``.
        waiting: fewer than ``min_labeled`` of this cycle labeled while some are still pending.
        labels_dir: ``<base.paths.labels>/<cycle>``.
        ledger: the ledger file.
        rejected: regions left out of label files, one reason each (zero-size, outside the image, ...).
        without_predictions: imported images the prediction log had no rows for (no pre-annotation).
        missing: manifest images deleted since sampling, one message each (left out; a re-run tries them again).
        wall_s: seconds the run took.
    """

    cycle: str
    backend: str
    project_id: int | None
    imported: int
    already_imported: int
    collected: int
    skipped: int
    pending: int
    labeled: int
    min_labeled: int
    waiting: bool
    labels_dir: str
    ledger: str
    rejected: list[str] = field(default_factory=list)
    without_predictions: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wall_s: float = 0.0
