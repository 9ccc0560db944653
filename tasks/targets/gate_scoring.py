"""The gate's scoring pass: each model run once over every gate set, its per-image COCO matches kept.

:func:`score_model` detects with the same code as the evaluate stage (:func:`tasks.targets.scoring.detect_set`),
matches each set with COCO's rules (:func:`tasks.core.coco.match_coco`) and keeps the matches for the paired
bootstrap of :func:`tasks.decisions.gate.compare`. On every set it checks that the matches reproduce
faster-coco-eval's mAP50-95 (:func:`score_coco`): a gate whose numbers disagree with COCO stops.

Apart from :mod:`tasks.targets.scoring` so that the evaluate and export stages, which score artifacts too, do
not depend on the gate's rules.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.config import Params, VisionloopError
from tasks.contracts.yolo_labels import LabeledImage, read_labeled_set
from tasks.core.coco import SetScore, match_coco, score_matches
from tasks.core.cocoeval import coco_detections, coco_ground_truth, coco_metrics
from tasks.decisions.gate import ModelScores
from tasks.runtimes.detectors import Detections
from tasks.targets.scoring import DetectionCache, detect_sets, inference_settings

log = logging.getLogger(__name__)

# The bootstrap's full-set mAP must equal faster-coco-eval's AP to this (checked on every scored set).
MAP_TOLERANCE = 1e-6


class ScoringError(VisionloopError):
    """The gate cannot produce a trustworthy comparison: its mAP disagrees with COCO's on a set."""


def read_set_union(roots: Sequence[Path], classes: Sequence[str]) -> list[LabeledImage]:
    """The labeled images of several YOLO sets, in order (each validated strictly)."""
    images: list[LabeledImage] = []
    for root in roots:
        images.extend(read_labeled_set(root, num_classes=len(classes)))
    return images


def score_detections(
    name: str,
    images: Sequence[LabeledImage],
    detections: Sequence[Detections],
    *,
    classes: Sequence[str],
    paths: Sequence[str] = (),
    model: str = "",
) -> SetScore:
    """Match one model's detections on one set and check the result against faster-coco-eval.

    Args:
        name: set name.
        images: the set's labeled images.
        detections: one :class:`~tasks.runtimes.detectors.Detections` per image, same order.
        classes: class names (index = YOLO class id).
        paths: the set folders, for the report.
        model: artifact name, for messages.

    Raises:
        ScoringError: the matches' mAP50-95 differs from faster-coco-eval's by more than ``MAP_TOLERANCE``.
    """
    gt = coco_ground_truth(images, classes)
    dets = coco_detections(detections)
    return score_coco(name, gt, dets, paths=paths, model=model)


def score_coco(
    name: str,
    ground_truth: dict[str, Any],
    detections: Sequence[dict[str, Any]],
    *,
    paths: Sequence[str] = (),
    model: str = "",
) -> SetScore:
    """:func:`match_coco` + :func:`score_matches`, checked against faster-coco-eval on the same COCO input.

    Raises:
        ScoringError: the two mAP50-95 differ by more than ``MAP_TOLERANCE``.
    """
    score = score_matches(name, match_coco(ground_truth, detections), paths=paths)
    coco = coco_metrics(ground_truth, detections)
    if abs(score.map50_95 - coco.map50_95) > MAP_TOLERANCE:
        raise ScoringError(
            f"{model or 'model'} on {name}: bootstrap mAP50-95 {score.map50_95:.9f} != faster-coco-eval "
            f"{coco.map50_95:.9f}; the gate's matching disagrees with COCO (a bug: report it with this set)"
        )
    log.info("%s on %s: mAP50-95 %.4f (%d images)", model or "model", name, score.map50_95, score.images)
    return dataclasses.replace(score, coco_map50_95=coco.map50_95)


def score_model(
    model_path: Path,
    sets: Mapping[str, Path | Sequence[Path]],
    *,
    params: Params,
    cache: DetectionCache | None = None,
) -> ModelScores:
    """Run a model once over every gate set and keep its per-image COCO matches.

    Args:
        model_path: the artifact (any format :mod:`tasks.runtimes.detectors` loads).
        sets: set name -> a YOLO set folder, or several whose union is the set.
        params: inference thresholds (``evaluate``), classes, image size, device.
        cache: the detection cache, looked up per folder (the champion's golden and older holdouts recur every
            cycle; the candidate's ONNX on golden was scored by the export stage); ``None``: always detect.

    Returns:
        mAP, per-class AP and matches per set, and the mean ms per image over all of them (a folder found in the
        cache brings the ms measured when it was detected: informational, the latency rules time apart).

    Raises:
        ScoringError: the matches' mAP disagrees with faster-coco-eval's by more than ``MAP_TOLERANCE``.
    """
    classes = params.base.classes
    roots = {name: [Path(p)] if isinstance(p, str | Path) else [Path(r) for r in p] for name, p in sets.items()}
    folders = [read_labeled_set(root, num_classes=len(classes)) for paths in roots.values() for root in paths]
    found = detect_sets(
        Path(model_path),
        folders,
        inference_settings(params),
        batch=params.evaluate.batch,
        desc=f"gate {Path(model_path).name}",
        warmup=True,  # both models' ms/image are compared: keep start-up costs out
        cache=cache,
    )
    detections = [d for dets, _ in found for d in dets]
    images = sum(len(items) for items in folders)
    ms = sum(ms * len(items) for (_, ms), items in zip(found, folders, strict=True)) / max(images, 1)
    scores: dict[str, SetScore] = {}
    offset = 0
    per_folder = iter(folders)
    for name, paths in roots.items():
        items = [item for _ in paths for item in next(per_folder)]
        scores[name] = score_detections(
            name,
            items,
            detections[offset : offset + len(items)],
            classes=classes,
            paths=[str(p) for p in paths],
            model=str(model_path),
        )
        offset += len(items)
    return ModelScores(model=str(model_path), sets=scores, ms_per_image=ms)
