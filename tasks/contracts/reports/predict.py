"""``reports/predict.json``: which model version predicted which production batches, with what artifact.

The predict stage writes a :class:`PredictResult` with :func:`tasks.contracts.reports.write_report`; readers use
``load_report(reports, "predict")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.contracts.reports.export import FALLBACK_TARGET


@dataclass(frozen=True)
class BatchResult:
    """Outcome of predicting one batch (``skipped``: unreadable image -> why)."""

    batch: str
    date: str
    images: int
    detections: int
    skipped: dict[str, str]
    files: list[str]
    ms_per_image: float


@dataclass(frozen=True)
class PredictResult:
    """What ``reports/predict.json`` holds.

    Attributes:
        model_name, model_version, alias: the version that ran and the alias it was resolved from.
        batches: one result per predicted batch.
        target, precision, artifact: what ran (the selected export artifact, or the ONNX fallback).
        fallback: why the ONNX file ran instead of the selected artifact (``None``: no fallback).
        wall_s: seconds the predictions took.
    """

    model_name: str
    model_version: str
    alias: str
    batches: list[BatchResult] = field(default_factory=list)
    target: str = FALLBACK_TARGET
    precision: str = "fp32"
    artifact: str = ""
    fallback: str | None = None
    wall_s: float = 0.0
