"""Export targets: one :class:`ExportTarget` per deployable format, chosen by ``export.targets`` from :data:`TARGETS`.

FP32 ONNX (``onnx``) is built first from the checkpoint; every other target starts from it (OpenVINO converts it,
the INT8 targets quantize it with the calibration sample, TensorRT compiles it). A builder writes its artifact
into the export folder and returns :class:`Built` (the path and what it records: settings, FP32 nodes, built
precision); what this host cannot build is told by ``unavailable`` before anything runs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

from tasks.config import Hardware, Params, Precision
from tasks.models import family
from tasks.targets.calibration import Calibration, CalibrationError


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
    """ONNX FP32 by the model family: opset from params, dynamic batch, simplified, no NMS inside."""

    name = "onnx"
    precision: Precision = "fp32"
    hardware: tuple[Hardware, ...] = ("cpu", "cuda")
    sibling: str | None = None
    needs_calibration = False

    def unavailable(self, params: Params) -> str | None:
        return _missing_module("onnxruntime")

    def build(self, inputs: ExportInputs, *, out_dir: Path, params: Params) -> Built:
        cfg = params.export
        target = out_dir / "model.onnx"
        family(params).export_onnx(inputs.weights, target, params=params)
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
            head_nodes=family(params).head_nodes,
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
            head_nodes=family(params).head_nodes,
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
            head_nodes=family(params).head_nodes if params.export.quantization.keep_head_fp32 else None,
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
