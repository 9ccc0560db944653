"""RF-DETR's sizes, the project's RF-DETR checkpoint, and the one network the runtime and the export both run.

The exported layout is the one every family shares: input ``(B, 3, S, S)`` RGB in [0, 1] letterboxed to
``base.imgsz`` (:func:`tasks.runtimes.detectors.letterbox`), output ``(B, K, 6)`` rows ``x1, y1, x2, y2, score,
class`` in input pixels (the NMS-free layout :func:`tasks.runtimes.detectors.decode_output` reads). ImageNet
normalisation, the sigmoid, dropping the background logit, the top-K over query x class and the box conversion are
inside the network (:func:`decoded_module`), so ONNX Runtime, OpenVINO, quantization, the parity checks, the gate
and the monitor need no RF-DETR code.

The checkpoint is a weights-only ``torch.save`` dict whose first key is :data:`~tasks.models.base.FAMILY_KEY`
(``{"visionloop_family": "rfdetr", "size", "classes", "resolution", "state_dict"}``), opened with
``torch.load(weights_only=True)`` after :func:`tasks.contracts.checkpoints.require_trusted`, and told apart from an
Ultralytics ``.pt`` without unpickling (:func:`tasks.models.base.declared_family`). ``rfdetr``, ``torch`` and
``onnx`` are imported inside functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tasks.config import ConfigError, Params, VisionloopError
from tasks.contracts.checkpoints import require_trusted
from tasks.models.base import FAMILY_KEY, declared_family, trusted_in_context
from tasks.runtimes.detectors import InferenceSettings, Loader

NAME = "rfdetr"
# ImageNet statistics rfdetr normalises with (RFDETR.means / RFDETR.stds)
MEANS = (0.485, 0.456, 0.406)
STDS = (0.229, 0.224, 0.225)
# the exported layout's rows per image: rfdetr's own post-processing keeps 300 (its num_select)
TOP_K = 300


@dataclass(frozen=True)
class Size:
    """One RF-DETR size that builds offline.

    Attributes:
        builder: the ``rfdetr`` class (``RFDETRNano``, ...), constructed with ``pretrain_weights=None``.
        license: the license of its weights (SPDX), as the family states it.
        block: ``base.imgsz`` must be a multiple of it (patch size x windows of its backbone).
    """

    builder: str
    license: str
    block: int = 32


# Nano to Large: Apache-2.0 code and weights (rfdetr's metadata); XL/2XL live in rfdetr_plus under PML-1.0 and Base
# needs a DINOv2 download: both are refused when the params load (tasks.config.sections.RFDETR_HUB_SIZES)
SIZES: dict[str, Size] = {
    "nano": Size("RFDETRNano", "Apache-2.0"),
    "small": Size("RFDETRSmall", "Apache-2.0"),
    "medium": Size("RFDETRMedium", "Apache-2.0"),
    "large": Size("RFDETRLarge", "Apache-2.0"),
}


class CheckpointError(VisionloopError, ValueError):
    """An RF-DETR checkpoint that cannot be used: truncated, corrupt, or made for other classes or another size."""


def size_of(params: Params) -> Size:
    """The :class:`Size` ``train.rfdetr.size`` names, with ``base.imgsz`` checked against its block.

    Raises:
        ConfigError: ``base.imgsz`` is not a multiple of the size's block (32).
    """
    size = SIZES[params.train.rfdetr.size]
    check_resolution(params.base.imgsz, size, where="base.imgsz")
    return size


def check_resolution(resolution: int, size: Size, *, where: str) -> None:
    if resolution <= 0 or resolution % size.block:
        below, above = resolution // size.block * size.block, (resolution // size.block + 1) * size.block
        raise ConfigError(
            f"{where} {resolution}: RF-DETR ({size.builder}) needs a multiple of {size.block} "
            f"(e.g. {max(below, size.block)} or {above})"
        )


def build_model(size: str, *, num_classes: int, resolution: int, pretrain_weights: Path | None = None) -> Any:
    """An ``rfdetr`` model object (``RFDETRNano``, ...) built offline; ``pretrain_weights`` is a path with a folder.

    Raises:
        CheckpointError: ``pretrain_weights`` cannot be read (rfdetr's own message, about ``trust_checkpoint``, hides
            that the file is truncated or corrupt).
    """
    import rfdetr

    builder = getattr(rfdetr, SIZES[size].builder)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "resolution": resolution}
    # a bare file name would make rfdetr look it up in its download cache (and fetch it): always a path with a folder
    kwargs["pretrain_weights"] = None if pretrain_weights is None else str(pretrain_weights.absolute())
    try:
        return builder(**kwargs)
    except Exception as exc:
        if pretrain_weights is None:
            raise
        raise CheckpointError(_unreadable(pretrain_weights, exc)) from None


def _unreadable(path: Path, exc: BaseException) -> str:
    size = path.stat().st_size if path.exists() else 0
    return (
        f"{path} ({size} bytes): truncated or corrupt checkpoint, or not an RF-DETR one "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        "use the best.pt a train run wrote, or a checkpoint rfdetr itself saved"
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The project's RF-DETR checkpoint, loaded weights-only (no code runs) and checked.

    Raises:
        CheckpointError: it cannot be read (truncated, corrupt) or lacks the family's keys.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError ... for a damaged file
        raise CheckpointError(_unreadable(path, exc)) from None
    missing = [key for key in (FAMILY_KEY, "size", "classes", "resolution", "state_dict") if key not in ckpt]
    if not isinstance(ckpt, dict) or missing or ckpt[FAMILY_KEY] != NAME or ckpt["size"] not in SIZES:
        raise CheckpointError(f"{path}: not an RF-DETR checkpoint of this project (missing {missing or 'nothing'})")
    return dict(ckpt)


def write_checkpoint(
    path: Path, *, state_dict: Mapping[str, Any], size: str, classes: Sequence[str], resolution: int
) -> Path:
    """Save the project's checkpoint (:data:`FAMILY_KEY` first, so :func:`declared_family` finds it); atomic."""
    import torch

    payload = {
        FAMILY_KEY: NAME,
        "size": size,
        "classes": list(classes),
        "resolution": int(resolution),
        "state_dict": dict(state_dict),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _network(ckpt: Mapping[str, Any]) -> Any:
    """The LW-DETR ``nn.Module`` of a checkpoint, weights loaded, in export mode at its resolution."""
    model = build_model(ckpt["size"], num_classes=len(ckpt["classes"]), resolution=int(ckpt["resolution"]))
    net = model.model.model
    net.load_state_dict(ckpt["state_dict"])
    return export_mode(net.eval(), resolution=int(ckpt["resolution"]))


def export_mode(net: Any, *, resolution: int) -> Any:
    """Switch an LW-DETR module to its export forward (``(boxes, logits)`` from a normalised batch) at one size.

    The DINOv2 position embeddings are frozen to ``resolution`` first (as rfdetr's own export prepares them): that
    keeps an antialiased resize without an ONNX symbol out of the graph.
    """
    from rfdetr.models.backbone.dinov2 import DinoV2

    for module in net.modules():
        if isinstance(module, DinoV2):
            module.shape = (resolution, resolution)
            module.export()
    if not getattr(net, "_export", False):  # a second export() loses the original forward
        net.export()
    return net


def decoded_module(net: Any, *, num_classes: int, resolution: int, top_k: int = TOP_K) -> Any:
    """:class:`Decoded` around ``net`` (built lazily: torch is imported only here)."""
    import torch
    from torch import nn

    class Decoded(nn.Module):
        """The layout every family exports: ``(B, 3, S, S)`` RGB [0, 1] in, ``(B, K, 6)`` rows out.

        Rows are ``x1, y1, x2, y2, score, class`` in input pixels, best first: the sigmoid of every query x class
        logit (the last logit, rfdetr's background/no-object slot, dropped), top-K over them, each with its
        query's box (normalised ``cx, cy, w, h`` -> corners x ``S``).
        """

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.num_classes, self.resolution = num_classes, resolution
            self.top_k = min(top_k, int(net.num_queries) * num_classes)
            self.mean: torch.Tensor
            self.std: torch.Tensor
            self.register_buffer("mean", torch.tensor(MEANS, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STDS, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            boxes, logits = self.net((images - self.mean) / self.std)[:2]
            scores = logits[..., : self.num_classes].sigmoid().flatten(1)  # (B, Q*C)
            top, index = scores.topk(self.top_k, dim=1)
            query = torch.div(index, self.num_classes, rounding_mode="floor")
            cls = index - query * self.num_classes
            picked = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
            centre, side = picked[..., :2], picked[..., 2:]
            corners = torch.cat([centre - side / 2, centre + side / 2], dim=-1) * self.resolution
            return torch.cat([corners, top.unsqueeze(-1), cls.unsqueeze(-1).to(corners.dtype)], dim=-1)

    return Decoded().eval()


def decoded_from_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    """The exported network of a project checkpoint (:func:`read_checkpoint`, :func:`decoded_module`), its record."""
    ckpt = read_checkpoint(path)
    module = decoded_module(_network(ckpt), num_classes=len(ckpt["classes"]), resolution=int(ckpt["resolution"]))
    info = {key: ckpt[key] for key in ("size", "classes", "resolution")}
    return module, info


class TorchDetector:
    """A project RF-DETR checkpoint run eagerly: the very module the ONNX export traces (so parity holds)."""

    def __init__(self, path: Path, settings: InferenceSettings) -> None:
        import torch

        self.path, self.settings = path, settings
        torch.set_num_threads(settings.threads)
        self.net, self.info = decoded_from_checkpoint(path)
        if self.info["resolution"] != settings.imgsz:
            raise CheckpointError(
                f"{path}: trained at {self.info['resolution']} px, asked to run at {settings.imgsz} px "
                "(base.imgsz): RF-DETR runs at the resolution it was trained at; retrain or set base.imgsz"
            )
        self.net = self.net.to(settings.device)
        self._torch = torch

    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with self._torch.inference_mode():
            out = self.net(self._torch.from_numpy(batch).to(self.settings.device))
        return out.float().cpu().numpy()


def _is_checkpoint(path: Path) -> bool:
    return path.is_file() and declared_family(path) == NAME


def open_checkpoint(path: Path, settings: InferenceSettings) -> TorchDetector:
    """A :class:`TorchDetector` for a checkpoint the project recorded (:func:`~tasks.models.base.trust_params`).

    Raises:
        UntrustedCheckpointError: its SHA-256 is in no record of the project nor in ``train.trusted_checkpoints``.
        CheckpointError: truncated, corrupt, or trained at another resolution than ``settings.imgsz``.
    """
    require_trusted(path, trusted_in_context())
    return TorchDetector(path, settings)


CHECKPOINT_LOADER: Loader = (_is_checkpoint, open_checkpoint)


def write_metadata(path: Path, info: Mapping[str, Any]) -> None:
    """Names, size and resolution in the ONNX file's metadata (read back by :meth:`OnnxDetector.metadata`)."""
    import onnx

    model = onnx.load(str(path))
    values = {
        "family": NAME,
        "size": str(info["size"]),
        "imgsz": str(info["resolution"]),
        "names": str(dict(enumerate(info["classes"]))),
    }
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
