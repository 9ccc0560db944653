"""``reports/predict.json``: which model version predicted which production batches, with what artifact.

The predict stage writes a :class:`PredictResult` with :func:`tasks.contracts.reports.write_report`; readers use
``load_report(reports, "predict")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.contracts.reports.export import FALLBACK_TARGET


@dataclass(frozen=True)
class BatchResult:
    """Outcome of predicting one batch.

    Attributes:
        batch, date: the batch and its date.
        images: images the champion predicted (error rows not counted).
        detections: boxes over those images.
        skipped: image path -> why it has no prediction (each is an error row in the log).
        files: the champion's log files written.
        ms_per_image: mean model latency over the predicted images.
        errors: error kind (``unreadable``, ``decode``, ``inference``, ``timeout``) -> images; absent kinds left out.
        shadow_images: images given to the shadow version (its error rows included; 0 when shadow is off).
        shadow_files: the shadow version's log files written (``...__shadow.parquet``).
    """

    batch: str
    date: str
    images: int
    detections: int
    skipped: dict[str, str]
    files: list[str]
    ms_per_image: float
    errors: dict[str, int] = field(default_factory=dict)
    shadow_images: int = 0
    shadow_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PredictResult:
    """What ``reports/predict.json`` holds.

    Attributes:
        model_name, model_version, alias: the version that ran and the alias it was resolved from.
        batches: one result per predicted batch.
        target, precision, artifact: what ran (the selected export artifact, or the ONNX fallback).
        fallback: why the ONNX file ran instead of the selected artifact (``None``: no fallback).
        wall_s: seconds the predictions took.
        shadow: the version run in shadow (``predict.shadow``): ``alias``, ``version``, ``images`` (given to it,
            over all batches), ``target``, ``precision`` and ``share``; ``None`` when shadow was off, its alias
            named no other version or it could not be opened.
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
    shadow: dict[str, Any] | None = None
