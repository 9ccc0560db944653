"""Scoring a model artifact on labeled YOLO sets: inference over the images, then COCO metrics.

One code path for detections (:func:`detect_set`, any format :mod:`tasks.runtimes.detectors` loads), two
consumers: :func:`evaluate_set` gives the COCO numbers of one set (the evaluate stage, and the export stage's
per-artifact mAP checks); the gate's scoring pass (:mod:`tasks.targets.gate_scoring`) keeps each set's
per-image COCO matches for its paired bootstrap.

Why here, in ``targets``: scoring reads image sets from disk and runs inference sessions, so it is not ``core``;
it is not ``runtimes`` either (the code a registered model ships), and the export targets' checks need it, so
it sits beside them.

The detection cache (``evaluate.cache``, :mod:`tasks.contracts.detection_cache`): :func:`detect_sets` looks each
set up by the model's, the set's and the settings' hashes before it runs the model, and stores what it computed,
so that the same artifact on the same set is detected once (the gate's candidate ONNX was scored on golden by the
export stage; the champion's golden and older holdouts recur every cycle). A hit gives the stored arrays back
bit for bit, so the numbers equal a miss's; the mean ms per image is the one measured when they were computed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tasks.config import Params
from tasks.contracts import detection_cache
from tasks.contracts.reports.evaluate import SetEvaluation
from tasks.contracts.yolo_labels import LabeledImage, load_rgb, read_labeled_set
from tasks.core.cocoeval import coco_detections, coco_ground_truth, coco_metrics
from tasks.models import family
from tasks.runtimes.detectors import Detections, Detector, InferenceSettings, load_detector, predict_images

log = logging.getLogger(__name__)

# Packages whose version can change an artifact's detections (runtimes, the decoding and image code beneath them).
RUNTIME_PACKAGES = ("onnxruntime", "openvino", "tensorrt", "torch", "ultralytics", "rfdetr", "numpy", "opencv-python")
_TASKS = Path(__file__).resolve().parent.parent
# Our own code between an artifact's bytes and its detections: letterbox, decode, NMS, checkpoint loaders, decoding.
_DECODING_CODE = (_TASKS / "runtimes", _TASKS / "models", _TASKS / "contracts" / "yolo_labels.py", Path(__file__))


@dataclass
class DetectionCache:
    """A stage's handle on the detection cache: where it is (``None``: off) and how its lookups went.

    Attributes:
        folder: the cache folder (:func:`tasks.contracts.detection_cache.cache_folder`); ``None`` never reads or
            writes.
        hits, misses: sets found in the cache, and sets detected (and stored), since this handle was made.
        max_mb: the folder's size bound (``evaluate.cache_max_mb``): least recently used files go first.
    """

    folder: Path | None
    hits: int = 0
    misses: int = 0
    max_mb: int = 1024


def detection_cache_of(params: Params) -> DetectionCache:
    """The cache a stage uses: under ``base.paths.models``'s parent, off when ``evaluate.cache`` is false."""
    cfg = params.evaluate
    folder = detection_cache.cache_folder(params.base.paths.models) if cfg.cache else None
    return DetectionCache(folder, max_mb=cfg.cache_max_mb)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@functools.cache
def cache_environment() -> dict[str, Any]:
    """What beside the model, the set and the settings decides detections: versions, our decoding code, the CPU."""
    flags = detection_cache.environment_flags()
    return {
        "packages": {name: _package_version(name) for name in RUNTIME_PACKAGES},
        "code": detection_cache.source_digest(_DECODING_CODE),
        "machine": platform.machine(),
        "isa": hashlib.sha256(flags.encode()).hexdigest(),
    }


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
    cache: DetectionCache | None = None,
) -> tuple[list[Detections], float]:
    """Run a model over labeled images in batches; return detections and mean ms per image.

    ``warmup`` runs the first batch once untimed first, so that one-off start-up costs (allocations, lazy
    initialisation) stay out of the ms per image when two models' latencies are compared. ``cache``: look the set
    up first and store what was detected (:func:`detect_sets`).
    """
    return detect_sets(model_path, [images], settings, batch=batch, desc=desc, warmup=warmup, cache=cache)[0]


def detect_sets(
    model_path: Path,
    groups: Sequence[Sequence[LabeledImage]],
    settings: InferenceSettings,
    *,
    batch: int,
    desc: str = "",
    warmup: bool = False,
    cache: DetectionCache | None = None,
) -> list[tuple[list[Detections], float]]:
    """Detect each group of images (a set), batches never spanning two; per group, detections and mean ms per image.

    With a ``cache`` whose folder is set, each group is looked up first (key: the artifact's bytes, the group's
    images and labels, ``settings`` and ``batch``, the environment) and each group detected is stored; the model
    is opened only when a group misses. A hit counts in ``cache.hits``, a detected group in ``cache.misses``.
    """
    model_path = Path(model_path)
    start = time.perf_counter()
    keys = cache_keys(model_path, groups, settings, batch=batch, cache=cache)
    if cache is not None and cache.folder is not None:
        log.debug("%s: cache keys of %d sets in %.3f s", model_path, len(groups), time.perf_counter() - start)
    detector: Detector | None = None
    results: list[tuple[list[Detections], float]] = []
    for images, key in zip(groups, keys, strict=True):
        start = time.perf_counter()
        found = cached_detections(cache, key, len(images))
        how = "no cache" if key is None else "cache hit" if found is not None else "cache miss"
        if found is None:
            if detector is None:
                detector = load_detector(model_path, settings)
                if warmup and images:
                    predict_images(detector, [load_rgb(item.path) for item in images[:batch]])
            found = _detect(detector, images, batch=batch, desc=desc or f"detect {model_path.name}")
            store_detections(cache, key, found)
        log.debug(  # each scoring of a cycle with its seconds (issue 15 measured the redundant ones with it)
            "%s: %s on %s: %d images, %.2f s (%s)",
            desc or "detect",
            model_path,
            images[0].path.parent.parent if images else "no images",
            len(images),
            time.perf_counter() - start,
            how,
        )
        results.append(found)
    return results


def _detect(
    detector: Detector, images: Sequence[LabeledImage], *, batch: int, desc: str
) -> tuple[list[Detections], float]:
    detections: list[Detections] = []
    total_ms = 0.0
    for start in tqdm(range(0, len(images), batch), desc=desc, unit="batch", leave=False):
        chunk = images[start : start + batch]
        dets, ms = predict_images(detector, [load_rgb(item.path) for item in chunk])
        detections.extend(dets)
        total_ms += ms
    return detections, total_ms / max(len(images), 1)


def cache_keys(
    model_path: Path,
    groups: Sequence[Sequence[LabeledImage]],
    settings: InferenceSettings,
    *,
    batch: int,
    cache: DetectionCache | None,
) -> list[str | None]:
    """Each group's cache key (see :func:`detect_sets`); ``None`` for each when the cache is off."""
    if cache is None or cache.folder is None:
        return [None] * len(groups)
    model = detection_cache.model_digest(model_path)
    knobs = dataclasses.asdict(settings) | {"batch": batch}
    environment = cache_environment()
    return [
        detection_cache.cache_key(
            model=model, data=detection_cache.set_digest(images), settings=knobs, environment=environment
        )
        for images in groups
    ]


def cached_detections(
    cache: DetectionCache | None, key: str | None, images: int
) -> tuple[list[Detections], float] | None:
    """The stored detections and ms per image of ``images`` images under ``key`` (a hit), or ``None`` (a miss)."""
    if cache is None or cache.folder is None or key is None:
        return None
    stored = detection_cache.read_detections(cache.folder, key, images=images)
    if stored is None:
        return None
    cache.hits += 1
    detections = [
        Detections(boxes_xyxy=b, confidence=c, class_id=k)
        for b, c, k in zip(stored.boxes, stored.confidence, stored.class_id, strict=True)
    ]
    return detections, stored.ms_per_image


def store_detections(cache: DetectionCache | None, key: str | None, found: tuple[list[Detections], float]) -> None:
    """Store a detected group under ``key`` (counted as a miss) and keep the folder within its bound; a disk that
    refuses costs the reuse only."""
    if cache is None or cache.folder is None or key is None:
        return
    cache.misses += 1
    detections, ms = found
    try:
        detection_cache.write_detections(
            cache.folder,
            key,
            boxes=[d.boxes_xyxy for d in detections],
            confidence=[d.confidence for d in detections],
            class_id=[d.class_id for d in detections],
            ms_per_image=ms,
        )
        detection_cache.prune(cache.folder, max_bytes=cache.max_mb * 2**20, keep=key)
    except OSError as exc:  # a full or read-only disk costs the reuse, never the stage
        log.warning("detection cache %s: not written (%s); the next scoring detects again", cache.folder, exc)


def evaluate_set(
    model_path: Path,
    set_root: Path,
    *,
    classes: Sequence[str],
    settings: InferenceSettings,
    batch: int,
    set_name: str = "",
    cache: DetectionCache | None = None,
) -> SetEvaluation:
    """COCO-evaluate one model artifact on one YOLO-format set (``cache``: see :func:`detect_sets`)."""
    images = read_labeled_set(set_root, num_classes=len(classes))
    detections, ms = detect_set(
        model_path, images, settings, batch=batch, desc=f"evaluate {set_name or set_root}", cache=cache
    )
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
