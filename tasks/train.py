"""Stage ``train``: fit a detector of the configured model family on the training set.

Contract:
    inputs: the merged data ``<base.paths.merged>/{manifest.parquet,shards/}`` when the merge stage has merged
        production labels (:func:`tasks.contracts.merged_manifest.use_merged`), else YOLO ``base.paths.train`` and
        ``base.paths.val``; optional warm-start checkpoint ``train.weights``, else the loop's parent checkpoint
        ``<models>/parent/best.pt`` (``cycle.warm_start``);
    params: ``base`` (classes, imgsz, device, seed, paths), ``train`` (with the family's ``train.<family>``),
        ``merge.enabled``, ``cycle.warm_start``, ``cycle.epochs``;
    outputs: ``<models>/train/best.pt``, ``<reports>/train.json`` (:class:`~tasks.contracts.reports.train.TrainResult`:
        final metrics, MLflow run id, family and license, the checkpoint's ``checkpoint_sha256``: what lets later
        stages open it, :mod:`tasks.contracts.checkpoints`), ``<reports>/train_epochs.csv`` (per-epoch metrics) and
        its plot ``<reports>/train.png``;
    side effects: an MLflow run (params, per-epoch metrics, artifacts) in the ``registry`` experiment; the
        family's scratch folder under ``<models>/train/`` (Ultralytics: ``ultralytics/``); the dataset view
        ``<models>/train/dataset/`` (hard-linked source sets, or the extracted-shard cache + image lists) with
        ``dataset.json`` (which data).

The model family (:func:`tasks.models.family`, chosen by ``train.family``) trains; this stage prepares the data,
keeps the run's records and hands the checkpoint on. YOLO (Ultralytics) is the first family, trained offline from
a model yaml or warm-started from a checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.adapters import mlflow as mlflow_adapter
from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts.checkpoints import CHECKPOINT_SHA256
from tasks.contracts.reports import write_report
from tasks.contracts.reports.train import TrainResult
from tasks.contracts.train_files import dataset_record_path, dataset_views, parent_path
from tasks.core.hashing import file_sha256
from tasks.io import write_bytes_atomic
from tasks.models import family
from tasks.models.base import TrainData

log = logging.getLogger(__name__)

EPOCHS_TABLE = "train_epochs.csv"


def _dataset_views(params: Params, root: Path) -> TrainData:
    """The training data in YOLO layout under ``root`` (:func:`~tasks.contracts.train_files.dataset_views`)."""
    train, val = dataset_views(params, root)
    return TrainData(train=train, val=val, classes=tuple(params.base.classes))


def write_epochs(rows: Sequence[dict[str, float]], path: Path) -> Path | None:
    """Write the per-epoch metrics as CSV (``epoch`` first, then every metric name seen); ``None`` if no rows."""
    if not rows:
        return None
    columns = ["epoch", *sorted({key for row in rows for key in row} - {"epoch"})]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes_atomic(path, buffer.getvalue().encode())


def plot_curves(rows: Sequence[dict[str, float]], out_png: Path) -> Path | None:
    """Plot per-epoch training losses and validation mAP (family-neutral names); ``None`` if no rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    names = sorted({key for row in rows for key in row})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in [n for n in names if n.startswith("train/") and n.endswith("_loss")]:
        left.plot(epochs, [row.get(name, float("nan")) for row in rows], label=name.removeprefix("train/"))
    left.set(title="training loss", xlabel="epoch")
    left.legend()
    for name in [n for n in ("val/mAP50-95", "val/mAP50") if n in names]:
        right.plot(  # markers: with train.yolo.val_every > 1 the validated epochs are points apart
            epochs, [row.get(name, float("nan")) for row in rows], marker="o", label=name.removeprefix("val/")
        )
    right.set(title="validation", xlabel="epoch", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def effective_params(params: Params) -> Params:
    """``params`` with the warm start applied: ``train.weights`` if set, else the loop's parent checkpoint.

    With ``cycle.warm_start`` and a checkpoint at :func:`~tasks.contracts.train_files.parent_path` (the champion a
    cycle fetched), training starts from it for ``cycle.epochs``; the parent folder is a DVC dependency of the stage,
    so ``dvc repro`` after a cycle retrains the same candidate. Without one (before the first cycle) training starts
    from the architecture ``train.model``.
    """
    cfg = params.train
    parent = parent_path(params)
    if cfg.weights is not None or not params.cycle.warm_start or not parent.is_file():
        return params
    update = {"weights": parent, "epochs": params.cycle.epochs or cfg.epochs}
    return params.model_copy(update={"train": cfg.model_copy(update=update)})


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"yolo": {"lr0": 0.01}}`` -> ``{"yolo.lr0": 0.01}`` (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run(params: Params) -> TrainResult:
    """Train the configured family; write ``best.pt``, ``reports/train.json`` and the per-epoch table and plot."""
    params = effective_params(params)
    model = family(params)
    out_dir = params.base.paths.models / "train"
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = params.base.paths.reports
    start = time.perf_counter()
    base_weights = str(params.train.weights) if params.train.weights else f"scratch:{params.train.model}"
    # which bytes it started from: the license record tells the project's checkpoints from third-party ones by it
    base_sha256 = file_sha256(params.train.weights) if params.train.weights and params.train.weights.is_file() else None
    rows: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        rows.append({"epoch": epoch} | metrics)
        mlflow_adapter.log_epoch(epoch, metrics)

    weights_license = model.weights_license(params).license
    tags = {"stage": "train", "model_family": model.name, "license": weights_license, "base_weights": base_weights}
    with mlflow_adapter.mlflow_run(params, run_name=f"train-{model.name}", tags=tags) as run_id:
        mlflow_adapter.log_params(
            _flat(params.train.model_dump(mode="json")) | {"imgsz": params.base.imgsz, "seed": params.base.seed}
        )
        data = _dataset_views(params, dataset_record_path(params).parent)
        # a warm start opens only a checkpoint the project recorded: locally, or as a registered version's
        registered = mlflow_adapter.checkpoint_hashes(params) if params.train.weights is not None else {}
        fitted = model.fit(params, data=data, out_dir=out_dir, on_epoch=on_epoch, registered=registered)
        target = out_dir / "best.pt"
        tmp = target.with_name(".best.pt.tmp")
        shutil.copyfile(fitted.checkpoint, tmp)
        checkpoint_sha256 = file_sha256(tmp)  # the record that lets later stages open it (contracts.checkpoints)
        tmp.replace(target)
        mlflow_adapter.set_run_tag(CHECKPOINT_SHA256, checkpoint_sha256)
        extras = [write_epochs(rows, reports / EPOCHS_TABLE), plot_curves(rows, reports / "train.png")]
        kept = [target, *fitted.artifacts, *(p for p in extras if p is not None)]
        mlflow_adapter.log_artifacts([p for p in kept if p.exists()], "train")
    result = TrainResult(
        weights=str(target),
        family=model.name,
        license=weights_license,
        base_weights=base_weights,
        epochs=params.train.epochs,
        final_metrics=fitted.metrics,
        mlflow_run_id=run_id,
        wall_s=round(time.perf_counter() - start, 2),
        checkpoint_sha256=checkpoint_sha256,
        base_weights_sha256=base_sha256,
    )
    write_report(reports, "train", result, params)
    log.info("trained %s for %d epochs in %.0f s -> %s", model.name, result.epochs, result.wall_s, target)
    return result


def main(argv: list[str] | None = None) -> TrainResult:
    """``python -m tasks.train [--params P ...]``: prints ``{"weights": ..., "mlflow_run_id": ...}``."""
    return stage_main(
        "train",
        __doc__,
        run=lambda params, args: run(params),
        summary=lambda r: json.dumps({"weights": r.weights, "mlflow_run_id": r.mlflow_run_id}),
        argv=argv,
    )


if __name__ == "__main__":
    main()
