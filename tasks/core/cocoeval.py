"""The reference COCO metrics (faster-coco-eval, identical to pycocotools) and the COCO formats they read.

:func:`coco_metrics` scores COCO results against COCO ground truth; :func:`coco_ground_truth` and
:func:`coco_detections` build those from YOLO labels and per-image detections. Image ids are the index + 1 of an
image in the sequence given (both builders number the same way), category ids the class index + 1.

The builders take any object with the attributes they read (:class:`LabeledBoxes`, :class:`ScoredBoxes`;
``tasks.contracts.yolo_labels.LabeledImage`` and ``tasks.runtimes.detectors.Detections`` are such objects), so
this module imports nothing of ``tasks`` outside ``core``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from tasks.core.boxes import xywhn_to_xyxy, xyxy_to_xywh

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class LabeledBoxes(Protocol):
    """One labeled image as :func:`coco_ground_truth` reads it (``LabeledImage`` of the YOLO labels contract)."""

    @property
    def path(self) -> Path: ...  # image file (its name is the COCO ``file_name``)
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def class_id(self) -> npt.NDArray[np.int64]: ...  # (N,) class indices
    @property
    def boxes_xywhn(self) -> npt.NDArray[np.float64]: ...  # (N, 4) YOLO normalised centre boxes


class ScoredBoxes(Protocol):
    """One image's detections as :func:`coco_detections` reads them (``Detections`` of the runtimes)."""

    @property
    def boxes_xyxy(self) -> npt.NDArray[np.float32]: ...  # (N, 4) corners in pixels
    @property
    def confidence(self) -> npt.NDArray[np.float32]: ...  # (N,)
    @property
    def class_id(self) -> npt.NDArray[np.int64]: ...  # (N,) class indices


@dataclass(frozen=True)
class CocoResult:
    """COCO bbox metrics.

    Attributes:
        stats: the 12 COCOeval stats by name (``AP`` is mAP50-95).
        per_class_ap: AP50-95 per category name (-1 where a class has no ground truth).
    """

    stats: dict[str, float]
    per_class_ap: dict[str, float]

    @property
    def map50_95(self) -> float:
        return self.stats["AP"]

    @property
    def map50(self) -> float:
        return self.stats["AP50"]


def coco_metrics(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]]) -> CocoResult:
    """Score COCO-format detections against COCO-format ground truth (bbox).

    Args:
        ground_truth: COCO dict with ``images``, ``annotations``, ``categories``.
        detections: COCO result list: ``image_id``, ``category_id``, ``bbox`` (x, y, w, h pixels), ``score``.

    Returns:
        The 12 standard stats and per-category AP50-95 (``-1`` for categories without ground truth).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    categories = {c["id"]: c["name"] for c in ground_truth["categories"]}
    if not detections:
        has_gt = {a["category_id"] for a in ground_truth["annotations"]}
        zeros = {name: 0.0 for name in STAT_NAMES}
        return CocoResult(zeros, {name: (0.0 if cid in has_gt else -1.0) for cid, name in categories.items()})
    gt = COCO(ground_truth, print_function=log.debug)
    dt = gt.loadRes(list(detections))
    evaluator = COCOeval_faster(gt, dt, "bbox", print_function=log.debug)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats[:12], strict=True)}
    # precision: [iou thresholds, recall points, categories, area ranges, max dets]; area "all", 100 dets
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        per_class[categories[cat_id]] = float(values.mean()) if values.size else -1.0
    return CocoResult(stats, per_class)


def coco_ground_truth(images: Sequence[LabeledBoxes], classes: Sequence[str]) -> dict[str, Any]:
    """Build a COCO ground-truth dict from YOLO labels (category id = class index + 1, image id = index + 1)."""
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, item in enumerate(images, start=1):
        coco_images.append({"id": index, "file_name": item.path.name, "width": item.width, "height": item.height})
        xywh = xyxy_to_xywh(xywhn_to_xyxy(item.boxes_xywhn, width=item.width, height=item.height))
        for cls, box in zip(item.class_id, xywh, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": int(cls) + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    return {"images": coco_images, "annotations": annotations, "categories": categories}


def coco_detections(per_image: Sequence[ScoredBoxes]) -> list[dict[str, Any]]:
    """Convert per-image detections (image ids = index + 1, as in :func:`coco_ground_truth`) to COCO results."""
    results = []
    for index, det in enumerate(per_image, start=1):
        for box, score, cls in zip(xyxy_to_xywh(det.boxes_xyxy), det.confidence, det.class_id, strict=True):
            results.append(
                {"image_id": index, "category_id": int(cls) + 1, "bbox": [float(v) for v in box], "score": float(score)}
            )
    return results
