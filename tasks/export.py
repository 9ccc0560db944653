"""Stage ``export``: turn the trained checkpoint into deployable artifacts, re-check each, select one.

Contract:
    inputs: ``<models>/train/best.pt``, the sets in ``evaluate.sets``, ``<reports>/evaluate.json`` (the
        PyTorch mAP to compare against), ``base.paths.train`` images (INT8 calibration);
    params: ``base``, ``evaluate`` (thresholds, sets, batch), ``predict`` (threads, batch size), ``export``;
    outputs: one artifact per built target in ``<models>/export/`` (``model.onnx``, ``model_int8.onnx``,
        ``openvino/model.xml``, ``openvino_int8/model.xml``, ``model_fp16.engine``, ``model_int8.engine``) and
        ``<reports>/export.json``: per target its mAP, parity with PyTorch, speed on this host, size, peak
        memory and verdict (or why it was skipped), the selected artifact with the reason, and the lineage
        of quantization (calibration image ids, settings, tool versions);
    side effects: none outside those paths.

A target is an :class:`ExportTarget` in :data:`TARGETS`, chosen by ``export.targets``; FP32 ONNX is built
first, every other target starts from it. A target this host cannot build (TensorRT without CUDA) is
recorded as skipped with the reason. Every built artifact is re-evaluated with the same code as PyTorch,
compared with PyTorch's raw outputs on a few fixed images (:func:`check_parity`); then all built artifacts
are timed side by side, taking turns (:func:`time_artifacts`). :func:`select_artifact` (pure) then picks what
to deploy.

The stage fails (:class:`ExportCheckError`, naming both numbers) when FP32 ONNX loses more mAP50-95 than
``export.max_map_drop.fp32`` or fails parity: then nothing is deployable. A reduced-precision artifact that
fails is refused, logged and reported, and the stage ships the next best.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from tasks.config import ExportParams, Hardware, Params, Precision, load_params, stage_argparser
from tasks.contracts.yolo_labels import list_images, load_rgb
from tasks.evaluate import default_model_path, evaluate_set, inference_settings
from tasks.io import write_json_atomic
from tasks.runtimes.detectors import (
    Deployed,
    Detections,
    InferenceSettings,
    Letterbox,
    artifact_files,
    decode_output,
    letterbox,
    load_detector,
)

log = logging.getLogger(__name__)

FALLBACK = "onnx"
LINEAGE_PACKAGES = ("onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "tensorrt", "torch", "ultralytics")


class ExportCheckError(RuntimeError):
    """FP32 ONNX lost more accuracy than ``export.max_map_drop`` allows or collapsed: nothing is deployable."""


class CalibrationError(ValueError):
    """The INT8 calibration set is missing, empty or smaller than ``export.calibration.min_images``."""


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Calibration:
    """The INT8 calibration sample.

    Attributes:
        source: the image folder sampled.
        seed: the sampling seed.
        image_ids: file names relative to ``source``, in the order fed.
        images: ``(N, 3, S, S)`` float32 in [0, 1], letterboxed like inference (not written to reports).
    """

    source: str
    seed: int
    image_ids: list[str]
    images: npt.NDArray[np.float32] = field(repr=False)

    def lineage(self) -> dict[str, Any]:
        """What the report records about the sample (everything but the pixels)."""
        return {"source": self.source, "seed": self.seed, "count": len(self.image_ids), "image_ids": self.image_ids}


@dataclass(frozen=True)
class ExportInputs:
    """What a target builds from: the checkpoint, the FP32 ONNX (once built) and the calibration sample."""

    weights: Path
    onnx: Path | None = None
    calibration: Calibration | None = None


@dataclass(frozen=True)
class Built:
    """A built artifact and what the builder records about it (settings, FP32 nodes, built precision)."""

    path: Path
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeedResult:
    """Network-only timing of one artifact on this host (pre/post-processing are shared by all runtimes).

    Attributes:
        threads: intra-op threads the runtime was given.
        static_shapes: whether OpenVINO ran static-shape compilations (see ``InferenceSettings``).
        latency_ms: batch-1 latency percentiles ``p50``, ``p95``, ``p99`` and ``mean`` over ``runs``.
        batch: batch size of the throughput run.
        batch_latency_ms: median latency of one batch of ``batch`` images.
        throughput_ips: images per second at ``batch``.
        peak_rss_mb: resident-memory growth while loading and warming up, a run at batch 1 and one at ``batch``
            (libraries already imported count 0).
        load_s: time to load/compile the artifact.
        runs: timed batch-1 runs (after ``warmup`` untimed ones).
        warmup: untimed runs before timing.
        rounds: rounds the runs were spread over, taking turns with the other artifacts (:func:`time_artifacts`).
    """

    threads: int
    static_shapes: bool
    latency_ms: dict[str, float]
    batch: int
    batch_latency_ms: float
    throughput_ips: float
    peak_rss_mb: float
    load_s: float
    runs: int
    warmup: int
    rounds: int = 1


@dataclass(frozen=True)
class ParityResult:
    """How many of PyTorch's top detections the artifact reproduces on the parity images.

    Attributes:
        images: images compared.
        reference: PyTorch detections compared (``top_k`` per image).
        matched: those found in the artifact's output (same class, score and corners within tolerance).
        worst_score_diff: largest score gap to the nearest same-class detection (``None`` if none had one).
        worst_box_diff_px: largest corner gap, network-input pixels, to the nearest same-class detection.
        score_atol: score tolerance applied.
        box_atol_px: corner tolerance applied.
        min_match: the matched share below which the artifact counts as collapsed.
        passed: ``matched / reference >= min_match``.
    """

    images: int
    reference: int
    matched: int
    worst_score_diff: float | None
    worst_box_diff_px: float | None
    score_atol: float
    box_atol_px: float
    min_match: float
    passed: bool


@dataclass(frozen=True)
class ArtifactCheck:
    """One export target and how its artifact measured against PyTorch on this host.

    ``status`` is ``built``, ``skipped`` (this host cannot build it; ``reason`` says why) or ``failed``
    (building or checking raised; ``reason`` holds the error). ``passed`` is the accuracy gate alone.
    """

    target: str
    path: str
    size_mb: float
    map50_95: dict[str, float]
    reference_map50_95: dict[str, float]
    max_drop: float
    passed: bool
    export_s: float = 0.0
    precision: str = "fp32"
    hardware: tuple[str, ...] = ("cpu",)
    sibling: str | None = None
    status: str = "built"
    reason: str = ""
    parity: ParityResult | None = None
    speed: SpeedResult | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SelectionPolicy:
    """What :func:`select_artifact` needs from ``export`` params.

    Attributes:
        target_hardware: where the deployed artifact runs (``cpu`` / ``cuda``).
        max_map_drop: allowed mAP50-95 loss against PyTorch per precision.
        min_speedup: how much faster than its higher-precision sibling a reduced-precision artifact must be.
        select_by: ``latency`` (batch-1 p50, lower wins) or ``throughput`` (images/s at the batch, higher wins).
        fallback: the target shipped when nothing better qualifies; it must itself pass.
    """

    target_hardware: str = "cpu"
    max_map_drop: Mapping[str, float] = field(default_factory=lambda: {"fp32": 0.003, "fp16": 0.005, "int8": 0.01})
    min_speedup: float = 1.1
    select_by: str = "latency"
    fallback: str = FALLBACK

    @classmethod
    def from_params(cls, export: ExportParams) -> SelectionPolicy:
        """The policy ``export`` params describe."""
        return cls(
            target_hardware=export.target_hardware,
            max_map_drop=export.max_map_drop.model_dump(),
            min_speedup=export.min_speedup,
            select_by=export.select_by,
        )


@dataclass(frozen=True)
class Selection:
    """The deployable artifact (``None``: nothing may ship) and, per target, why it was taken or refused."""

    chosen: ArtifactCheck | None
    reasons_per_target: dict[str, str]

    @property
    def reason(self) -> str:
        if self.chosen is None:
            return f"nothing deployable: {self.reasons_per_target.get(FALLBACK, 'no FP32 ONNX candidate')}"
        return self.reasons_per_target[self.chosen.target]

    def summary(self) -> dict[str, str] | None:
        """``{target, path, reason}`` of the chosen artifact, as written to the report."""
        if self.chosen is None:
            return None
        return {"target": self.chosen.target, "path": self.chosen.path, "reason": self.reason}


@dataclass(frozen=True)
class ExportReport:
    """What ``reports/export.json`` holds (and what :func:`run` returns)."""

    weights: str
    params_digest: str
    reference_map50_95: dict[str, float]
    artifacts: list[ArtifactCheck]
    selected: dict[str, str] | None
    selection: dict[str, str]
    lineage: dict[str, Any]
    host: dict[str, Any]

    def deployed(self) -> Deployed | None:
        """The selected artifact as the version will run it (``None`` when nothing was selected)."""
        if not self.selected:
            return None
        target = self.selected["target"]
        precision = next((c.precision for c in self.artifacts if c.target == target), "")
        return Deployed(target=target, precision=precision, path=Path(self.selected["path"]))


# --------------------------------------------------------------------------------------------- targets


class ExportTarget(Protocol):
    """A deployable format: what it needs from the host, and how to build it into ``out_dir``.

    ``sibling`` is the higher-precision target of the same runtime a reduced-precision artifact must beat by
    ``export.min_speedup`` (``None`` for FP32 targets).
    """

    name: str
    precision: Precision
    hardware: tuple[Hardware, ...]
    sibling: str | None
    needs_calibration: bool

    def unavailable(self, params: Params) -> str | None:
        """Why this host cannot build the target (``None`` when it can)."""
        ...

    def build(self, inputs: ExportInputs, *, out_dir: Path, params: Params) -> Built: ...


def _missing_module(module: str) -> str | None:
    return None if find_spec(module) is not None else f"the {module} Python module is not installed"


def _require_onnx(inputs: ExportInputs) -> Path:
    if inputs.onnx is None:
        raise ValueError("the FP32 ONNX model must be built first (export.targets must include 'onnx')")
    return inputs.onnx


def _require_calibration(inputs: ExportInputs) -> Calibration:
    if inputs.calibration is None:
        raise CalibrationError("INT8 export without a calibration set")
    return inputs.calibration


def fix_spatial_size(path: Path, imgsz: int, *, simplify: bool) -> None:
    """Pin the input's height and width to ``imgsz`` (batch stays dynamic) and re-simplify in place.

    Inference always letterboxes to ``imgsz``; a fixed spatial size lets the simplifier fold the head's anchor
    grid into constants instead of recomputing it from the input shape on every call.
    """
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim in dims[2:]:
        dim.ClearField("dim_param")
        dim.dim_value = imgsz
    del model.graph.value_info[:]  # stale symbolic shapes; re-inferred below
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    onnx.save(model, str(path))


class OnnxTarget:
    """ONNX FP32: opset from params, dynamic batch, simplified; the head ``base.nms_free`` chooses (no NMS inside)."""

    name = "onnx"
    precision: Precision = "fp32"
    hardware: tuple[Hardware, ...] = ("cpu", "cuda")
    sibling: str | None = None
    needs_calibration = False

    def unavailable(self, params: Params) -> str | None:
        return _missing_module("onnxruntime")

    def build(self, inputs: ExportInputs, *, out_dir: Path, params: Params) -> Built:
        from tasks.env import configure_ultralytics

        configure_ultralytics()
        from ultralytics import YOLO

        cfg = params.export
        scratch = out_dir / ".onnx-build"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        shutil.copyfile(inputs.weights, scratch / "model.pt")
        produced = YOLO(str(scratch / "model.pt")).export(
            format="onnx",
            opset=cfg.opset,
            dynamic=cfg.dynamic,
            simplify=cfg.simplify and not cfg.dynamic,  # dynamic: simplified once, after the size is pinned
            imgsz=params.base.imgsz,
            nms=False if params.base.nms_free else None,  # False keeps the one-to-one head; None the one-to-many
            device=params.base.device,
            verbose=False,
        )
        target = out_dir / "model.onnx"
        Path(produced).replace(target)
        shutil.rmtree(scratch, ignore_errors=True)
        if cfg.dynamic:
            fix_spatial_size(target, params.base.imgsz, simplify=cfg.simplify)
        return Built(target, {"opset": cfg.opset, "dynamic_batch": cfg.dynamic, "imgsz": params.base.imgsz})


class OnnxInt8Target:
    """ONNX Runtime static INT8 (QDQ, per-channel), calibrated on training images; head non-Conv nodes FP32."""

    name = "onnx_int8"
    precision: Precision = "int8"
    hardware: tuple[Hardware, ...] = ("cpu",)
    sibling: str | None = "onnx"
    needs_calibration = True

    def unavailable(self, params: Params) -> str | None:
        return _missing_module("onnxruntime")

    def build(self, inputs: ExportInputs, *, out_dir: Path, params: Params) -> Built:
        from tasks.targets.quantize import quantize_onnx_int8

        target = out_dir / "model_int8.onnx"
        details = quantize_onnx_int8(
            _require_onnx(inputs),
            target,
            images=_require_calibration(inputs).images,
            config=params.export.quantization,
            method=params.export.calibration.method,
        )
        return Built(target, details)


class OpenVinoTarget:
    """OpenVINO IR, FP32 weights (``ov.convert_model`` of the FP32 ONNX), saved as ``.xml`` + ``.bin``."""

    name = "openvino"
    precision: Precision = "fp32"
    hardware: tuple[Hardware, ...] = ("cpu",)
    sibling: str | None = None
    needs_calibration = False

    def unavailable(self, params: Params) -> str | None:
        return _missing_module("openvino")

    def build(self, inputs: ExportInputs, *, out_dir: Path, params: Params) -> Built:
        import openvino as ov

        folder = out_dir / "openvino"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        target = folder / "model.xml"
        ov.save_model(ov.convert_model(str(_require_onnx(inputs))), str(target), compress_to_fp16=False)
        return Built(target, {"tool": f"openvino {ov.__version__}", "weights": "fp32"})


class OpenVinoInt8Target:
    """NNCF post-training INT8 of the OpenVINO model, same calibration images; head non-Conv ops FP32."""

    name = "openvino_int8"
    precision: Precision = "int8"
    hardware: tuple[Hardware, ...] = ("cpu",)
    sibling: str | None = "openvino"
    needs_calibration = True

    def unavailable(self, params: Params) -> str | None:
        return _missing_module("openvino") or _missing_module("nncf")

    def build(self, inputs: ExportInputs, *, out_dir: Path, params: Params) -> Built:
        from tasks.targets.quantize import quantize_openvino_int8

        folder = out_dir / "openvino_int8"
        shutil.rmtree(folder, ignore_errors=True)
        target = folder / "model.xml"
        details = quantize_openvino_int8(
            _require_onnx(inputs),
            target,
            images=_require_calibration(inputs).images,
            config=params.export.quantization,
        )
        return Built(target, details)


class TensorRtTarget:
    """A TensorRT engine (FP16, or INT8 calibrated with ``IInt8EntropyCalibrator2``); CUDA hosts only.

    INT8 must beat the FP16 engine (FP16 must beat FP32 ONNX on the same host) to be worth its accuracy risk.
    """

    hardware: tuple[Hardware, ...] = ("cuda",)

    def __init__(self, precision: Precision) -> None:
        self.precision: Precision = precision
        self.name = f"tensorrt_{precision}"
        self.needs_calibration = precision == "int8"
        self.sibling: str | None = "tensorrt_fp16" if precision == "int8" else "onnx"

    def unavailable(self, params: Params) -> str | None:
        from tasks.targets.quantize import tensorrt_unavailable

        return tensorrt_unavailable()

    def build(self, inputs: ExportInputs, *, out_dir: Path, params: Params) -> Built:
        from tasks.targets.quantize import build_tensorrt_engine

        target = out_dir / f"model_{self.precision}.engine"
        calibration = _require_calibration(inputs) if self.needs_calibration else None
        details = build_tensorrt_engine(
            _require_onnx(inputs),
            target,
            precision=self.precision,
            imgsz=params.base.imgsz,
            max_batch=max(params.evaluate.batch, params.export.speed.batch, params.predict.batch_size),
            images=calibration.images if calibration is not None else None,
            keep_head_fp32=params.export.quantization.keep_head_fp32,
        )
        return Built(target, details)


TARGETS: dict[str, ExportTarget] = {
    "onnx": OnnxTarget(),
    "onnx_int8": OnnxInt8Target(),
    "openvino": OpenVinoTarget(),
    "openvino_int8": OpenVinoInt8Target(),
    "tensorrt_fp16": TensorRtTarget("fp16"),
    "tensorrt_int8": TensorRtTarget("int8"),
}


# --------------------------------------------------------------------------------------------- calibration


def load_calibration(params: Params) -> Calibration:
    """Draw the seeded calibration sample from ``base.paths.train/images`` and letterbox it to ``base.imgsz``.

    Raises:
        CalibrationError: the folder is missing, empty, or holds fewer than ``export.calibration.min_images``.
    """
    cfg = params.export.calibration
    root = params.base.paths.train / "images"
    paths = list_images(root) if root.is_dir() else []
    if len(paths) < cfg.min_images:
        found = "folder not found" if not root.is_dir() else f"{len(paths)} image(s)"
        raise CalibrationError(
            f"{root}: {found} for INT8 calibration, export.calibration.min_images is {cfg.min_images}; "
            "add training images (base.paths.train) or lower export.calibration.min_images"
        )
    seed = params.base.seed if cfg.seed is None else cfg.seed
    picked = sorted(np.random.default_rng(seed).choice(len(paths), size=min(cfg.images, len(paths)), replace=False))
    if len(picked) < cfg.images:
        log.warning("calibration: only %d training images, export.calibration.images is %d", len(picked), cfg.images)
    chosen = [paths[int(i)] for i in picked]
    images = np.stack([letterbox(load_rgb(p), params.base.imgsz)[0] for p in chosen])
    return Calibration(
        source=str(root), seed=seed, image_ids=[p.relative_to(root).as_posix() for p in chosen], images=images
    )


# --------------------------------------------------------------------------------------------- checks


def map_shortfalls(
    measured: Mapping[str, float], reference: Mapping[str, float], max_drop: float
) -> dict[str, tuple[float | None, float]]:
    """Sets where ``measured`` mAP is missing or more than ``max_drop`` below ``reference``: ``{set: (got, ref)}``."""
    return {
        name: (measured.get(name), ref)
        for name, ref in reference.items()
        if name not in measured or measured[name] < ref - max_drop
    }


def check_artifact(
    *,
    target: str,
    artifact: Path,
    reference: dict[str, float],
    measured: dict[str, float],
    max_drop: float,
    export_s: float = 0.0,
    **extra: Any,
) -> ArtifactCheck:
    """Compare an artifact's mAP50-95 per set with the PyTorch reference (pure; no I/O but file size).

    ``extra`` fills the remaining :class:`ArtifactCheck` fields (precision, parity, speed, ...).
    """
    passed = not map_shortfalls(measured, reference, max_drop)
    size = sum(p.stat().st_size for p in artifact_files(artifact) if p.is_file())  # OpenVINO: .xml + .bin
    return ArtifactCheck(
        target=target,
        path=str(artifact),
        size_mb=round(size / 2**20, 3),
        map50_95=measured,
        reference_map50_95=reference,
        max_drop=max_drop,
        passed=passed,
        export_s=export_s,
        **extra,
    )


def match_detections(
    reference: Detections, candidate: Detections, *, score_atol: float, box_atol_px: float
) -> tuple[int, float | None, float | None]:
    """Count reference detections the candidate reproduces, ignoring order (near-tied scores swap).

    A reference detection is matched by any candidate detection of the same class whose score is within
    ``score_atol`` and whose four corners are within ``box_atol_px``.

    Returns:
        ``(matched, worst_score_diff, worst_box_diff_px)``; the worst diffs are taken, per reference
        detection, to its nearest same-class candidate (``None`` when no reference detection had one).
    """
    matched = 0
    worst_score: float | None = None
    worst_box: float | None = None
    for box, score, cls in zip(reference.boxes_xyxy, reference.confidence, reference.class_id, strict=True):
        same = candidate.class_id == cls
        if not same.any():
            continue
        box_diff = np.abs(candidate.boxes_xyxy[same] - box).max(axis=1)
        score_diff = np.abs(candidate.confidence[same] - score)
        ok = (box_diff <= box_atol_px) & (score_diff <= score_atol)
        matched += int(ok.any())
        nearest = int(np.argmin(box_diff))
        worst_box = max(worst_box or 0.0, float(box_diff[nearest]))
        worst_score = max(worst_score or 0.0, float(score_diff[nearest]))
    return matched, worst_score, worst_box


def check_parity(
    reference_output: npt.NDArray[np.float32],
    candidate_output: npt.NDArray[np.float32],
    *,
    imgsz: int,
    top_k: int,
    score_atol: float,
    box_atol_px: float,
    min_match: float,
) -> ParityResult:
    """Compare raw network outputs of PyTorch and an artifact on the same ``(B, 3, S, S)`` batch.

    Both are decoded by the shared post-processing in network-input pixels; PyTorch's ``top_k`` detections
    per image (no score threshold, so an untrained model still has some) must reappear in the artifact's.
    """
    images = len(reference_output)
    boxes = [Letterbox(scale=1.0, pad_x=0, pad_y=0, width=imgsz, height=imgsz)] * images
    ref = decode_output(reference_output, boxes, InferenceSettings(imgsz=imgsz, conf=0.0, max_det=top_k))
    cand = decode_output(candidate_output, boxes, InferenceSettings(imgsz=imgsz, conf=0.0, max_det=10_000))
    total = matched = 0
    worst_score: float | None = None
    worst_box: float | None = None
    for r, c in zip(ref, cand, strict=True):
        m, s, b = match_detections(r, c, score_atol=score_atol, box_atol_px=box_atol_px)
        total, matched = total + len(r), matched + m
        worst_score = s if worst_score is None else max(worst_score, s or 0.0)
        worst_box = b if worst_box is None else max(worst_box, b or 0.0)
    return ParityResult(
        images=images,
        reference=total,
        matched=matched,
        worst_score_diff=None if worst_score is None else round(worst_score, 6),
        worst_box_diff_px=None if worst_box is None else round(worst_box, 4),
        score_atol=score_atol,
        box_atol_px=box_atol_px,
        min_match=min_match,
        passed=total == 0 or matched / total >= min_match,
    )


class _PeakRss:
    """Peak resident memory of this process above its level at ``__enter__``, from the kernel's high-water mark.

    Linux keeps the peak itself (``VmHWM``); writing ``5`` to ``/proc/self/clear_refs`` resets it to the current RSS,
    so nothing samples memory while the timed runs execute: a polling thread would wake every few milliseconds and
    take a core from the inference threads (on 2 cores it doubled the measured OpenVINO latency). Where the reset is
    unavailable the delta falls back to ``ru_maxrss`` (the lifetime peak, so it may read 0 for a model smaller than
    what the process held before).
    """

    _STATUS = Path("/proc/self/status")
    _CLEAR = Path("/proc/self/clear_refs")

    def __enter__(self) -> _PeakRss:
        self.baseline = self._rss_kib()
        try:
            self._CLEAR.write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak = self.baseline
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.baseline, self._peak_kib())

    def _field_kib(self, name: str) -> int | None:
        try:
            for line in self._STATUS.read_text().splitlines():
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None

    def _rss_kib(self) -> int:
        found = self._field_kib("VmRSS")
        if found is None:
            import psutil

            return int(psutil.Process().memory_info().rss // 1024)
        return found

    def _peak_kib(self) -> int:
        found = self._field_kib("VmHWM") if self._hwm_reset else None
        if found is None:
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
        return found

    @property
    def delta_mb(self) -> float:
        return round((self.peak - self.baseline) / 1024, 1)


def _timed_ms(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _cycling(forward: Callable[[Any], object], inputs: Sequence[Any]) -> Callable[[], object]:
    """A call that feeds ``forward`` the next of ``inputs`` each time, starting from the first."""
    feed = itertools.cycle(inputs)
    return lambda: forward(next(feed))


def _share(total: int, rounds: int, round_index: int) -> int:
    """Runs of round ``round_index`` when ``total`` runs are spread over ``rounds`` rounds (first rounds get more)."""
    return total // rounds + (1 if round_index < total % rounds else 0)


@dataclass(frozen=True)
class RoundTiming:
    """One artifact's share of a pass of :func:`time_rounds`: the summary export reports, and every round.

    Attributes:
        speed: the summary over all rounds, exactly what :func:`time_artifacts` returns.
        round_ms: ``(rounds,)`` median batch-1 latency (ms) of the artifact's runs in each round, in round order;
            a round in which it had no run is left out. Two artifacts of one pass line up round by round: their
            ratio per round compares runs made moments apart.
        runs_per_round: ``(rounds,)`` batch-1 runs behind each value of ``round_ms``.
    """

    speed: SpeedResult
    round_ms: tuple[float, ...]
    runs_per_round: tuple[int, ...]


def time_rounds(
    paths: Mapping[str, Path],
    *,
    settings: InferenceSettings,
    images: npt.NDArray[np.float32],
    batch: int,
    warmup: int,
    runs: int,
    batch_runs: int,
    rounds: int,
) -> dict[str, RoundTiming]:
    """Time several artifacts' networks in turns, so that a burst of load on a shared host hits them alike.

    Each artifact is loaded and warmed up on its own (untimed ``warmup`` runs at batch 1 and at ``batch``), which
    gives its load time and peak memory. Then, in each of ``rounds`` rounds, every artifact runs its share of the
    ``runs`` batch-1 and ``batch_runs`` batch-``batch`` timed runs, in an order rotated every round. A noisy
    moment therefore lands on all artifacts instead of on whichever was being timed alone, and the speed-up of
    an INT8 artifact over its FP32 sibling is measured side by side. The batch of ``batch`` repeats ``images``
    cyclically; batch-1 run ``k`` of a round feeds image ``k mod len(images)``, the same images for every
    artifact. ``batch_runs == 0`` times batch 1 only (the batch figures are then NaN and 0 img/s).

    Args:
        paths: name -> artifact (any format :func:`tasks.runtimes.detectors.load_detector` opens).
        settings: runtime settings every artifact is loaded with.
        images: ``(N, 3, S, S)`` float32 in [0, 1], letterboxed network inputs, ``N >= 1``.
        batch, warmup, runs, batch_runs, rounds: as described; ``runs`` and ``batch_runs`` are totals over
            all rounds, spread by :func:`_share`, and there are never more rounds than ``runs``.

    Returns:
        name -> :class:`RoundTiming`, in the order of ``paths``.
    """
    singles = [np.ascontiguousarray(images[i : i + 1]) for i in range(len(images))]
    many = np.ascontiguousarray(images[np.arange(batch) % len(images)])
    loaded: dict[str, Any] = {}
    memory: dict[str, tuple[float, float]] = {}
    for name, path in paths.items():
        with _PeakRss() as rss:
            start = time.perf_counter()
            detector = load_detector(path, settings)
            load_s = time.perf_counter() - start
            for _ in range(warmup):
                detector.forward(singles[0])
            for _ in range(max(1, warmup)):
                detector.forward(many)
        loaded[name] = detector
        memory[name] = (rss.delta_mb, round(load_s, 3))
    rounds = max(1, min(rounds, runs))
    names = list(loaded)
    single: dict[str, list[list[float]]] = {name: [] for name in names}
    batched: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            detector = loaded[name]
            single[name].append(_timed_ms(_cycling(detector.forward, singles), _share(runs, rounds, r)))
            batched[name] += _timed_ms(partial(detector.forward, many), _share(batch_runs, rounds, r))
    out = {}
    for name in names:
        every = [ms for per_round in single[name] for ms in per_round]
        p50, p95, p99 = (float(v) for v in np.percentile(every, [50, 95, 99]))
        batch_ms = float(np.median(batched[name])) if batched[name] else math.nan
        speed = SpeedResult(
            threads=settings.threads,
            static_shapes=settings.static_shapes,
            latency_ms={
                "p50": round(p50, 3),
                "p95": round(p95, 3),
                "p99": round(p99, 3),
                "mean": round(float(np.mean(every)), 3),
            },
            batch=batch,
            batch_latency_ms=round(batch_ms, 3),
            throughput_ips=round(batch * 1000.0 / batch_ms, 2) if batched[name] else 0.0,
            peak_rss_mb=memory[name][0],
            load_s=memory[name][1],
            runs=runs,
            warmup=warmup,
            rounds=rounds,
        )
        kept = [per_round for per_round in single[name] if per_round]
        out[name] = RoundTiming(
            speed=speed,
            round_ms=tuple(float(np.median(per_round)) for per_round in kept),
            runs_per_round=tuple(len(per_round) for per_round in kept),
        )
    return out


def time_artifacts(
    paths: Mapping[str, Path],
    *,
    settings: InferenceSettings,
    images: npt.NDArray[np.float32],
    batch: int,
    warmup: int,
    runs: int,
    batch_runs: int,
    rounds: int,
) -> dict[str, SpeedResult]:
    """Time several artifacts' networks in turns (:func:`time_rounds`); the summary of each over all rounds.

    Returns:
        name -> :class:`SpeedResult`, percentiles over all rounds.
    """
    timings = time_rounds(
        paths,
        settings=settings,
        images=images,
        batch=batch,
        warmup=warmup,
        runs=runs,
        batch_runs=batch_runs,
        rounds=rounds,
    )
    return {name: timing.speed for name, timing in timings.items()}


# --------------------------------------------------------------------------------------------- selection


def _cost(check: ArtifactCheck, select_by: str) -> float | None:
    """Lower is better: batch-1 p50 latency (ms), or seconds per image at the throughput batch."""
    if check.speed is None:
        return None
    if select_by == "throughput":
        return 1.0 / check.speed.throughput_ips if check.speed.throughput_ips > 0 else None
    return check.speed.latency_ms["p50"]


def _describe(check: ArtifactCheck, select_by: str) -> str:
    assert check.speed is not None
    if select_by == "throughput":
        return f"{check.speed.throughput_ips:.1f} img/s at batch {check.speed.batch}"
    return f"p50 {check.speed.latency_ms['p50']:.2f} ms at batch 1"


def _refusal(check: ArtifactCheck, *, reference_map: Mapping[str, float], policy: SelectionPolicy) -> str | None:
    """Why ``check`` may not ship regardless of speed (``None``: it may)."""
    if check.status != "built":
        return f"{check.status}: {check.reason}" if check.reason else check.status
    if policy.target_hardware not in check.hardware:
        return f"refused: runs on {'/'.join(check.hardware)}, export.target_hardware is {policy.target_hardware}"
    drop = policy.max_map_drop[check.precision]
    short = map_shortfalls(check.map50_95, reference_map, drop)
    if short:
        parts = [
            f"{name} {'not evaluated' if got is None else f'{got:.4f}'} < PyTorch {ref:.4f} - {drop}"
            for name, (got, ref) in short.items()
        ]
        return f"refused: mAP50-95 {'; '.join(parts)} ({check.precision} tolerance)"
    if check.parity is not None and not check.parity.passed:
        p = check.parity
        return (
            f"refused: collapsed against PyTorch, {p.matched}/{p.reference} top detections reproduced "
            f"(needs {p.min_match:.0%}; worst score diff {p.worst_score_diff}, box diff {p.worst_box_diff_px} px)"
        )
    if _cost(check, policy.select_by) is None:
        return "refused: not benchmarked"
    return None


def select_artifact(
    candidates: Sequence[ArtifactCheck], *, reference_map: Mapping[str, float], policy: SelectionPolicy
) -> Selection:
    """Pick the artifact to deploy on ``policy.target_hardware`` and say why each candidate was taken or not.

    Rules, in order: a candidate must be built, run on the target hardware, lose at most
    ``policy.max_map_drop[precision]`` mAP50-95 on every reference set, and not have collapsed in the
    parity check. A reduced-precision candidate must also be ``policy.min_speedup`` times faster than its
    sibling (``ArtifactCheck.sibling``, or the fallback when the sibling was not measured). Of those, the
    fastest (``policy.select_by``) ships; ties keep the candidates' order. The fallback (FP32 ONNX) must
    itself pass: if it fails, nothing ships, because every other artifact is derived from it.

    Args:
        candidates: one check per target, in build order.
        reference_map: PyTorch mAP50-95 per evaluation set.
        policy: the selection rules.

    Returns:
        The chosen candidate (or ``None``) and one reason per candidate target.
    """
    by_name = {c.target: c for c in candidates}
    reasons: dict[str, str] = {}
    eligible: list[ArtifactCheck] = []
    for check in candidates:
        refusal = _refusal(check, reference_map=reference_map, policy=policy)
        if refusal is None and check.precision != "fp32":
            refusal = _speedup_refusal(check, by_name, policy)
        if refusal is None:
            eligible.append(check)
        else:
            reasons[check.target] = refusal
    fallback = by_name.get(policy.fallback)
    if fallback is None or policy.fallback in reasons:
        why = "no candidate" if fallback is None else reasons[policy.fallback]
        for check in eligible:
            reasons[check.target] = f"refused: the fallback {policy.fallback} failed ({why}), nothing ships"
        return Selection(chosen=None, reasons_per_target=reasons)
    costs = {c.target: _cost(c, policy.select_by) or 0.0 for c in eligible}  # all measured (see _refusal)
    ranked = sorted(eligible, key=lambda c: costs[c.target])
    chosen = ranked[0]
    if len(ranked) == 1 and chosen.target == policy.fallback:
        reasons[chosen.target] = (
            f"selected as the fallback: no other artifact qualified on {policy.target_hardware} "
            f"({_describe(chosen, policy.select_by)})"
        )
    else:
        gain = (
            f", {costs[policy.fallback] / costs[chosen.target]:.2f}x {policy.fallback}"
            if chosen.target != policy.fallback and costs[chosen.target] > 0
            else ""
        )
        reasons[chosen.target] = (
            f"selected: fastest eligible on {policy.target_hardware} ({_describe(chosen, policy.select_by)}{gain})"
        )
    for check in ranked[1:]:
        reasons[check.target] = (
            f"eligible, slower than {chosen.target} ({_describe(check, policy.select_by)} vs "
            f"{_describe(chosen, policy.select_by)})"
        )
    return Selection(chosen=chosen, reasons_per_target={c.target: reasons[c.target] for c in candidates})


def _speedup_refusal(check: ArtifactCheck, by_name: Mapping[str, ArtifactCheck], policy: SelectionPolicy) -> str | None:
    """Refuse a reduced-precision artifact that is not ``min_speedup`` times faster than its sibling."""
    sibling = by_name.get(check.sibling or "")
    if sibling is None or _cost(sibling, policy.select_by) is None:
        sibling = by_name.get(policy.fallback)
    sibling_cost = None if sibling is None else _cost(sibling, policy.select_by)
    if sibling is None or sibling_cost is None:
        return f"refused: no sibling ({check.sibling} or {policy.fallback}) was measured to prove a speedup"
    own = _cost(check, policy.select_by)
    assert own is not None  # checked by _refusal
    speedup = sibling_cost / own
    if speedup < policy.min_speedup:
        return (
            f"refused: only {speedup:.2f}x faster than {sibling.target} ({_describe(check, policy.select_by)} vs "
            f"{_describe(sibling, policy.select_by)}), export.min_speedup is {policy.min_speedup}"
        )
    return None


# --------------------------------------------------------------------------------------------- stage


def _reference_map(params: Params, weights: Path) -> dict[str, float]:
    """PyTorch mAP per set: from ``reports/evaluate.json`` when it scored this checkpoint, else measured now."""
    report = params.base.paths.reports / "evaluate.json"
    if report.is_file():
        data = json.loads(report.read_text())
        if Path(data["model"]).resolve() == weights.resolve() and set(params.evaluate.sets) <= set(data["sets"]):
            return {name: data["sets"][name]["map50_95"] for name in params.evaluate.sets}
    settings = inference_settings(params)
    return {
        name: evaluate_set(
            weights,
            getattr(params.base.paths, name),
            classes=params.base.classes,
            settings=settings,
            batch=params.evaluate.batch,
            set_name=name,
        ).map50_95
        for name in params.evaluate.sets
    }


def probe_images(params: Params) -> npt.NDArray[np.float32]:
    """The fixed parity/speed images: the first ``export.parity.images`` of the first evaluation set, letterboxed."""
    root = getattr(params.base.paths, params.evaluate.sets[0]) / "images"
    paths = list_images(root)[: params.export.parity.images]
    if not paths:
        raise FileNotFoundError(f"{root}: no images for the export parity check")
    return np.stack([letterbox(load_rgb(p), params.base.imgsz)[0] for p in paths])


def _measure(
    target: ExportTarget,
    built: Built,
    *,
    params: Params,
    reference: dict[str, float],
    reference_output: npt.NDArray[np.float32],
    probe: npt.NDArray[np.float32],
    export_s: float,
) -> ArtifactCheck:
    """Re-evaluate and parity-check one built artifact (:func:`time_built` times them all together)."""
    cfg = params.export
    eval_settings = inference_settings(params)
    eval_batch = params.evaluate.batch if cfg.dynamic else 1
    measured = {
        s: evaluate_set(
            built.path,
            getattr(params.base.paths, s),
            classes=params.base.classes,
            settings=eval_settings,
            batch=eval_batch,
            set_name=s,
        ).map50_95
        for s in params.evaluate.sets
    }
    output = (
        load_detector(built.path, eval_settings).forward(probe)
        if cfg.dynamic
        else _forward_one_by_one(built, probe, eval_settings)
    )
    parity = check_parity(
        reference_output,
        output,
        imgsz=params.base.imgsz,
        top_k=cfg.parity.top_k,
        score_atol=cfg.parity.score_atol.of(target.precision),
        box_atol_px=cfg.parity.box_atol_px.of(target.precision),
        min_match=cfg.parity.min_match,
    )
    return check_artifact(
        target=target.name,
        artifact=built.path,
        reference=reference,
        measured=measured,
        max_drop=cfg.max_map_drop.of(target.precision),
        export_s=export_s,
        precision=target.precision,
        hardware=tuple(target.hardware),
        sibling=target.sibling,
        parity=parity,
        details=built.details,
    )


def speed_settings(params: Params) -> InferenceSettings:
    """The runtime settings every artifact (and PyTorch, in the benchmark) is timed with."""
    return InferenceSettings(
        imgsz=params.base.imgsz,
        threads=params.export.speed.threads,
        device=params.base.device,
        static_shapes=params.export.speed.static_shapes,
        nms_free=params.base.nms_free,
    )


def time_built(
    checks: Sequence[ArtifactCheck], *, params: Params, probe: npt.NDArray[np.float32]
) -> list[ArtifactCheck]:
    """Every built artifact timed side by side (:func:`time_artifacts`); the checks with their speed filled in."""
    cfg = params.export
    built = {c.target: Path(c.path) for c in checks if c.status == "built"}
    speeds = time_artifacts(
        built,
        settings=speed_settings(params),
        images=probe,
        batch=cfg.speed.batch if cfg.dynamic else 1,
        warmup=cfg.speed.warmup,
        runs=cfg.speed.runs,
        batch_runs=cfg.speed.batch_runs,
        rounds=cfg.speed.rounds,
    )
    for name, speed in speeds.items():
        p50, ips = speed.latency_ms["p50"], speed.throughput_ips
        log.info("%s: p50 %s ms at batch 1, %s img/s at batch %s", name, p50, ips, speed.batch)
    return [replace(c, speed=speeds[c.target]) if c.target in speeds else c for c in checks]


def _forward_one_by_one(built: Built, batch: npt.NDArray[np.float32], settings: InferenceSettings) -> Any:
    detector = load_detector(built.path, settings)
    return np.concatenate([detector.forward(batch[i : i + 1]) for i in range(len(batch))])


def _not_built(
    target: ExportTarget, *, status: str, reason: str, reference: dict[str, float], params: Params
) -> ArtifactCheck:
    return ArtifactCheck(
        target=target.name,
        path="",
        size_mb=0.0,
        map50_95={},
        reference_map50_95=reference,
        max_drop=params.export.max_map_drop.of(target.precision),
        passed=False,
        precision=target.precision,
        hardware=tuple(target.hardware),
        sibling=target.sibling,
        status=status,
        reason=reason,
    )


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in LINEAGE_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _host(params: Params) -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": params.export.speed.threads,
        "device": params.base.device,
    }


def _failure_lines(checks: Sequence[ArtifactCheck]) -> list[str]:
    lines = []
    for c in checks:
        if c.status != "built":
            lines.append(f"{c.target}: {c.status}: {c.reason}")
            continue
        if not c.passed:
            lines.append(
                f"{c.target} ({c.path}): mAP50-95 {c.map50_95} vs PyTorch {c.reference_map50_95}, "
                f"allowed drop {c.max_drop}"
            )
        if c.parity is not None and not c.parity.passed:
            lines.append(
                f"{c.target} ({c.path}): collapsed against PyTorch, {c.parity.matched}/{c.parity.reference} "
                f"top detections reproduced (worst box diff {c.parity.worst_box_diff_px} px)"
            )
    return lines


def _export_one(
    target: ExportTarget,
    inputs: ExportInputs,
    *,
    unavailable: str | None,
    out_dir: Path,
    params: Params,
    reference: dict[str, float],
    reference_output: npt.NDArray[np.float32],
    probe: npt.NDArray[np.float32],
) -> ArtifactCheck:
    """Build and re-check one target; a target other than the fallback that raises is recorded as failed."""
    if unavailable:
        log.warning("%s: skipped, %s", target.name, unavailable)
        return _not_built(target, status="skipped", reason=unavailable, reference=reference, params=params)
    try:
        start = time.perf_counter()
        built = target.build(inputs, out_dir=out_dir, params=params)
        export_s = round(time.perf_counter() - start, 2)
        check = _measure(
            target,
            built,
            params=params,
            reference=reference,
            reference_output=reference_output,
            probe=probe,
            export_s=export_s,
        )
    except Exception as exc:
        if target.name == FALLBACK:
            raise
        # an optional target must not stop the fallback from shipping; the report says what broke
        log.exception("%s: build or check failed", target.name)
        reason = f"{type(exc).__name__}: {exc}"
        return _not_built(target, status="failed", reason=reason, reference=reference, params=params)
    healthy = check.passed and (check.parity is None or check.parity.passed)
    log.log(
        logging.INFO if healthy else logging.ERROR,
        "%s: mAP50-95 %s vs PyTorch %s, parity %s/%s%s",
        target.name,
        check.map50_95,
        reference,
        check.parity.matched if check.parity else "-",
        check.parity.reference if check.parity else "-",
        "" if healthy else " (fails its checks: will not ship)",
    )
    return check


def run(params: Params, *, weights: Path | None = None) -> ExportReport:
    """Build every target, re-check each, select the deployable one, write ``reports/export.json``.

    Raises:
        FileNotFoundError: the checkpoint is missing.
        CalibrationError: an INT8 target is listed and the calibration set is empty or too small.
        ExportCheckError: FP32 ONNX lost more than ``export.max_map_drop.fp32`` or collapsed in parity.
    """
    weights = weights or default_model_path(params)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: checkpoint missing; run the train stage first")
    cfg = params.export
    out_dir = params.base.paths.models / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [TARGETS[FALLBACK], *(TARGETS[n] for n in cfg.targets if n != FALLBACK)]
    unavailable = {t.name: t.unavailable(params) for t in targets}
    calibration = (
        load_calibration(params) if any(t.needs_calibration and not unavailable[t.name] for t in targets) else None
    )
    reference = _reference_map(params, weights)
    probe = probe_images(params)
    reference_output = load_detector(weights, inference_settings(params)).forward(probe)
    inputs = ExportInputs(weights=weights, calibration=calibration)
    checks: list[ArtifactCheck] = []
    for target in targets:
        check = _export_one(
            target,
            inputs,
            unavailable=unavailable[target.name],
            out_dir=out_dir,
            params=params,
            reference=reference,
            reference_output=reference_output,
            probe=probe,
        )
        if target.name == FALLBACK:
            inputs = replace(inputs, onnx=Path(check.path))
        checks.append(check)
    checks = time_built(checks, params=params, probe=probe)
    selection = select_artifact(checks, reference_map=reference, policy=SelectionPolicy.from_params(cfg))
    report = ExportReport(
        weights=str(weights),
        params_digest=params.digest(),
        reference_map50_95=reference,
        artifacts=checks,
        selected=selection.summary(),
        selection=selection.reasons_per_target,
        lineage={
            "calibration": None if calibration is None else calibration.lineage(),
            "quantization": cfg.quantization.model_dump(mode="json"),
            "calibration_settings": cfg.calibration.model_dump(mode="json"),
            "versions": _versions(),
        },
        host=_host(params),
    )
    write_json_atomic(params.base.paths.reports / "export.json", asdict(report))
    fallback = checks[0]
    if selection.chosen is None or not fallback.passed:
        raise ExportCheckError(
            "export check failed:\n  " + "\n  ".join(_failure_lines([fallback]) or [selection.reason])
        )
    log.info("selected %s: %s", selection.chosen.target, selection.reason)
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.export [--params P]``."""
    from tasks.env import apply_env

    args = stage_argparser("export", __doc__).parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(load_params(args.params))
    print(json.dumps({"selected": report.selected, "map50_95": {c.target: c.map50_95 for c in report.artifacts}}))


if __name__ == "__main__":
    main()
