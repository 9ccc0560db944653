"""The YOLO family: Ultralytics, trained offline from a model yaml or warm-started from a ``.pt`` checkpoint.

Everything that knows Ultralytics lives here (and only here imports it): its offline settings, the arguments of
its ``train()``, the per-epoch callback, its ONNX export, a ``.pt`` checkpoint run as a plain ``nn.Module``
(:class:`TorchDetector`), and where its detection head sits in an exported graph. Its own params are
``train.yolo`` (:class:`tasks.config.YoloParams`). Ultralytics is imported inside functions, after
:func:`configure_ultralytics`, so importing this module stays cheap.

Every ``YOLO(<.pt>)`` here is preceded by :func:`tasks.contracts.checkpoints.require_trusted`: an Ultralytics
checkpoint is a pickle (no ``weights_only=True``), so a file whose SHA-256 the project did not record is refused
before it is opened. The runtime loader (:data:`CHECKPOINT_LOADER`, called as ``load_detector(path, settings)``)
takes the params to trust from :func:`tasks.models.base.trust_params`, which :func:`tasks.models.family` calls
for every lookup.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from tasks.config import ConfigError, Params
from tasks.contracts.checkpoints import require_trusted, trusted_checkpoints
from tasks.io import write_bytes_atomic
from tasks.models.base import (
    EpochLogger,
    Fitted,
    InferenceHints,
    TrainData,
    WeightsLicense,
    declared_family,
    trusted_in_context,
)
from tasks.runtimes.detectors import InferenceSettings, Loader

log = logging.getLogger(__name__)

# Ultralytics' own integrations: off, the loop logs to MLflow itself and runs offline
_SETTINGS_OFF = ("mlflow", "wandb", "tensorboard", "clearml", "comet", "dvc", "hub", "neptune", "raytune", "sync")
_MODULE_PREFIX = re.compile(r"^/?model\.(\d+)/")


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


def _write_data_yaml(path: Path, data: TrainData) -> Path:
    """Ultralytics' dataset file: the train/val entries and the class names."""
    content = {
        "path": str(Path.cwd()),
        "train": str(data.train),
        "val": str(data.val),
        "names": dict(enumerate(data.classes)),
    }
    return write_bytes_atomic(path, yaml.safe_dump(content).encode())


def head_prefix(node_names: Iterable[str]) -> str:
    """The name prefix of the detection head: ``/model.<N>/`` with the highest module index ``N``.

    Ultralytics names every exported node after the module that produced it and the head is the last module,
    so this holds for every model size without a list of names.

    Raises:
        ValueError: no node carries an Ultralytics module prefix (the head cannot be located).
    """
    indices = [int(m.group(1)) for name in node_names if (m := _MODULE_PREFIX.match(name))]
    if not indices:
        raise ValueError(
            "no node name starts with '/model.<N>/': cannot locate the detection head "
            "(set export.quantization.keep_head_fp32: false to quantize every node)"
        )
    return f"/model.{max(indices)}/"


class TorchDetector:
    """An Ultralytics ``.pt`` checkpoint run as a plain ``nn.Module`` (no Ultralytics predictor)."""

    def __init__(self, path: Path, settings: InferenceSettings) -> None:
        import torch

        configure_ultralytics()
        from ultralytics import YOLO

        self.path, self.settings = path, settings
        torch.set_num_threads(settings.threads)
        try:
            net: Any = YOLO(str(path)).model
        except Exception as exc:  # Ultralytics raises many types for a bad checkpoint
            raise ValueError(f"{path}: not a loadable Ultralytics checkpoint ({exc})") from None
        net = net.float().eval().to(settings.device)
        if getattr(net.model[-1], "one2one_cv2", None) is not None:
            # both heads are trained; fusing keeps the one chosen here, as the export does (nms=False or None)
            net.end2end = settings.nms_free
        self.net = net.fuse(verbose=False) if hasattr(net, "fuse") else net
        self._torch = torch

    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with self._torch.inference_mode():
            out = self.net(self._torch.from_numpy(batch).to(self.settings.device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float().cpu().numpy()


def _is_checkpoint(path: Path) -> bool:
    # a .pt another family declares (tasks.models.base.declared_family) is that family's, never unpickled here
    return path.suffix == ".pt" and declared_family(path) is None


def open_checkpoint(path: Path, settings: InferenceSettings) -> TorchDetector:
    """A :class:`TorchDetector` for a checkpoint the project recorded (:func:`~tasks.models.base.trust_params`).

    Raises:
        UntrustedCheckpointError: its SHA-256 is in no record of the project nor in ``train.trusted_checkpoints``;
            the file was not opened.
    """
    require_trusted(path, trusted_in_context())
    return TorchDetector(path, settings)


CHECKPOINT_LOADER: Loader = (_is_checkpoint, open_checkpoint)


class YoloFamily:
    """Ultralytics YOLO (YOLO26 by default): AGPL-3.0 weights, ``.pt`` checkpoints, ``/model.<N>/`` node names."""

    name = "yolo"
    package = "ultralytics"
    loaders: Sequence[Loader] = (CHECKPOINT_LOADER,)

    def weights_license(self, params: Params) -> WeightsLicense:
        """AGPL-3.0 for every size: Ultralytics reads weights trained with its code as covered by its license
        (its Enterprise license lifts that: a ``gate.license.exceptions`` entry names the agreement)."""
        return WeightsLicense("AGPL-3.0-only", f"family yolo ({params.train.model}): Ultralytics' AGPL-3.0 terms")

    def fit(
        self,
        params: Params,
        *,
        data: TrainData,
        out_dir: Path,
        on_epoch: EpochLogger,
        registered: Mapping[str, str] | None = None,
    ) -> Fitted:
        """Train with Ultralytics; ``on_epoch`` gets each epoch's validation metrics, losses and learning rates.

        A warm start's ``train.weights`` is opened only when recorded (:func:`trusted_checkpoints` with the
        registry's ``registered`` hashes).
        """
        if (why := params.train.yolo.ignored_on(params.base.device)) is not None:
            raise ConfigError(why)
        cfg = params.train
        if cfg.weights is not None:
            require_trusted(cfg.weights, trusted_checkpoints(params, registered=registered))
        configure_ultralytics()
        from ultralytics import YOLO

        data_yaml = _write_data_yaml(out_dir / "data.yaml", data)
        model = YOLO(str(cfg.weights) if cfg.weights else cfg.model)

        every = cfg.yolo.val_every

        def _choose_validation(trainer: Any) -> None:  # runs just before Ultralytics' "validate now?" test
            trainer.args.val = validates_after(trainer.epoch, epochs=trainer.epochs, every=every)
            # checkpoints (last.pt, best.pt: ~1-2 s a write on 2 cores) only after a validated epoch, the only
            # ones that can become best.pt; nothing resumes from an unvalidated epoch's last.pt
            trainer.args.save = trainer.args.val
            if not trainer.args.val:
                trainer.fitness = None  # an unvalidated epoch never overwrites best.pt with the last score

        def _epoch_end(trainer: Any) -> None:
            if trainer.epoch >= cfg.epochs:  # Ultralytics' final validation of best.pt calls this once more
                return
            metrics = _epoch_metrics(trainer)
            if not validates_after(trainer.epoch, epochs=trainer.epochs, every=every):  # val/: an earlier epoch's
                metrics = {key: value for key, value in metrics.items() if not key.startswith("val/")}
            on_epoch(trainer.epoch + 1, metrics)

        model.add_callback("on_train_epoch_end", _choose_validation)
        model.add_callback("on_fit_epoch_end", _epoch_end)
        model.train(**ultralytics_args(params, data_yaml=data_yaml, scratch=out_dir / "ultralytics"))
        trainer: Any = model.trainer
        best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
        results = best.parent.parent / "results.csv"  # Ultralytics' own per-epoch table
        return Fitted(best, neutral_metrics(trainer.metrics), (results,) if results.is_file() else ())

    def export_onnx(self, checkpoint: Path, target: Path, *, params: Params) -> None:
        """Ultralytics' ONNX export, no NMS inside; the head ``train.yolo.nms_free`` chooses."""
        configure_ultralytics()
        from ultralytics import YOLO

        cfg = params.export
        scratch = target.parent / ".onnx-build"  # Ultralytics writes beside its input: keep that out of sight
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            shutil.copyfile(checkpoint, scratch / "model.pt")
            require_trusted(scratch / "model.pt", trusted_checkpoints(params))  # the very bytes opened next
            produced = YOLO(str(scratch / "model.pt")).export(
                format="onnx",
                opset=cfg.opset,
                dynamic=cfg.dynamic,
                simplify=cfg.simplify and not cfg.dynamic,  # dynamic: simplified once, after the size is pinned
                imgsz=params.base.imgsz,
                nms=False if params.train.yolo.nms_free else None,  # False keeps the one-to-one head
                device=params.base.device,
                verbose=False,
            )
            Path(produced).replace(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def inference_hints(self, params: Params) -> InferenceHints:
        return InferenceHints(nms_free=params.train.yolo.nms_free)

    def head_nodes(self, node_names: Sequence[str]) -> frozenset[str]:
        """Every node under the last module's prefix (:func:`head_prefix`); leading ``/`` ignored."""
        prefix = head_prefix(node_names).lstrip("/")
        return frozenset(name for name in node_names if name.lstrip("/").startswith(prefix))
