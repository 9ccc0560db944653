"""``reports/train.json``: what the train stage produced (a DVC metrics file).

The train stage writes a :class:`TrainResult` with :func:`tasks.contracts.reports.write_report`; the registry
stage reads it back with ``load_report(reports, "train")`` for the checkpoint, the run and the lineage tags.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainResult:
    """The checkpoint a training run handed on, and where it came from.

    Attributes:
        weights: the best checkpoint, ``<models>/train/best.pt``.
        family: the model family that trained it (``train.family``).
        license: SPDX id of the license its weights fall under (from the family).
        base_weights: the warm-start checkpoint, or ``scratch:<train.model>``.
        epochs: epochs trained.
        final_metrics: the checkpoint's final validation metrics (``val/mAP50-95``, ``val/mAP50``, ...).
        mlflow_run_id: the MLflow run holding params, per-epoch metrics and artifacts.
        wall_s: seconds the stage took.
        checkpoint_sha256: SHA-256 of ``weights`` as written: the record that lets the project open it again
            (:mod:`tasks.contracts.checkpoints`); None in reports written before checkpoints were hashed.
        base_weights_sha256: SHA-256 of the warm-start checkpoint; None from scratch (and in older reports).
    """

    weights: str
    family: str
    license: str
    base_weights: str
    epochs: int
    final_metrics: dict[str, float]
    mlflow_run_id: str
    wall_s: float
    checkpoint_sha256: str | None = None
    base_weights_sha256: str | None = None
