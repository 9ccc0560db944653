"""The model-family protocol: everything that differs between detector libraries (YOLO, RF-DETR).

A family trains a checkpoint from a YOLO-layout data set, exports it to ONNX, opens its own checkpoints as a
runtime :class:`~tasks.runtimes.detectors.Detector`, and tells the rest of the loop the few facts that depend
on it: its license, how its ``.pt`` evaluations and exports decode (:class:`InferenceHints`), which graph
nodes quantization must keep in FP32 (:meth:`ModelFamily.head_nodes`), and whether and how its networks are
pruned (:meth:`ModelFamily.prunable`, :meth:`ModelFamily.fine_tune`; a family that cannot says why). The family
is chosen by ``train.family`` through :func:`tasks.models.family`; its own settings live under ``train.<family>``.

Metric names a family reports (per epoch and at the end) are family-neutral: ``val/mAP50-95``, ``val/mAP50``,
``val/precision``, ``val/recall``, ``val/<loss>``, ``train/<loss>`` and ``lr/<group>``.
"""

from __future__ import annotations

import pickletools
import struct
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.config import Params
from tasks.contracts.checkpoints import trusted_checkpoints
from tasks.models.pruning import Prunable
from tasks.runtimes.detectors import Loader

EpochLogger = Callable[[int, dict[str, float]], None]
"""Called after each training epoch with the epoch number (1-based) and its metrics."""

# The params whose records say which checkpoints a family's loader may open: a loader is called as
# ``load_detector(path, settings)`` and sees no params. Per context (thread, Prefect task); set by the family lookup
# (tasks.models.family) that precedes every load; unset, no checkpoint is trusted.
_TRUST: ContextVar[Params | None] = ContextVar("visionloop_checkpoint_trust", default=None)


def trust_params(params: Params) -> None:
    """Let the family loaders open, in this context, the checkpoints ``params`` records or allows."""
    _TRUST.set(params)


def trusted_in_context() -> dict[str, str]:
    """Hash -> record of the checkpoints loaders may open now (:func:`tasks.contracts.checkpoints.trusted_checkpoints`
    of the params given to :func:`trust_params`; none when it was not called in this context)."""
    params = _TRUST.get()
    return trusted_checkpoints(params) if params is not None else {}


FAMILY_KEY = "visionloop_family"
"""First key of a checkpoint a family writes as a plain ``torch.save`` dict: its value names the family."""

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_SNIFF_BYTES = 1 << 16


def declared_family(path: Path) -> str | None:
    """The family a checkpoint declares (``{FAMILY_KEY: name, ...}`` saved first by ``torch.save``), else ``None``.

    Reads the first kilobytes only and never unpickles: a ``torch.save`` file is a zip whose first record is the
    pickle of the saved object; its opcodes are scanned (:mod:`pickletools`) for the first dict key and its value.
    An Ultralytics ``.pt`` (first key ``date``), a file of another format or garbage declare nothing; so does a
    file cut before that first record ends. A truncated checkpoint whose head survives still declares its family,
    so its own loader reports it.
    """
    try:
        with Path(path).open("rb") as file:
            head = file.read(_SNIFF_BYTES)
    except OSError:
        return None
    if len(head) < 30 or not head.startswith(_ZIP_LOCAL_HEADER):
        return None
    method, name_len, extra_len = struct.unpack("<H", head[8:10])[0], *struct.unpack("<HH", head[26:30])
    start = 30 + name_len + extra_len
    if method != 0 or not head[30 : 30 + name_len].endswith(b"data.pkl"):  # torch stores records uncompressed
        return None
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(head[start:]):
            if opcode.name in {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "STOP"}:
                break  # an object before the first key: not a plain dict of ours
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.append(arg)
                if len(strings) == 2:
                    break
    except ValueError:  # cut or not a pickle
        return None
    return strings[1] if len(strings) == 2 and strings[0] == FAMILY_KEY else None


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
class WeightsLicense:
    """The license the weights a family trains fall under, as the family states it (per size where it differs).

    Attributes:
        license: SPDX id (``AGPL-3.0-only``, ``Apache-2.0``) or the licensor's name (``PML-1.0``).
        source: where it is stated, readable: ``family yolo``, ``family rfdetr (size nano)``.
    """

    license: str
    source: str


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
        package: the distribution holding its code (the license of the model code is read from its metadata).
        loaders: the checkpoint formats it opens, registered with the runtimes when it is looked up.
    """

    name: str
    package: str
    loaders: Sequence[Loader]

    def weights_license(self, params: Params) -> WeightsLicense:
        """The license of the weights ``params`` makes this family train (tagged on every model version)."""
        ...

    def fit(
        self,
        params: Params,
        *,
        data: TrainData,
        out_dir: Path,
        on_epoch: EpochLogger,
        registered: Mapping[str, str] | None = None,
    ) -> Fitted:
        """Train ``train.model`` from scratch, or from ``train.weights``, on ``data``; scratch files in ``out_dir``.

        ``train.weights`` is opened only when its SHA-256 is recorded (:mod:`tasks.contracts.checkpoints`): by the
        project's files, by ``train.trusted_checkpoints``, or in ``registered`` (hash -> model version, the
        registry's ``checkpoint_sha256`` tags, read by the caller).
        """
        ...

    def export_onnx(self, checkpoint: Path, target: Path, *, params: Params) -> None:
        """Write ``checkpoint`` as FP32 ONNX to ``target`` (``export.opset``, ``export.dynamic``, ``base.imgsz``).

        The checkpoint is opened only when the project records it (:mod:`tasks.contracts.checkpoints`).
        """
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

    def prunable(self, checkpoint: Path, params: Params) -> Prunable:
        """The checkpoint's network ready for structured pruning (:mod:`tasks.models.pruning`): operations the
        dependency graph cannot follow rewritten, the modules whose output channels must stay named.

        Raises:
            NotPrunable: this family (or checkpoint) cannot be pruned; the message says why.
        """
        ...

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
        """Train the pruned ``module`` for ``compress.epochs`` on ``data``, distilling from the ``teacher``
        checkpoint when given; the checkpoint it returns opens like the family's own.

        Raises:
            NotPrunable: the family has no fine-tune for pruned networks.
        """
        ...
