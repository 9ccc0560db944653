"""Scoring a model artifact on labeled YOLO sets: inference over the images, then COCO metrics.

One code path for detections (:func:`detect_set`, any format :mod:`tasks.runtimes.detectors` loads), two
consumers: :func:`evaluate_set` gives the COCO numbers of one set (the evaluate stage, and the export stage's
per-artifact mAP checks); the gate's scoring pass (:mod:`tasks.targets.gate_scoring`) keeps each set's
per-image COCO matches for its paired bootstrap.

Why here, in ``targets``: scoring reads image sets from disk and runs inference sessions, so it is not ``core``;
it is not ``runtimes`` either (the code a registered model ships), and the export targets' checks need it, so
it sits beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from tasks.config import Params
from tasks.contracts.reports.evaluate import SetEvaluation
from tasks.contracts.yolo_labels import LabeledImage, load_rgb, read_labeled_set
from tasks.core.cocoeval import coco_detections, coco_ground_truth, coco_metrics
from tasks.models import family
from tasks.runtimes.detectors import Detections, InferenceSettings, load_detector, predict_images


def inference_settings(params: Params, *, threads: int | None = None) -> InferenceSettings:
    """The evaluation thresholds of ``params`` (low confidence, as COCO mAP needs the full PR curve)."""
    return InferenceSettings(
        imgsz=params.base.imgsz,
        conf=params.evaluate.conf,
        iou=params.evaluate.iou,
        max_det=params.evaluate.max_det,
        threads=threads or params.base.threads,
        device=params.base.device,
        nms_free=family(params).inference_hints(params).nms_free,
    )


def predict_settings(params: Params) -> InferenceSettings:
    """The production thresholds (``predict``): what batch prediction runs with and the log holds.

    OpenVINO compiles static shapes as the export stage timed it (``export.speed.static_shapes``).
    """
    return InferenceSettings(
        imgsz=params.base.imgsz,
        conf=params.predict.conf,
        iou=params.predict.iou,
        max_det=params.predict.max_det,
        threads=params.base.threads,
        device=params.base.device,
        static_shapes=params.export.speed.static_shapes,
        nms_free=family(params).inference_hints(params).nms_free,
    )


def default_model_path(params: Params) -> Path:
    """The trained checkpoint the ``train`` stage writes."""
    return params.base.paths.models / "train" / "best.pt"


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
    return score_detections(images, detections, ms, classes=classes, set_root=set_root, set_name=set_name)


def score_detections(
    images: Sequence[LabeledImage],
    detections: Sequence[Detections],
    ms: float,
    *,
    classes: Sequence[str],
    set_root: Path,
    set_name: str = "",
) -> SetEvaluation:
    """COCO numbers of one set from its detections (``detections[i]`` of ``images[i]``; ``ms`` per image)."""
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
