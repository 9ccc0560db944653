"""Reduced-precision builders for the ``export`` stage: INT8 with ONNX Runtime and NNCF, TensorRT engines.

Every builder starts from the FP32 ONNX file, writes one artifact and returns a small JSON-able record of
what it did (settings, nodes kept in FP32, the precision actually built) for the report's lineage.

The model family finds the detection head in the graph (``head_nodes``: for YOLO, every node of the last
Ultralytics module, see :meth:`tasks.models.yolo.YoloFamily.head_nodes`). Of those, only convolutions are
quantized; the decoding maths (sigmoids, anchor offsets, top-k) stays FP32 because an INT8 head loses most of
the box precision.

Heavy libraries (onnxruntime.quantization, nncf, openvino, tensorrt, torch) are imported inside functions.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tasks.config import Precision, QuantizationParams

log = logging.getLogger(__name__)

HeadNodes = Callable[[Sequence[str]], frozenset[str]]
"""A model family's ``head_nodes``: of a graph's node names, those of the detection head."""

ONNX_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
OPENVINO_KEPT_OPS = frozenset({"Convolution", "GroupConvolution", "Constant", "Parameter", "Result"})


def onnx_fp32_head_nodes(model: Any, head_nodes: HeadNodes) -> list[str]:
    """Names of the ONNX head nodes to keep in FP32: every node of the head except convolutions.

    Args:
        model: an ``onnx.ModelProto``.
        head_nodes: the model family's head finder.
    """
    nodes = list(model.graph.node)
    head = head_nodes([node.name for node in nodes])
    return [n.name for n in nodes if n.name in head and n.op_type not in ONNX_CONV_OPS]


def openvino_fp32_head_ops(model: Any, head_nodes: HeadNodes) -> list[str]:
    """Friendly names of the OpenVINO head ops to keep in FP32 (a convolution's bias ``Add`` counts as conv).

    Args:
        model: an ``openvino.Model`` converted from the family's ONNX export.
        head_nodes: the model family's head finder.
    """
    ops = model.get_ordered_ops()
    head = head_nodes([op.get_friendly_name() for op in ops])
    kept = []
    for op in ops:
        if op.get_friendly_name() not in head or op.get_type_name() in OPENVINO_KEPT_OPS:
            continue
        if op.get_type_name() == "Add" and op.input_value(0).get_node().get_type_name() in OPENVINO_KEPT_OPS:
            continue  # the bias of a convolution: quantized with it
        kept.append(op.get_friendly_name())
    return kept


class _CalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over ``(N, 3, S, S)`` images, one image per call.

    ``__len__`` and ``set_range`` let ONNX Runtime calibrate in strides (``CalibStridedMinMax``), which
    bounds the memory of the collected activations.
    """

    def __init__(self, input_name: str, images: npt.NDArray[np.float32]) -> None:
        self.input_name = input_name
        self.images = images
        self._iter: Iterator[npt.NDArray[np.float32]] = iter(())
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        item = next(self._iter, None)
        return None if item is None else {self.input_name: item[None]}

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.images[start_index:end_index])

    def rewind(self) -> None:
        self.set_range(0, len(self.images))


def calibration_stride(count: int, *, most: int = 8) -> int:
    """The largest divisor of ``count`` not above ``most`` (ONNX Runtime needs strides that divide the set)."""
    return max(d for d in range(1, min(count, most) + 1) if count % d == 0) if count else 1


def quantize_onnx_int8(
    fp32_onnx: Path,
    out_path: Path,
    *,
    images: npt.NDArray[np.float32],
    config: QuantizationParams,
    method: str,
    head_nodes: HeadNodes,
) -> dict[str, Any]:
    """ONNX Runtime static INT8 (QDQ) calibrated on ``images``; head non-Conv nodes stay FP32 if configured.

    Args:
        fp32_onnx: the FP32 ONNX model (dynamic batch).
        out_path: where to write the quantized ``.onnx``.
        images: calibration inputs, ``(N, 3, S, S)`` float32 in [0, 1], letterboxed like inference.
        config: ``export.quantization``.
        method: ``minmax``, ``entropy`` or ``percentile`` (ONNX Runtime calibrators).
        head_nodes: the model family's head finder (used with ``config.keep_head_fp32``).

    Returns:
        The settings used and the names of the nodes kept in FP32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    scratch = out_path.parent / f".{out_path.stem}-build"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        prepared = scratch / "prepared.onnx"
        # symbolic shape inference fails on the dynamic batch dimension; ONNX shape inference is enough
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        keep = onnx_fp32_head_nodes(model, head_nodes) if config.keep_head_fp32 else []
        calibrators = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        activation = QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8
        quantize_static(
            str(prepared),
            str(out_path),
            _CalibrationReader(model.graph.input[0].name, images),
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            calibrate_method=calibrators[method],
            calibration_providers=["CPUExecutionProvider"],
            # activations are reduced stride by stride: bounded memory at 640 px
            extra_options={"CalibStridedMinMax": calibration_stride(len(images))},
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "per_channel": config.per_channel,
        "activations": config.activations,
        "weights": "int8",
        "calibration_method": method,
        "fp32_nodes": keep,
    }


def quantize_openvino_int8(
    fp32_onnx: Path,
    out_xml: Path,
    *,
    images: npt.NDArray[np.float32],
    config: QuantizationParams,
    head_nodes: HeadNodes,
) -> dict[str, Any]:
    """NNCF post-training INT8 of the OpenVINO model converted from ``fp32_onnx``; writes ``.xml``/``.bin``.

    Args:
        fp32_onnx: the FP32 ONNX model.
        out_xml: where to write the quantized OpenVINO IR.
        images: calibration inputs, ``(N, 3, S, S)`` float32 in [0, 1].
        config: ``export.quantization`` (preset, head handling, bias correction).
        head_nodes: the model family's head finder (used with ``config.keep_head_fp32``).

    Returns:
        The settings used and the names of the ops kept in FP32.
    """
    import nncf
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    keep = openvino_fp32_head_ops(model, head_nodes) if config.keep_head_fp32 else []
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    quantized = nncf.quantize(
        model,
        nncf.Dataset([image[None] for image in images]),
        preset=presets[config.nncf_preset],
        subset_size=len(images),
        fast_bias_correction=config.fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=keep) if keep else None,
    )
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return {
        "tool": "nncf.quantize",
        "preset": config.nncf_preset,
        "fast_bias_correction": config.fast_bias_correction,
        "subset_size": len(images),
        "fp32_ops": keep,
    }


# --------------------------------------------------------------------------------------------- TensorRT


def tensorrt_unavailable() -> str | None:
    """Why this host cannot build or run TensorRT engines, or ``None`` when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python module is not installed (needs an NVIDIA GPU host: pip install tensorrt)"
    try:
        import torch
    except ImportError:  # pragma: no cover, torch is a project dependency
        return "torch is not installed (its CUDA runtime feeds TensorRT's buffers)"
    if not torch.cuda.is_available():
        return "no CUDA device visible (torch.cuda.is_available() is False)"
    return None


def _entropy_calibrator(trt: Any, torch: Any, images: npt.NDArray[np.float32], batch: int, cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``images`` in batches through a CUDA buffer owned by torch."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
            self.index = 0
            self.device = torch.empty((batch, *images.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None
            self.device.copy_(torch.from_numpy(np.ascontiguousarray(self.batches[self.index])))
            self.index += 1
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return None  # always calibrate on this export's images (the cache is written for inspection)

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def layer_precisions(engine_info: dict[str, Any]) -> dict[str, int]:
    """Count engine layers by the data type of their first output, from TensorRT's JSON engine information.

    Args:
        engine_info: ``json.loads(inspector.get_engine_information(LayerInformationFormat.JSON))``.

    Returns:
        ``{"int8": n, "fp16": n, "fp32": n, "other": n}`` (zeros dropped).
    """
    counts: Counter[str] = Counter()
    for layer in engine_info.get("Layers", []):
        outputs = layer.get("Outputs", []) if isinstance(layer, dict) else []
        text = str(outputs[0].get("Format/Datatype", "")) if outputs else ""
        lowered = text.lower()
        kind = (
            "int8"
            if "int8" in lowered
            else "fp16"
            if ("fp16" in lowered or "half" in lowered)
            else "fp32"
            if ("fp32" in lowered or "float" in lowered)
            else "other"
        )
        counts[kind] += 1
    return {k: v for k, v in counts.items() if v}


def built_precision(counts: dict[str, int]) -> str:
    """The lowest precision any layer of the engine actually runs in (``fp32`` when nothing is reduced)."""
    for precision in ("int8", "fp16"):
        if counts.get(precision):
            return precision
    return "fp32"


def build_tensorrt_engine(
    fp32_onnx: Path,
    out_path: Path,
    *,
    precision: Precision,
    imgsz: int,
    max_batch: int,
    images: npt.NDArray[np.float32] | None,
    head_nodes: HeadNodes | None,
    workspace_gib: float = 2.0,
) -> dict[str, Any]:
    """Build a serialized TensorRT engine (FP16, or INT8 with entropy calibration) from the ONNX file.

    The engine has one optimisation profile for batch 1..``max_batch`` at ``imgsz``. For INT8 the head's
    non-Conv layers (``head_nodes``: the model family's head finder; ``None`` quantizes every layer) are
    constrained to FP32 (preferred, TensorRT may override) and FP16 is allowed elsewhere.

    Raises:
        RuntimeError: TensorRT cannot parse the ONNX file or build the engine (its messages are included).
        ValueError: INT8 without calibration images.
    """
    import onnx
    import tensorrt as trt
    import torch

    if precision == "int8" and (images is None or len(images) == 0):
        raise ValueError("TensorRT INT8 needs calibration images")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # explicit batch: a flag before TensorRT 10, the only mode (flag deprecated) since
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(fp32_onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{fp32_onnx}: TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    source = network.get_input(0)
    profile = builder.create_optimization_profile()
    profile.set_shape(source.name, (1, 3, imgsz, imgsz), (max_batch, 3, imgsz, imgsz), (max_batch, 3, imgsz, imgsz))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    kept: list[str] = []
    cache = out_path.with_suffix(".calib")
    if precision == "int8":
        assert images is not None
        config.set_flag(trt.BuilderFlag.INT8)
        calibration_batch = min(max_batch, len(images))
        config.int8_calibrator = _entropy_calibrator(trt, torch, images, calibration_batch, cache)
        calib_profile = builder.create_optimization_profile()
        shape = (calibration_batch, 3, imgsz, imgsz)
        calib_profile.set_shape(source.name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
        if head_nodes is not None:
            names = set(onnx_fp32_head_nodes(onnx.load(str(fp32_onnx)), head_nodes))
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.name in names and layer.num_outputs and layer.get_output(0).dtype == trt.float32:
                    layer.precision = trt.float32
                    kept.append(layer.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{fp32_onnx}: TensorRT failed to build a {precision} engine (see the TensorRT log)")
    out_path.write_bytes(bytes(serialized))
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    counts = layer_precisions(info)
    return {
        "tool": f"tensorrt {trt.__version__}",
        "requested_precision": precision,
        "built_precision": built_precision(counts),
        "layer_precisions": counts,
        "profile_batch": [1, max_batch, max_batch],
        "calibrator": "IInt8EntropyCalibrator2" if precision == "int8" else None,
        "fp32_layers": kept,
        "gpu": torch.cuda.get_device_name(0),
    }
