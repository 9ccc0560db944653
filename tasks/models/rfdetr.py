"""The RF-DETR family: Roboflow's ``rfdetr`` (DINOv2 backbone + LW-DETR decoder), trained offline from scratch or
warm-started from a checkpoint the project owns.

Everything that knows ``rfdetr`` lives in this module and its two neighbours (and only they import it): here the
family and its training (the arguments of rfdetr's ``train()``, the per-epoch callback hooked into its Lightning
trainer, the warm start); in :mod:`tasks.models.rfdetr_net` the sizes that build without a download (with the
license of their weights), the project's checkpoint format and the one network both the runtime and the ONNX export
run; in :mod:`tasks.models.rfdetr_coco` the COCO view of the project's YOLO data.
Its own params are ``train.rfdetr`` (:class:`tasks.config.sections.RfdetrParams`); ``train.model`` reads
``rfdetr-<size>``. ``rfdetr`` and ``torch`` are imported inside functions, so importing this module stays cheap.

Checkpoints: ``rfdetr`` writes ~120 MB ``.pth`` files per best model and a ~480 MB Lightning ``last.ckpt`` per
epoch; the family writes no ``last.ckpt``, keeps the best weights as one project checkpoint
(:func:`tasks.models.rfdetr_net.write_checkpoint`) and deletes rfdetr's files.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.config import Params
from tasks.contracts.checkpoints import require_trusted, trusted_checkpoints
from tasks.models.base import EpochLogger, Fitted, InferenceHints, TrainData, WeightsLicense, declared_family
from tasks.models.pruning import NotPrunable, Prunable
from tasks.models.rfdetr_coco import write_coco_view
from tasks.models.rfdetr_net import (
    CHECKPOINT_LOADER,
    NAME,
    SIZES,
    TOP_K,
    CheckpointError,
    build_model,
    decoded_from_checkpoint,
    read_checkpoint,
    size_of,
    write_checkpoint,
    write_metadata,
)
from tasks.runtimes.detectors import Loader

__all__ = ["CHECKPOINT_LOADER", "SIZES", "TOP_K", "CheckpointError", "RfdetrFamily"]

log = logging.getLogger(__name__)

NOT_PRUNABLE = (
    "family rfdetr cannot be pruned here: its decoder's deformable attention ties each layer's sampling offsets "
    "and weights to heads x levels x points through reshapes the dependency graph (torch-pruning) cannot follow, "
    "and its DINOv2 backbone would need head-wise attention pruning; the compress stage skips it"
)


def rfdetr_args(params: Params, *, dataset_dir: Path, output_dir: Path) -> dict[str, Any]:
    """The arguments of rfdetr's ``train()`` (no TensorBoard, W&B or MLflow of its own: the stage logs to MLflow)."""
    cfg, own = params.train, params.train.rfdetr
    args: dict[str, Any] = {
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch,
        "resolution": params.base.imgsz,
        "device": params.base.device,
        "seed": params.base.seed,
        "num_workers": own.workers,
        "progress_bar": own.progress_bar,
        "class_names": list(params.base.classes),
        "multi_scale": False,  # the network runs at base.imgsz only (letterbox); extra_args may turn it on
        "tensorboard": False,
        "wandb": False,
        "mlflow": False,
        "run_test": False,
    }
    if cfg.patience:
        args |= {"early_stopping": True, "early_stopping_patience": cfg.patience}
    if own.lr is not None:
        args["lr"] = own.lr
    if own.lr_encoder is not None:
        args["lr_encoder"] = own.lr_encoder
    return args | own.extra_args


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def neutral_metrics(logged: Mapping[str, Any]) -> dict[str, float]:
    """rfdetr's logged metrics under the family-neutral names: ``val/mAP_50_95`` -> ``val/mAP50-95``, ...

    Validation: ``val/mAP50-95``, ``val/mAP50``, ``val/precision``, ``val/recall`` (of the EMA weights when rfdetr
    keeps them: it mirrors their score onto these names), ``val/ema_mAP50-95``; training losses end in ``_loss``
    like every family's (``train/loss`` -> ``train/total_loss``, ``train/loss_ce`` -> ``train/ce_loss``,
    ``train/loss_bbox_aux`` -> ``train/bbox_aux_loss``, ...); ``train/lr`` becomes ``lr/pg0``.
    """
    renamed = {
        "val/mAP_50_95": "val/mAP50-95",
        "val/mAP_50": "val/mAP50",
        "val/mAP_75": "val/mAP75",
        "val/ema_mAP_50_95": "val/ema_mAP50-95",
        "val/precision": "val/precision",
        "val/recall": "val/recall",
        "val/loss": "val/loss",
        "train/lr": "lr/pg0",
    }
    out: dict[str, float] = {}
    for key, value in logged.items():
        name = renamed.get(key)
        if name is None and key == "train/loss":
            name = "train/total_loss"
        elif name is None and key.startswith("train/loss_"):
            name = f"train/{key.removeprefix('train/loss_')}_loss"
        number = _number(value)
        if name is not None and number is not None:
            out[name] = number
    return out


def _epoch_callback(on_epoch: EpochLogger, *, epochs: int, rows: list[dict[str, float]]) -> Any:
    """A Lightning callback: after each training epoch (its validation included), the metrics to ``on_epoch``."""
    from pytorch_lightning import Callback

    class EpochMetrics(Callback):
        def __init__(self) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if getattr(trainer, "sanity_checking", False):
                return
            epoch = int(trainer.current_epoch) + 1
            metrics = neutral_metrics({k: v for k, v in trainer.callback_metrics.items()})
            rows.append({"epoch": float(epoch)} | metrics)
            log.info(
                "rfdetr epoch %d/%d: val/mAP50-95 %s, train/total_loss %s (%.0f s)",
                epoch,
                epochs,
                f"{metrics['val/mAP50-95']:.4f}" if "val/mAP50-95" in metrics else "-",
                f"{metrics['train/total_loss']:.3f}" if "train/total_loss" in metrics else "-",
                time.perf_counter() - self.started,
            )
            on_epoch(epoch, metrics)

    return EpochMetrics()


@contextlib.contextmanager
def _trainer_hook(callback: Any) -> Iterator[None]:
    """While training: rfdetr's ``build_trainer`` also gets ``callback``, and writes no ``last.ckpt``.

    rfdetr's ``train()`` takes no callbacks; it looks ``build_trainer`` up in ``rfdetr.training`` when it runs,
    so this wraps it there. The plain ``ModelCheckpoint`` (a ~480 MB ``last.ckpt`` with optimizer state, per
    epoch, for rfdetr's ``resume``) is dropped: the family resumes nothing, and keeps only the best weights.
    """
    import rfdetr.training as rf_training
    from pytorch_lightning.callbacks import ModelCheckpoint

    original = rf_training.build_trainer

    def build_trainer(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        callbacks: list[Any] = trainer.callbacks  # type: ignore[attr-defined]  # a plain list on the Trainer
        for plain in [c for c in callbacks if type(c) is ModelCheckpoint]:
            callbacks.remove(plain)
        callbacks.append(callback)
        return trainer

    rf_training.build_trainer = build_trainer
    try:
        yield
    finally:
        rf_training.build_trainer = original


def _final_metrics(rows: Sequence[dict[str, float]], source: str | None) -> dict[str, float]:
    """The metrics of the best epoch (highest ``val/mAP50-95``, EMA's when rfdetr kept the EMA weights)."""
    key = "val/ema_mAP50-95" if source == "ema" else "val/mAP50-95"
    scored = [row for row in rows if key in row or "val/mAP50-95" in row]
    if not scored:
        return {}
    best = max(scored, key=lambda row: row.get(key, row.get("val/mAP50-95", 0.0)))
    final = {k: v for k, v in best.items() if k.startswith("val/")}
    if key in best:
        final["val/mAP50-95"] = best[key]
    return final


def _warm_start_file(params: Params, out_dir: Path, registered: Mapping[str, str] | None) -> Path | None:
    """The file rfdetr's ``pretrain_weights`` reads for a warm start from ``train.weights``, or ``None``.

    A project checkpoint is checked (size, classes, resolution) and its weights handed over as rfdetr's
    ``{"model": state_dict}``; any other file (a checkpoint rfdetr saved) goes to rfdetr as it is.

    Raises:
        UntrustedCheckpointError: ``train.weights`` is in no record of the project.
        CheckpointError: it is truncated or corrupt, or made for another size, class list or resolution.
    """
    weights = params.train.weights
    if weights is None:
        return None
    require_trusted(weights, trusted_checkpoints(params, registered=registered))
    if declared_family(weights) != NAME:
        return Path(weights)
    ckpt = read_checkpoint(Path(weights))
    own = params.train.rfdetr
    wanted = {"size": own.size, "classes": list(params.base.classes), "resolution": params.base.imgsz}
    differ = {key: (ckpt[key], value) for key, value in wanted.items() if ckpt[key] != value}
    if differ:
        lines = ", ".join(f"{key} {have!r} (params: {want!r})" for key, (have, want) in differ.items())
        raise CheckpointError(f"{weights}: cannot warm-start from it: {lines}")
    import torch

    target = out_dir / "warm_start.pth"
    torch.save({"model": ckpt["state_dict"]}, target)
    return target


def _clean_output(folder: Path) -> None:
    """Delete rfdetr's checkpoints (~120 MB each, ~480 MB for a ``.ckpt``) once the family's own is written."""
    for path in folder.iterdir():
        if path.suffix in {".pth", ".ckpt"}:
            path.unlink()


class RfdetrFamily:
    """Roboflow RF-DETR: Apache-2.0 code and weights (Nano to Large), weights-only checkpoints, NMS-free output."""

    name = NAME
    package = "rfdetr"
    loaders: Sequence[Loader] = (CHECKPOINT_LOADER,)

    def weights_license(self, params: Params) -> WeightsLicense:
        """The license :data:`SIZES` states for ``train.rfdetr.size``."""
        size = params.train.rfdetr.size
        return WeightsLicense(SIZES[size].license, f"family rfdetr (size {size})")

    def fit(
        self,
        params: Params,
        *,
        data: TrainData,
        out_dir: Path,
        on_epoch: EpochLogger,
        registered: Mapping[str, str] | None = None,
    ) -> Fitted:
        """Train with rfdetr on a COCO view of ``data``; ``on_epoch`` gets each epoch's metrics.

        Scratch files in ``out_dir/rfdetr`` (the COCO view, rfdetr's ``metrics.csv`` and ``training_config.json``);
        rfdetr's own checkpoints are deleted once the best one is saved as the project's ``model.pt``.
        """
        size = size_of(params)
        scratch = out_dir / NAME
        output = scratch / "output"
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        warm = _warm_start_file(params, scratch, registered)
        dataset = write_coco_view(data, scratch / "dataset")
        model = build_model(
            params.train.rfdetr.size,
            num_classes=len(params.base.classes),
            resolution=params.base.imgsz,
            pretrain_weights=warm,
        )
        rows: list[dict[str, float]] = []
        callback = _epoch_callback(on_epoch, epochs=params.train.epochs, rows=rows)
        log.info(
            "rfdetr %s: %s, %d epochs at %d px",
            size.builder,
            f"from {params.train.weights}" if warm else "scratch",
            params.train.epochs,
            params.base.imgsz,
        )
        with _trainer_hook(callback):
            model.train(**rfdetr_args(params, dataset_dir=dataset, output_dir=output))
        best = output / "checkpoint_best_total.pth"
        source: str | None = None
        if best.is_file():
            import torch

            saved = torch.load(best, map_location="cpu", weights_only=True)
            state, source = saved["model"], saved.get("best_total_source")
        else:  # no validation ever improved nor was saved: the weights training ended with
            state = model.model.model.state_dict()
        checkpoint = write_checkpoint(
            scratch / "model.pt",
            state_dict=state,
            size=params.train.rfdetr.size,
            classes=params.base.classes,
            resolution=params.base.imgsz,
        )
        _clean_output(output)
        if warm is not None and warm.parent == scratch:
            warm.unlink(missing_ok=True)
        kept = tuple(p for p in (output / "metrics.csv", output / "training_config.json") if p.is_file())
        return Fitted(checkpoint, _final_metrics(rows, source), kept)

    def export_onnx(self, checkpoint: Path, target: Path, *, params: Params) -> None:
        """Trace :class:`Decoded` with ``torch.onnx`` (TorchScript exporter): ``images`` -> ``detections``."""
        import torch

        require_trusted(checkpoint, trusted_checkpoints(params))
        size_of(params)  # base.imgsz fits the architecture
        module, info = decoded_from_checkpoint(checkpoint)
        if info["resolution"] != params.base.imgsz:
            raise CheckpointError(
                f"{checkpoint}: trained at {info['resolution']} px, base.imgsz is {params.base.imgsz}: export at the "
                "training resolution"
            )
        cfg = params.export
        # a static graph keeps the example's batch: 1, what inference feeds it then
        example = torch.rand(2 if cfg.dynamic else 1, 3, params.base.imgsz, params.base.imgsz)
        tmp = target.with_name(f".{target.name}.tmp")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                input_names=["images"],
                output_names=["detections"],
                opset_version=cfg.opset,
                dynamic_axes={"images": {0: "batch"}, "detections": {0: "batch"}} if cfg.dynamic else None,
                do_constant_folding=True,
                dynamo=False,
            )
        write_metadata(tmp, info)
        tmp.replace(target)

    def inference_hints(self, params: Params) -> InferenceHints:
        return InferenceHints(nms_free=True)

    def head_nodes(self, node_names: Sequence[str]) -> frozenset[str]:
        """The class and box heads (``class_embed``, ``bbox_embed``, the encoder's ``enc_out_*``) and the box and
        score decoding after them: the ops of LW-DETR's own forward (``/net/<op>``: the box re-parametrisation) and
        of :class:`Decoded` (``/<op>``: normalisation, sigmoid, top-K, corners). Leading ``/`` optional.

        Raises:
            ValueError: no node of the heads in these names (a graph of another family, or names stripped).
        """
        heads = ("class_embed", "bbox_embed", "enc_out_class_embed", "enc_out_bbox_embed")
        found = set()
        for name in node_names:
            parts = name.strip("/").split("/")
            if any(part.split(".")[0] in heads for part in parts[:-1]):
                found.add(name)
        if not found:
            raise ValueError(
                "no node of class_embed/bbox_embed in the graph: cannot locate the RF-DETR heads "
                "(set export.quantization.keep_head_fp32: false to quantize every node)"
            )
        for name in node_names:
            parts = name.strip("/").split("/")
            if len(parts) == 1 or (len(parts) == 2 and parts[0] == "net"):
                found.add(name)
        return frozenset(found)

    def prunable(self, checkpoint: Path, params: Params) -> Prunable:
        """RF-DETR opts out of structured pruning.

        Raises:
            NotPrunable: always, with the reason.
        """
        raise NotPrunable(NOT_PRUNABLE)

    def fine_tune(
        self,
        params: Params,
        *,
        module: Any,
        teacher: Path | None,
        data: TrainData,
        out_dir: Path,
        on_epoch: EpochLogger,
    ) -> Fitted:
        """No fine-tune for pruned RF-DETR networks (:meth:`prunable` refuses first).

        Raises:
            NotPrunable: always, with the reason.
        """
        raise NotPrunable(NOT_PRUNABLE)
