"""Label Studio ↔ YOLO conversion helpers: pure functions, no SDK, no I/O.

Used by the ``label`` stage (:mod:`tasks.label`, both backends) and the annotator simulator
(:mod:`tasks.sim.annotator`). Names shared with the labeling config live here, once.

Formats (names carry them):
- ``xyxy``: ``(N, 4)`` pixel corners ``x1, y1, x2, y2`` (the prediction log's format).
- ``xywhp``: ``(N, 4)`` Label Studio rectangle values ``x, y, width, height`` in *percent* of the image
  (top-left corner, rotation-free), what a ``rectanglelabels`` region stores under ``value``.
- ``xywhn``: ``(N, 4)`` YOLO label format: centre ``cx, cy`` and ``w, h`` normalised to [0, 1].

Boxes at the image border: a region that sticks out of the image is clipped to it; one that lies entirely
outside, or has zero width or height (after clipping), is *rejected*: left out of the label file and
reported with its task and reason (an annotator's stray click must not block a whole collection, and must
not become a degenerate YOLO box). A label name that is not in ``base.classes`` is an error naming the task:
it means the project's labeling config and the params disagree.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import numpy.typing as npt

from tasks.config import VisionloopError
from tasks.contracts.yolo_labels import format_label_text
from tasks.core.boxes import as_boxes

FROM_NAME = "label"
"""``name`` of the RectangleLabels control (``from_name`` of every region)."""
TO_NAME = "image"
"""``name`` of the Image object (``to_name`` of every region)."""
DATA_KEY = "image"
"""Task data key holding the image URL (``$image`` in the labeling config)."""
REGION_TYPE = "rectanglelabels"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
"""URL prefix under which Label Studio serves files below ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``."""

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
_MIN_PCT = 1e-9  # a side at or below this (in percent) is a zero-size box

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class LabelConversionError(VisionloopError, ValueError):
    """A Label Studio task or annotation cannot be converted; the message names the task."""


@dataclass(frozen=True)
class Decision:
    """What one Label Studio task amounts to after choosing among its annotations.

    Attributes:
        status: ``labeled`` (a non-cancelled annotation exists), ``skipped`` (every annotation was
            cancelled/skipped) or ``pending`` (no annotation yet).
        annotation: the chosen annotation (the latest non-cancelled one; for ``skipped`` the latest
            cancelled one), or None when pending.
    """

    status: str
    annotation: Mapping[str, Any] | None = None

    @property
    def annotation_id(self) -> int | None:
        """Id of the chosen annotation (None when pending or the export carries none)."""
        value = self.annotation.get("id") if self.annotation else None
        return int(value) if value is not None else None

    @property
    def annotation_updated_at(self) -> dt.datetime | None:
        """When the chosen annotation was last saved (UTC), None when unknown."""
        return annotation_time(self.annotation) if self.annotation else None


@dataclass(frozen=True)
class YoloLabel:
    """One image's YOLO ground truth converted from an annotation.

    Attributes:
        class_id: ``(N,)`` class indices into the project's class list.
        boxes_xywhn: ``(N, 4)`` YOLO normalised centre boxes, inside [0, 1].
        rejected: one human-readable reason per region left out (zero-size, outside the image, not a box).
    """

    class_id: IntArray
    boxes_xywhn: FloatArray
    rejected: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        """Render the label file: one ``class cx cy w h`` line per box; ``""`` for an image with no objects."""
        return format_label_text(self.class_id, self.boxes_xywhn)


def labeling_config(classes: Sequence[str]) -> str:
    """Return the Label Studio labeling config for rotation-free boxes of ``classes`` over one image.

    The label order is the project's class order (``base.classes``); names are XML-escaped.

    Raises:
        ValueError: ``classes`` is empty or has duplicates.
    """
    if not classes:
        raise ValueError("classes is empty: the labeling config needs at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {list(classes)}")
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr(_PALETTE[i % len(_PALETTE)])}/>"
        for i, name in enumerate(classes)
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${DATA_KEY}" zoom="true"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}" canRotate="false">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def config_classes(config_xml: str) -> list[str]:
    """Return the label values of the :data:`FROM_NAME` RectangleLabels control of a labeling config, in order.

    Returns an empty list when the config has no such control.
    """
    import xml.etree.ElementTree as ET  # stdlib; parsing only configs we or the server wrote

    root = ET.fromstring(config_xml)
    for control in root.iter("RectangleLabels"):
        if control.get("name") == FROM_NAME:
            return [str(label.get("value")) for label in control.iter("Label")]
    return []


def local_files_url(relative_path: str) -> str:
    """Return the task URL of a file at ``relative_path`` (POSIX, relative to the document root)."""
    from urllib.parse import quote

    return LOCAL_FILES_PREFIX + quote(relative_path, safe="/")


def xyxy_to_xywhp(boxes_xyxy: npt.ArrayLike, *, width: int, height: int) -> FloatArray:
    """Convert pixel corners ``(N, 4)`` to Label Studio percent boxes ``(N, 4)`` clipped to the image.

    Args:
        boxes_xyxy: ``(N, 4)`` pixel corners; N may be 0.
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).

    Returns:
        ``(N, 4)`` ``x, y, width, height`` in percent, corners clipped to [0, 100].
    """
    b = as_boxes(boxes_xyxy)
    scale = np.array([width, height, width, height], dtype=np.float64)
    corners = np.clip(b / scale * 100.0, 0.0, 100.0)
    return np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)


def xywhp_to_xywhn(boxes_xywhp: npt.ArrayLike) -> FloatArray:
    """Convert rotation-free Label Studio percent boxes ``(N, 4)`` to YOLO ``xywhn`` (no clipping)."""
    b = as_boxes(boxes_xywhp) / 100.0
    return np.concatenate([b[:, :2] + b[:, 2:] / 2, b[:, 2:]], axis=1)


def xywhn_to_xywhp(boxes_xywhn: npt.ArrayLike) -> FloatArray:
    """Convert YOLO ``xywhn`` ``(N, 4)`` to Label Studio percent boxes (top-left ``x, y``, ``width, height``)."""
    b = as_boxes(boxes_xywhn)
    return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], axis=1) * 100.0


def rectangle_regions(
    boxes_xywhp: npt.ArrayLike,
    labels: Sequence[str],
    *,
    width: int,
    height: int,
    scores: Sequence[float] | None = None,
    id_prefix: str = "r",
) -> list[dict[str, Any]]:
    """Build ``rectanglelabels`` result regions (what predictions and annotations carry).

    Args:
        boxes_xywhp: ``(N, 4)`` percent boxes.
        labels: ``N`` class names.
        width: original image width in pixels (stored as ``original_width``).
        height: original image height in pixels.
        scores: optional ``N`` per-region scores (predictions).
        id_prefix: region ids are ``<prefix><index>``.

    Returns:
        ``N`` region dicts.
    """
    boxes = as_boxes(boxes_xywhp)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(
            f"{len(boxes)} boxes but {len(labels)} labels / {None if scores is None else len(scores)} scores"
        )
    regions = []
    for i, (box, name) in enumerate(zip(boxes, labels, strict=True)):
        region: dict[str, Any] = {
            "id": f"{id_prefix}{i}",
            "type": REGION_TYPE,
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {
                "x": float(box[0]),
                "y": float(box[1]),
                "width": float(box[2]),
                "height": float(box[3]),
                "rotation": 0,
                "rectanglelabels": [name],
            },
        }
        if scores is not None:
            region["score"] = float(scores[i])
        regions.append(region)
    return regions


def annotation_time(annotation: Mapping[str, Any]) -> dt.datetime | None:
    """Return an annotation's ``updated_at`` (else ``created_at``) as an aware UTC datetime, None when absent."""
    value = annotation.get("updated_at") or annotation.get("created_at")
    return parse_time(value) if value else None


def parse_time(value: str | dt.datetime) -> dt.datetime:
    """Parse a Label Studio timestamp (ISO 8601, ``Z`` or offset; naive means UTC) into an aware UTC datetime."""
    stamp = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC)


def choose_annotation(annotations: Sequence[Mapping[str, Any]]) -> Decision:
    """Pick the annotation that counts for a task.

    The latest non-cancelled annotation wins (by ``updated_at``, then ``created_at``, then ``id``); a task
    whose annotations are all cancelled (skipped in the UI) is ``skipped``; no annotation is ``pending``.

    Args:
        annotations: the task's annotations as the API or a JSON export returns them (dicts).

    Returns:
        A :class:`Decision`.
    """
    if not annotations:
        return Decision("pending")
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)

    def key(a: Mapping[str, Any]) -> tuple[dt.datetime, int]:
        return (annotation_time(a) or epoch, int(a.get("id") or 0))

    kept = [a for a in annotations if not a.get("was_cancelled")]
    if kept:
        return Decision("labeled", max(kept, key=key))
    return Decision("skipped", max(annotations, key=key))


def annotation_to_yolo(result: Sequence[Mapping[str, Any]], *, classes: Sequence[str], where: str) -> YoloLabel:
    """Convert an annotation's ``result`` regions to YOLO boxes with the project's own class order.

    Regions of another type or control are left out (rejected with a reason). A rotated rectangle
    becomes its axis-aligned bounding box (needs ``original_width``/``original_height``). Boxes are
    clipped to the image; zero-size or fully outside boxes are rejected (see the module docstring).

    Args:
        result: the annotation's regions.
        classes: the class list (``base.classes``); its index is the YOLO class id.
        where: names the task in messages, e.g. ``"task 12 (image 2026-11-02_000003)"``.

    Returns:
        A :class:`YoloLabel`.

    Raises:
        LabelConversionError: a label not in ``classes``, not exactly one label on a box, or a
            malformed box value (the message names ``where`` and the region).
    """
    index = {name: i for i, name in enumerate(classes)}
    class_ids: list[int] = []
    boxes: list[list[float]] = []
    rejected: list[str] = []
    for n, region in enumerate(result):
        rid = f"{where} region {region.get('id', n)!s}"
        if region.get("type") != REGION_TYPE or region.get("from_name") != FROM_NAME:
            rejected.append(f"{rid}: not a {FROM_NAME}/{REGION_TYPE} box (type {region.get('type')!r}), left out")
            continue
        value = region.get("value") or {}
        names = value.get(REGION_TYPE) or []
        if len(names) != 1:
            raise LabelConversionError(f"{rid}: expected exactly one label on a box, got {names}")
        if names[0] not in index:
            raise LabelConversionError(
                f"{rid}: label {names[0]!r} not in base.classes {list(classes)}; the Label Studio project's "
                "labeling config and params.yaml disagree (re-run the label stage to update the config, or relabel)"
            )
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            rotation = float(value.get("rotation") or 0.0)
        except (KeyError, TypeError, ValueError) as exc:
            raise LabelConversionError(f"{rid}: malformed box value {dict(value)} ({exc})") from None
        if rotation % 360:
            x1, y1, x2, y2 = _rotated_bbox_pct(x, y, w, h, rotation, region, rid)
        else:
            x1, y1, x2, y2 = x, y, x + w, y + h
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise LabelConversionError(f"{rid}: non-finite box value {dict(value)}")
        if x2 - x1 <= _MIN_PCT or y2 - y1 <= _MIN_PCT:
            rejected.append(f"{rid}: zero-size box ({w:.4g}% x {h:.4g}%), left out")
            continue
        cx1, cy1 = min(max(x1, 0.0), 100.0), min(max(y1, 0.0), 100.0)
        cx2, cy2 = min(max(x2, 0.0), 100.0), min(max(y2, 0.0), 100.0)
        if cx2 - cx1 <= _MIN_PCT or cy2 - cy1 <= _MIN_PCT:
            rejected.append(f"{rid}: box lies outside the image ({x1:.4g}, {y1:.4g}, {x2:.4g}, {y2:.4g} %), left out")
            continue
        class_ids.append(index[names[0]])
        boxes.append([cx1, cy1, cx2 - cx1, cy2 - cy1])
    return YoloLabel(
        class_id=np.asarray(class_ids, dtype=np.int64),
        boxes_xywhn=xywhp_to_xywhn(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)),
        rejected=rejected,
    )


def _rotated_bbox_pct(
    x: float, y: float, w: float, h: float, rotation: float, region: Mapping[str, Any], rid: str
) -> tuple[float, float, float, float]:
    """Axis-aligned box (percent corners) of a rectangle rotated clockwise about its top-left corner."""
    width, height = region.get("original_width"), region.get("original_height")
    if not width or not height:
        raise LabelConversionError(f"{rid}: rotated box without original_width/original_height cannot be converted")
    px, py, pw, ph = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    xs, ys = [], []
    for dx, dy in ((0.0, 0.0), (pw, 0.0), (pw, ph), (0.0, ph)):
        xs.append(px + dx * cos - dy * sin)
        ys.append(py + dx * sin + dy * cos)
    return (min(xs) / width * 100, min(ys) / height * 100, max(xs) / width * 100, max(ys) / height * 100)
