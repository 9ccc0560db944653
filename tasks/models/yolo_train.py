"""The YOLO family's training helpers: Ultralytics' offline settings, its ``train()`` arguments, epoch callbacks.

Shared by the family's own training (:mod:`tasks.models.yolo`) and the fine-tune after pruning
(:mod:`tasks.models.yolo_prune`). Ultralytics is imported inside functions, after :func:`configure_ultralytics`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tasks.config import Params
from tasks.io import write_bytes_atomic
from tasks.models.base import EpochLogger, TrainData

log = logging.getLogger(__name__)

# Ultralytics' own integrations: off, the loop logs to MLflow itself and runs offline
_SETTINGS_OFF = ("mlflow", "wandb", "tensorboard", "clearml", "comet", "dvc", "hub", "neptune", "raytune", "sync")


def configure_ultralytics() -> None:
    """Turn off Ultralytics' own integrations (after :func:`tasks.env.apply_env` set its config dir)."""
    from ultralytics.utils import SETTINGS

    changes = {key: False for key in _SETTINGS_OFF if key in SETTINGS and SETTINGS[key] is not False}
    if changes:
        SETTINGS.update(changes)
        log.debug("ultralytics settings updated: %s", changes)


def ultralytics_args(params: Params, *, data_yaml: Path, scratch: Path) -> dict[str, Any]:
    """The arguments of Ultralytics' ``train()``: ``pretrained`` keeps a warm-start checkpoint's weights."""
    cfg, yolo = params.train, params.train.yolo
    args: dict[str, Any] = {
        "data": str(data_yaml),
        "epochs": cfg.epochs,
        "imgsz": params.base.imgsz,
        "batch": cfg.batch,
        "device": params.base.device,
        "workers": yolo.workers,
        "seed": params.base.seed,
        "deterministic": True,
        "optimizer": yolo.optimizer,
        "patience": cfg.patience or cfg.epochs,
        "project": str(scratch.resolve()),
        "name": "run",
        "exist_ok": True,
        "plots": False,
        "val": True,  # switched per epoch by validates_after (train.yolo.val_every)
        "cache": "ram" if yolo.cache_ram else False,
        "amp": params.base.device != "cpu",
        "verbose": False,
        # False builds the architecture from the yaml (scratch); True keeps the loaded checkpoint (warm start)
        "pretrained": cfg.weights is not None,
    }
    if yolo.lr0 is not None:  # config refuses lr0 with optimizer "auto", which would ignore it
        args["lr0"] = yolo.lr0
    return args | yolo.extra_args


def neutral_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """Ultralytics' metric names as the family-neutral ones: ``metrics/mAP50-95(B)`` -> ``val/mAP50-95``."""
    return {key.replace("(B)", "").replace("metrics/", "val/"): float(v) for key, v in (metrics or {}).items()}


def validates_after(epoch: int, *, epochs: int, every: int) -> bool:
    """Whether the val-set pass runs after ``epoch`` (0-based) of ``epochs``: every ``every``-th and the last."""
    return (epoch + 1) % every == 0 or epoch + 1 >= epochs


def _epoch_metrics(trainer: Any) -> dict[str, float]:
    """Validation metrics, mean training losses and learning rates of the epoch that just ended."""
    metrics = neutral_metrics(trainer.metrics)
    losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss is not None else {}  # "train/box_loss", ...
    metrics.update({key if key.startswith("train/") else f"train/{key}": float(v) for key, v in losses.items()})
    metrics.update({key if key.startswith("lr/") else f"lr/{key}": float(v) for key, v in trainer.lr.items()})
    return metrics


def epoch_callbacks(
    params: Params, *, epochs: int, on_epoch: EpochLogger
) -> tuple[Callable[[Any], None], Callable[[Any], None]]:
    """Ultralytics callbacks ``(on_train_epoch_end, on_fit_epoch_end)`` of a run of ``epochs``.

    The first chooses whether the val pass (and the checkpoint writes) follow this epoch (``train.yolo.val_every``);
    the second hands the epoch's metrics to ``on_epoch`` (no ``val/`` numbers after an unvalidated epoch).
    """
    every = params.train.yolo.val_every

    def choose(trainer: Any) -> None:  # runs just before Ultralytics' "validate now?" test
        trainer.args.val = validates_after(trainer.epoch, epochs=trainer.epochs, every=every)
        # checkpoints (last.pt, best.pt: ~1-2 s a write on 2 cores) only after a validated epoch, the only
        # ones that can become best.pt; nothing resumes from an unvalidated epoch's last.pt
        trainer.args.save = trainer.args.val
        if not trainer.args.val:
            trainer.fitness = None  # an unvalidated epoch never overwrites best.pt with the last score

    def epoch_end(trainer: Any) -> None:
        if trainer.epoch >= epochs:  # Ultralytics' final validation of best.pt calls this once more
            return
        metrics = _epoch_metrics(trainer)
        if not validates_after(trainer.epoch, epochs=trainer.epochs, every=every):  # val/: an earlier epoch's
            metrics = {key: value for key, value in metrics.items() if not key.startswith("val/")}
        on_epoch(trainer.epoch + 1, metrics)

    return choose, epoch_end


def write_data_yaml(path: Path, data: TrainData) -> Path:
    """Ultralytics' dataset file: the train/val entries and the class names."""
    content = {
        "path": str(Path.cwd()),
        "train": str(data.train),
        "val": str(data.val),
        "names": dict(enumerate(data.classes)),
    }
    return write_bytes_atomic(path, yaml.safe_dump(content).encode())
