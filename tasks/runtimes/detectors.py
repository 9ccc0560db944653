"""One detector interface over every artifact format: ONNX, OpenVINO, TensorRT ``.engine``, and a family's checkpoints.

All runtimes share the same pre-processing (centred letterbox to ``imgsz``, RGB, /255) and the same
post-processing, so any difference between a ``.pt`` and its export is the runtime's, not ours.
Two output layouts are decoded:

- NMS-free (YOLO26 one-to-one head, ``train.yolo.nms_free: true``): ``(B, K, 6)`` rows
  ``x1, y1, x2, y2, score, class`` in letterbox pixels;
- raw (one-to-many head, the default): ``(B, 4 + nc, A)`` with ``cx, cy, w, h`` + class scores, followed by
  class-aware NMS. Each kept box also gets its class ``margin`` (top-1 minus top-2 class score of its anchor).

With ``InferenceSettings.evidence_conf`` set (batch prediction: ``predict.evidence_conf``), the decode also keeps
the boxes scoring in ``[evidence_conf, conf)``: the ``max_det`` strongest of them, after one class-aware NMS
together with the detections (so a weaker duplicate of a detection, or of a stronger band box, is suppressed),
and summarises them per image (``evidence_max``, ``evidence_count`` <= ``max_det``). They are never detections, and
the detections are the same as without it (their own NMS is unchanged); the cap keeps the extra NMS small (a weak
model has thousands of anchors in the band at 640 px). Unset (every other caller: evaluation, export checks, the
gate), nothing changes.

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
from typing import Any, NamedTuple, Protocol

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
        margin: ``(N,)`` float32 top-1 minus top-2 class score of each box (NaN for a one-class model), or None
            when the head gives no class vector (end-to-end rows).
        evidence_max: highest score of the image's sub-threshold boxes (module docstring), None when none or off.
        evidence_count: number of those boxes (0 when none or off).
    """

    boxes_xyxy: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]
    margin: npt.NDArray[np.float32] | None = None
    evidence_max: float | None = None
    evidence_count: int = 0

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
    ``evidence_conf``: also summarise the boxes in ``[evidence_conf, conf)`` per image (module docstring); None: off.
    """

    imgsz: int
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 100
    threads: int = 2
    device: str = "cpu"
    static_shapes: bool = False
    nms_free: bool = False
    evidence_conf: float | None = None


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


class _Decoded(NamedTuple):
    """One image's decode in letterbox pixels: the detections, their margins, and the sub-threshold band."""

    xyxy: npt.NDArray[np.float32]  # (N, 4)
    scores: npt.NDArray[np.float32]  # (N,)
    class_id: npt.NDArray[np.int64]  # (N,)
    margin: npt.NDArray[np.float32] | None  # (N,), None: no class vector
    band_xyxy: npt.NDArray[np.float32]  # (M, 4) boxes in [evidence_conf, conf); M = 0 when off
    band_scores: npt.NDArray[np.float32]  # (M,)


def _decode_end2end(rows: npt.NDArray[np.float32], settings: InferenceSettings) -> _Decoded:
    floor = settings.conf if settings.evidence_conf is None else settings.evidence_conf
    band = rows[(rows[:, 4] >= floor) & (rows[:, 4] < settings.conf)]
    band = band[np.argsort(-band[:, 4], kind="stable")][: settings.max_det]
    keep = rows[:, 4] >= settings.conf
    rows = rows[keep]
    rows = rows[np.argsort(-rows[:, 4], kind="stable")][: settings.max_det]
    return _Decoded(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), None, band[:, :4], band[:, 4])


def _decode_raw(pred: npt.NDArray[np.float32], settings: InferenceSettings) -> _Decoded:
    """Decode one ``(4 + nc, A)`` raw prediction and run class-aware NMS (and the evidence band's, when on)."""
    scores_all = pred[4:].T
    class_id = scores_all.argmax(1)
    scores = scores_all[np.arange(len(class_id)), class_id]
    cxcywh = pred[:4].T
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)

    def nms(candidates: npt.NDArray[np.int64], conf: float) -> npt.NDArray[np.int64]:
        """The anchors class-aware NMS keeps among ``candidates`` (OpenCV's order)."""
        if len(candidates) == 0:
            return candidates
        xywh = np.concatenate([xyxy[candidates, :2], cxcywh[candidates, 2:]], axis=1)
        found = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores[candidates].tolist(), class_id[candidates].tolist(), conf, settings.iou
        )
        return candidates[np.asarray(found, dtype=np.int64).reshape(-1)]

    kept = nms(np.flatnonzero(scores >= settings.conf), settings.conf)  # exactly as without evidence
    idx = kept[np.argsort(-scores[kept], kind="stable")][: settings.max_det]
    band = np.zeros(0, np.int64)
    if settings.evidence_conf is not None:
        low = np.flatnonzero((scores >= settings.evidence_conf) & (scores < settings.conf))
        if len(low):  # the band's max_det strongest, NMS-ed with the detections (they come first: higher)
            low = low[np.argsort(-scores[low], kind="stable")][: settings.max_det]
            survivors = nms(np.concatenate([idx, low]), settings.evidence_conf)
            band = survivors[scores[survivors] < settings.conf]
    return _Decoded(xyxy[idx], scores[idx], class_id[idx], _margin(scores_all[idx]), xyxy[band], scores[band])


def _margin(class_scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Top-1 minus top-2 of each ``(N, nc)`` row; NaN for one class (there is no second)."""
    if class_scores.shape[1] < 2:
        return np.full(len(class_scores), np.nan, np.float32)
    top2 = np.partition(class_scores, -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]).astype(np.float32)


def decode_output(
    output: npt.NDArray[np.float32], boxes: Sequence[Letterbox], settings: InferenceSettings
) -> list[Detections]:
    """Turn a batched network output into per-image :class:`Detections` in original pixels."""
    output = np.asarray(output, dtype=np.float32)
    end2end = output.ndim == 3 and output.shape[2] == 6 and output.shape[1] != 6
    results = []
    for pred, box in zip(output, boxes, strict=True):
        decoded = _decode_end2end(pred, settings) if end2end else _decode_raw(pred, settings)
        boxes_xyxy = _to_original(np.asarray(decoded.xyxy, np.float32), box)
        # an inverted box (x2 <= x1 or y2 <= y1, e.g. a negative predicted width, or one clipped to nothing at
        # the image border) covers no pixel: COCO ignores it, so no consumer may see it as a detection
        solid = _solid(boxes_xyxy)
        band = np.asarray(decoded.band_scores, np.float32)[_solid(_to_original(decoded.band_xyxy, box))]
        results.append(
            Detections(
                boxes_xyxy[solid],
                np.asarray(decoded.scores, np.float32)[solid],
                np.asarray(decoded.class_id, np.int64)[solid],
                margin=None if decoded.margin is None else decoded.margin[solid],
                evidence_max=float(band.max()) if len(band) else None,
                evidence_count=len(band),
            )
        )
    return results


def _solid(boxes_xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    return (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])


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
