"""Stage ``evaluate``: COCO mAP of any model artifact on labeled image sets.

Contract:
    inputs: a model artifact (``.pt``, ``.onnx`` or OpenVINO; default ``<models>/train/best.pt``) and the
        YOLO-format sets named in ``evaluate.sets`` (``base.paths`` entries);
    params: ``base`` (classes, imgsz, device, paths), ``evaluate``;
    outputs: ``<reports>/evaluate.json`` with mAP50-95, mAP50, the 12 COCO stats and per-class AP per set;
    side effects: none besides the report.

Metrics come from faster-coco-eval (identical to pycocotools); detections from :mod:`tasks.runtimes.detectors`,
so every artifact format is scored by the same code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tasks.config import Params, load_params, stage_argparser
from tasks.contracts.yolo_labels import LabeledImage, load_rgb, read_labeled_set
from tasks.core.boxes import xywhn_to_xyxy, xyxy_to_xywh
from tasks.io import write_json_atomic
from tasks.runtimes.detectors import Detections, InferenceSettings, load_detector, predict_images

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


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


@dataclass(frozen=True)
class SetEvaluation:
    """Metrics of one model on one labeled set."""

    set_name: str
    path: str
    images: int
    boxes: int
    map50_95: float
    map50: float
    stats: dict[str, float]
    per_class_ap: dict[str, float]
    ms_per_image: float


@dataclass(frozen=True)
class EvaluateReport:
    """What ``reports/evaluate.json`` holds."""

    model: str
    sets: dict[str, SetEvaluation] = field(default_factory=dict)
    params_digest: str = ""

    def map50_95(self, set_name: str) -> float:
        return self.sets[set_name].map50_95


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


def coco_ground_truth(images: Sequence[LabeledImage], classes: Sequence[str]) -> dict[str, Any]:
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


def coco_detections(per_image: Sequence[Detections]) -> list[dict[str, Any]]:
    """Convert per-image detections (image ids = index + 1, as in :func:`coco_ground_truth`) to COCO results."""
    results = []
    for index, det in enumerate(per_image, start=1):
        for box, score, cls in zip(xyxy_to_xywh(det.boxes_xyxy), det.confidence, det.class_id, strict=True):
            results.append(
                {"image_id": index, "category_id": int(cls) + 1, "bbox": [float(v) for v in box], "score": float(score)}
            )
    return results


def detect_set(
    model_path: Path,
    images: Sequence[LabeledImage],
    settings: InferenceSettings,
    *,
    batch: int,
    desc: str = "",
    warmup: bool = False,
) -> tuple[list[Detections], float]:
    """Run a model over labeled images in batches; return detections and mean ms per image.

    ``warmup`` runs the first batch once untimed first, so that one-off start-up costs (allocations, lazy
    initialisation) stay out of the ms per image when two models' latencies are compared.
    """
    detector = load_detector(model_path, settings)
    if warmup and images:
        predict_images(detector, [load_rgb(item.path) for item in images[:batch]])
    detections: list[Detections] = []
    total_ms = 0.0
    for start in tqdm(
        range(0, len(images), batch), desc=desc or f"detect {model_path.name}", unit="batch", leave=False
    ):
        chunk = images[start : start + batch]
        dets, ms = predict_images(detector, [load_rgb(item.path) for item in chunk])
        detections.extend(dets)
        total_ms += ms
    return detections, total_ms / max(len(images), 1)


def evaluate_set(
    model_path: Path,
    set_root: Path,
    *,
    classes: Sequence[str],
    settings: InferenceSettings,
    batch: int,
    set_name: str = "",
) -> SetEvaluation:
    """COCO-evaluate one model artifact on one YOLO-format set."""
    images = read_labeled_set(set_root, num_classes=len(classes))
    detections, ms = detect_set(model_path, images, settings, batch=batch, desc=f"evaluate {set_name or set_root}")
    result = coco_metrics(coco_ground_truth(images, classes), coco_detections(detections))
    return SetEvaluation(
        set_name=set_name or set_root.name,
        path=str(set_root),
        images=len(images),
        boxes=int(sum(len(item.class_id) for item in images)),
        map50_95=result.map50_95,
        map50=result.map50,
        stats=result.stats,
        per_class_ap=result.per_class_ap,
        ms_per_image=ms,
    )


def inference_settings(params: Params, *, threads: int | None = None) -> InferenceSettings:
    """The evaluation thresholds of ``params`` (low confidence, as COCO mAP needs the full PR curve)."""
    return InferenceSettings(
        imgsz=params.base.imgsz,
        conf=params.evaluate.conf,
        iou=params.evaluate.iou,
        max_det=params.evaluate.max_det,
        threads=threads or params.predict.threads,
        device=params.base.device,
        nms_free=params.base.nms_free,
    )


def default_model_path(params: Params) -> Path:
    """The trained checkpoint the ``train`` stage writes."""
    return params.base.paths.models / "train" / "best.pt"


def run(params: Params, *, model_path: Path | None = None, report_path: Path | None = None) -> EvaluateReport:
    """Evaluate a model artifact on every set in ``evaluate.sets`` and write the report.

    Args:
        params: validated config.
        model_path: artifact to score (default: the ``train`` stage's ``best.pt``).
        report_path: where to write JSON (default ``<reports>/evaluate.json``; ``None`` keeps the default).
    """
    model_path = model_path or default_model_path(params)
    settings = inference_settings(params)
    start = time.perf_counter()
    sets = {}
    for name in params.evaluate.sets:
        root = getattr(params.base.paths, name)
        sets[name] = evaluate_set(
            model_path, root, classes=params.base.classes, settings=settings, batch=params.evaluate.batch, set_name=name
        )
        log.info(
            "%s on %s: mAP50-95 %.4f  mAP50 %.4f  (%d images)",
            model_path.name,
            name,
            sets[name].map50_95,
            sets[name].map50,
            sets[name].images,
        )
    report = EvaluateReport(model=str(model_path), sets=sets, params_digest=params.digest())
    payload = asdict(report) | {"wall_s": round(time.perf_counter() - start, 2)}
    write_json_atomic(report_path or params.base.paths.reports / "evaluate.json", payload)
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.evaluate [--params P] [--model PATH]``."""
    from tasks.env import apply_env

    parser = stage_argparser("evaluate", __doc__)
    parser.add_argument("--model", type=Path, default=None, help="artifact to score (default: train/best.pt)")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(load_params(args.params), model_path=args.model)
    print(json.dumps({name: round(s.map50_95, 4) for name, s in report.sets.items()}))


if __name__ == "__main__":
    main()
