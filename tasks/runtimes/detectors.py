"""One detector interface over every artifact format: ONNX, OpenVINO, TensorRT ``.engine``, and a family's checkpoints.

All runtimes share the same pre-processing (centred letterbox to ``imgsz``, RGB, /255) and the same
post-processing, so any difference between a ``.pt`` and its export is the runtime's, not ours.
Two output layouts are decoded:

- NMS-free (YOLO26 one-to-one head, ``train.yolo.nms_free: true``): ``(B, K, 6)`` rows
  ``x1, y1, x2, y2, score, class`` in letterbox pixels;
- raw (one-to-many head, the default): ``(B, 4 + nc, A)`` with ``cx, cy, w, h`` + class scores, followed by
  class-aware NMS.

The runtime is chosen by the artifact's suffix through :data:`LOADERS` (no if/elif over formats in
callers). A model family's training checkpoints (Ultralytics ``.pt``) are opened by the family itself: it adds
its loader with :func:`register_loader` when it is looked up (``tasks.models.family``), so this module never
imports a model library. Stage code never imports Prefect; this module never imports torch unless an
``.engine`` (TensorRT, CUDA hosts only) is loaded.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

PAD_VALUE = 114


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in that image's pixel coordinates.

    Attributes:
        boxes_xyxy: ``(N, 4)`` float32 corners in pixels of the original image.
        confidence: ``(N,)`` float32 scores.
        class_id: ``(N,)`` int64 class indices.
    """

    boxes_xyxy: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.confidence)


@dataclass(frozen=True)
class InferenceSettings:
    """Thresholds and runtime knobs shared by every backend.

    ``static_shapes``: OpenVINO compiles one static-shape model per batch size it meets (a few % faster on
    the CPU, at the cost of one compilation per new batch size); other runtimes ignore it.
    ``nms_free``: which head a training checkpoint runs (the family's inference hint, ``train.yolo.nms_free``);
    exported artifacts carry the head they were exported with and are decoded by their output's layout.
    """

    imgsz: int
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 100
    threads: int = 2
    device: str = "cpu"
    static_shapes: bool = False
    nms_free: bool = False


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the square input: ``input = original * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: int
    pad_y: int
    width: int
    height: int


def letterbox(image_rgb: npt.NDArray[np.uint8], imgsz: int) -> tuple[npt.NDArray[np.float32], Letterbox]:
    """Resize keeping aspect ratio and pad (centred, value 114) to ``imgsz x imgsz``.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB.
        imgsz: side of the square network input.

    Returns:
        ``(3, imgsz, imgsz)`` float32 in [0, 1] and the :class:`Letterbox` to undo it.
    """
    height, width = image_rgb.shape[:2]
    scale = min(imgsz / height, imgsz / width)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = (
        image_rgb
        if (new_w, new_h) == (width, height)
        else cv2.resize(image_rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    )
    dw, dh = (imgsz - new_w) / 2, (imgsz - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(
        resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE, PAD_VALUE, PAD_VALUE)
    )
    # one pass: HWC uint8 -> CHW float32 / 255 (the same float32 division as ``astype`` then ``/ 255.0``)
    chw_u8 = padded.transpose(2, 0, 1)
    chw = np.empty(chw_u8.shape, dtype=np.float32)
    np.divide(chw_u8, np.float32(255.0), out=chw)
    return chw, Letterbox(scale, left, top, width, height)


def _to_original(boxes_xyxy: npt.NDArray[np.float32], box: Letterbox) -> npt.NDArray[np.float32]:
    out = boxes_xyxy.copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - box.pad_x) / box.scale
    out[:, [1, 3]] = (out[:, [1, 3]] - box.pad_y) / box.scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, box.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, box.height)
    return out


def _decode_end2end(rows: npt.NDArray[np.float32], settings: InferenceSettings) -> tuple[Any, Any, Any]:
    keep = rows[:, 4] >= settings.conf
    rows = rows[keep]
    rows = rows[np.argsort(-rows[:, 4], kind="stable")][: settings.max_det]
    return rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64)


def _decode_raw(pred: npt.NDArray[np.float32], settings: InferenceSettings) -> tuple[Any, Any, Any]:
    """Decode one ``(4 + nc, A)`` raw prediction and run class-aware NMS."""
    scores_all = pred[4:].T
    class_id = scores_all.argmax(1)
    scores = scores_all[np.arange(len(class_id)), class_id]
    keep = scores >= settings.conf
    cxcywh, scores, class_id = pred[:4].T[keep], scores[keep], class_id[keep]
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
    if len(scores) == 0:
        return xyxy, scores, class_id
    xywh = np.concatenate([xyxy[:, :2], cxcywh[:, 2:]], axis=1)
    kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), class_id.tolist(), settings.conf, settings.iou)
    idx: npt.NDArray[np.int64] = np.asarray(kept, dtype=np.int64).reshape(-1)
    idx = idx[np.argsort(-scores[idx], kind="stable")][: settings.max_det]
    return xyxy[idx], scores[idx], class_id[idx]


def decode_output(
    output: npt.NDArray[np.float32], boxes: Sequence[Letterbox], settings: InferenceSettings
) -> list[Detections]:
    """Turn a batched network output into per-image :class:`Detections` in original pixels."""
    output = np.asarray(output, dtype=np.float32)
    end2end = output.ndim == 3 and output.shape[2] == 6 and output.shape[1] != 6
    results = []
    for pred, box in zip(output, boxes, strict=True):
        xyxy, scores, cls = _decode_end2end(pred, settings) if end2end else _decode_raw(pred, settings)
        boxes_xyxy = _to_original(np.asarray(xyxy, np.float32), box)
        # an inverted box (x2 <= x1 or y2 <= y1, e.g. a negative predicted width, or one clipped to nothing at
        # the image border) covers no pixel: COCO ignores it, so no consumer may see it as a detection
        solid = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
        results.append(
            Detections(
                boxes_xyxy[solid],
                np.asarray(scores, np.float32)[solid],
                np.asarray(cls, np.int64)[solid],
            )
        )
    return results


class Detector(Protocol):
    """What every backend offers: batched prediction on RGB arrays."""

    settings: InferenceSettings
    path: Path

    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the network on a ``(B, 3, S, S)`` float32 batch and return its raw output."""
        ...


def predict_images(detector: Detector, images_rgb: Sequence[npt.NDArray[np.uint8]]) -> tuple[list[Detections], float]:
    """Detect objects in RGB images (``(H, W, 3)`` uint8 each).

    Returns:
        Per-image detections and the wall time in milliseconds of pre-processing + network + decoding.
    """
    if not images_rgb:
        return [], 0.0
    start = time.perf_counter()
    tensors, boxes = zip(*(letterbox(img, detector.settings.imgsz) for img in images_rgb), strict=True)
    output = detector.forward(np.stack(tensors))
    detections = decode_output(output, boxes, detector.settings)
    return detections, (time.perf_counter() - start) * 1000.0


class OnnxDetector:
    """ONNX Runtime on the CPU (or CUDA when ``device`` is ``cuda`` and the provider exists)."""

    def __init__(self, path: Path, settings: InferenceSettings) -> None:
        import onnxruntime as ort

        self.path, self.settings = path, settings
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if settings.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types per failure
            raise ValueError(f"{path}: ONNX Runtime cannot load this model ({exc})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.session.run(None, {self.input_name: batch})[0]

    def metadata(self) -> dict[str, Any]:
        """Return the model's custom metadata (Ultralytics writes names, imgsz, stride)."""
        raw = self.session.get_modelmeta().custom_metadata_map
        return {key: _literal(value) for key, value in raw.items()}


class OpenVinoDetector:
    """OpenVINO runtime on the CPU; ``path`` is the ``.xml`` or the folder holding it."""

    def __init__(self, path: Path, settings: InferenceSettings) -> None:
        import openvino as ov

        xml = next(path.glob("*.xml"), None) if path.is_dir() else path
        if xml is None or not xml.is_file():
            raise ValueError(f"{path}: no OpenVINO .xml model found")
        self.path, self.settings = xml, settings
        self._core = ov.Core()
        # f32 explicitly: on CPUs with bf16 units OpenVINO otherwise runs FP32 models in bf16 and scores drift
        self._config = {
            "INFERENCE_NUM_THREADS": settings.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        # read once (an unreadable .xml fails here); compiled on first use, one compilation per input shape with
        # static shapes, else one dynamic: a static-shape run never pays for the dynamic compilation (~1 s CPU)
        self._model = self._core.read_model(str(xml))
        self._compiled: dict[tuple[int, ...] | None, tuple[Any, Any]] = {}

    def _request(self, shape: tuple[int, ...] | None) -> tuple[Any, Any]:
        """The compiled model and its request for ``shape`` (None: the dynamic model), compiled once."""
        if shape not in self._compiled:
            model = self._model
            if shape is not None:
                model = model.clone()
                model.reshape(list(shape))
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape]

    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        compiled, request = self._request(tuple(batch.shape) if self.settings.static_shapes else None)
        result = request.infer({0: batch})
        return np.asarray(result[compiled.output(0)])


class TensorRtDetector:
    """A serialized TensorRT engine on a CUDA GPU; torch owns the device buffers (no pycuda needed)."""

    def __init__(self, path: Path, settings: InferenceSettings) -> None:
        try:
            import tensorrt as trt
            import torch
        except ImportError:
            raise ValueError(f"{path}: TensorRT engines need the tensorrt module on a CUDA host") from None
        if not torch.cuda.is_available():
            raise ValueError(f"{path}: TensorRT engines need a CUDA device; none is visible")
        self.path, self.settings = path, settings
        self._torch = torch
        self._device = settings.device if settings.device.startswith("cuda") else "cuda"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{path}: TensorRT cannot load this engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._output_dtype = getattr(torch, np.dtype(trt.nptype(self.engine.get_tensor_dtype(outputs[0]))).name)

    def forward(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = self._torch
        source = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
        self.context.set_input_shape(self.input_name, tuple(source.shape))
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=self._output_dtype, device=self._device)
        self.context.set_tensor_address(self.input_name, int(source.data_ptr()))
        self.context.set_tensor_address(self.output_name, int(out.data_ptr()))
        stream = torch.cuda.current_stream(self._device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return out.float().cpu().numpy()


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _is_openvino(path: Path) -> bool:
    return path.suffix == ".xml" or (path.is_dir() and any(path.glob("*.xml")))


Loader = tuple[Callable[[Path], bool], Callable[[Path, InferenceSettings], Detector]]
"""``(matches(path), open(path, settings))``: one artifact format and the detector that runs it."""

LOADERS: list[Loader] = [
    (lambda p: p.suffix == ".onnx", OnnxDetector),
    (_is_openvino, OpenVinoDetector),
    (lambda p: p.suffix == ".engine", TensorRtDetector),
]


def register_loader(loader: Loader) -> None:
    """Add a model family's checkpoint format (tried before the export formats); registering twice is a no-op."""
    if loader not in LOADERS:
        LOADERS.insert(0, loader)


def load_detector(path: Path, settings: InferenceSettings) -> Detector:
    """Open an artifact with the runtime its format needs.

    Raises:
        FileNotFoundError: the artifact does not exist.
        ValueError: unknown format, or the runtime cannot load it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: model artifact not found")
    for matches, loader in LOADERS:
        if matches(path):
            return loader(path, settings)
    raise ValueError(
        f"{path}: unknown model format (expected .onnx, .engine, an OpenVINO .xml/folder, or a checkpoint of the "
        "model family, which tasks.models.family(params) makes loadable)"
    )
