"""The model-family protocol: everything that differs between detector libraries (YOLO today, RF-DETR later).

A family trains a checkpoint from a YOLO-layout data set, exports it to ONNX, opens its own checkpoints as a
runtime :class:`~tasks.runtimes.detectors.Detector`, and tells the rest of the loop the few facts that depend
on it: its license, how its ``.pt`` evaluations and exports decode (:class:`InferenceHints`), and which graph
nodes quantization must keep in FP32 (:meth:`ModelFamily.head_nodes`). The family is chosen by
``train.family`` through :func:`tasks.models.family`; its own settings live under ``train.<family>``.

Metric names a family reports (per epoch and at the end) are family-neutral: ``val/mAP50-95``, ``val/mAP50``,
``val/precision``, ``val/recall``, ``val/<loss>``, ``train/<loss>`` and ``lr/<group>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tasks.config import Params
from tasks.runtimes.detectors import Loader

EpochLogger = Callable[[int, dict[str, float]], None]
"""Called after each training epoch with the epoch number (1-based) and its metrics."""


@dataclass(frozen=True)
class TrainData:
    """What a family trains on: YOLO layout (``images/`` with ``labels/`` beside them), made by the train stage.

    Attributes:
        train: a folder of training images, or a text file listing them (one path a line, repeats allowed).
        val: the same for validation.
        classes: class names, index = class id.
    """

    train: Path
    val: Path
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Fitted:
    """What a training run hands back.

    Attributes:
        checkpoint: the best checkpoint (the stage copies it to ``<models>/train/best.pt``).
        metrics: final validation metrics of that checkpoint (family-neutral names, see the module docstring).
        artifacts: the family's own files worth keeping with the run (logged to MLflow), e.g. a results table.
    """

    checkpoint: Path
    metrics: dict[str, float]
    artifacts: tuple[Path, ...] = ()


@dataclass(frozen=True)
class InferenceHints:
    """How this family's checkpoints run: what every :class:`~tasks.runtimes.detectors.InferenceSettings` needs.

    Attributes:
        nms_free: run (and export) the NMS-free head, decoded as ``(B, K, 6)`` rows; else raw outputs + NMS.
    """

    nms_free: bool = False


class ModelFamily(Protocol):
    """A detector library behind one small interface (see the module docstring).

    Attributes:
        name: the ``train.family`` value that chooses it.
        license: SPDX id of the license its weights fall under (tagged on every model version).
        loaders: the checkpoint formats it opens, registered with the runtimes when it is looked up.
    """

    name: str
    license: str
    loaders: Sequence[Loader]

    def fit(self, params: Params, *, data: TrainData, out_dir: Path, on_epoch: EpochLogger) -> Fitted:
        """Train ``train.model`` from scratch, or from ``train.weights``, on ``data``; scratch files in ``out_dir``."""
        ...

    def export_onnx(self, checkpoint: Path, target: Path, *, params: Params) -> None:
        """Write ``checkpoint`` as FP32 ONNX to ``target`` (``export.opset``, ``export.dynamic``, ``base.imgsz``)."""
        ...

    def inference_hints(self, params: Params) -> InferenceHints:
        """What inference on this family's checkpoints and exports must know (the head to decode)."""
        ...

    def head_nodes(self, node_names: Sequence[str]) -> frozenset[str]:
        """Of an exported graph's node names, those of the detection head (quantization keeps them FP32).

        Raises:
            ValueError: the head cannot be located in these names.
        """
        ...
