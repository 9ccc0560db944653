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

from tasks.config import ConfigError, Params
from tasks.contracts.checkpoints import require_trusted, trusted_checkpoints
from tasks.models.base import (
    EpochLogger,
    Fitted,
    InferenceHints,
    TrainData,
    WeightsLicense,
    declared_family,
    trusted_in_context,
)
from tasks.models.pruning import Prunable
from tasks.models.yolo_train import (  # noqa: F401  (re-exported: the family's trainer helpers)
    configure_ultralytics,
    epoch_callbacks,
    neutral_metrics,
    ultralytics_args,
    validates_after,
    write_data_yaml,
)
from tasks.runtimes.detectors import InferenceSettings, Loader

log = logging.getLogger(__name__)

_MODULE_PREFIX = re.compile(r"^/?model\.(\d+)/")


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

        data_yaml = write_data_yaml(out_dir / "data.yaml", data)
        model = YOLO(str(cfg.weights) if cfg.weights else cfg.model)

        choose, epoch_end = epoch_callbacks(params, epochs=cfg.epochs, on_epoch=on_epoch)
        model.add_callback("on_train_epoch_end", choose)
        model.add_callback("on_fit_epoch_end", epoch_end)
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

    def prunable(self, checkpoint: Path, params: Params) -> Prunable:
        """C2f blocks split in two convolutions, head outputs and attention kept (:mod:`tasks.models.yolo_prune`)."""
        from tasks.models.yolo_prune import prunable

        return prunable(checkpoint, params)

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
        """Ultralytics' trainer around the pruned module, with logit distillation from ``teacher``."""
        from tasks.models.yolo_prune import fine_tune

        return fine_tune(params, module=module, teacher=teacher, data=data, out_dir=out_dir, on_epoch=on_epoch)
