"""Box format conversions.

Formats (names carry them):
- ``xyxy``: ``(N, 4)`` corners ``x1, y1, x2, y2`` in pixels.
- ``xyxyn``: ``(N, 4)`` corners normalised by image width/height, in [0, 1].
- ``xywhn``: ``(N, 4)`` YOLO label format: centre ``cx, cy`` and ``w, h`` normalised.
- ``xywh``: ``(N, 4)`` COCO format: top-left ``x, y`` and ``w, h`` in pixels.

Inputs are never mutated; every function returns a new ``float64`` array and accepts ``(0, 4)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def as_boxes(boxes: npt.ArrayLike) -> FloatArray:
    """``boxes`` as a float64 ``(N, 4)`` array (empty input: ``(0, 4)``); any other shape is a ValueError."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def xywhn_to_xyxy(boxes_xywhn: npt.ArrayLike, *, width: int, height: int) -> FloatArray:
    """Convert YOLO ``(N, 4)`` normalised centre boxes to pixel corners ``xyxy``."""
    b = as_boxes(boxes_xywhn)
    scale = np.array([width, height, width, height], dtype=np.float64)
    half = b[:, 2:] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1) * scale


def xyxy_to_xywhn(boxes_xyxy: npt.ArrayLike, *, width: int, height: int) -> FloatArray:
    """Convert pixel corners ``(N, 4)`` to YOLO normalised centre boxes."""
    b = as_boxes(boxes_xyxy)
    scale = np.array([width, height, width, height], dtype=np.float64)
    wh = b[:, 2:] - b[:, :2]
    return np.concatenate([b[:, :2] + wh / 2, wh], axis=1) / scale


def xyxy_to_xyxyn(boxes_xyxy: npt.ArrayLike, *, width: int, height: int) -> FloatArray:
    """Normalise pixel corners ``(N, 4)`` by image size, clipped to [0, 1]."""
    b = as_boxes(boxes_xyxy)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(b / scale, 0.0, 1.0)


def xyxy_to_xywh(boxes_xyxy: npt.ArrayLike) -> FloatArray:
    """Convert pixel corners ``(N, 4)`` to COCO ``x, y, w, h`` pixels."""
    b = as_boxes(boxes_xyxy)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def clip_xyxy(boxes_xyxy: npt.ArrayLike, *, width: int, height: int) -> FloatArray:
    """Clip pixel corners ``(N, 4)`` to the image rectangle."""
    b = as_boxes(boxes_xyxy)
    upper = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(b, 0.0, upper)
