"""Stage ``gate``: should the candidate replace the champion? Both are re-scored on the very same images.

Contract:
    inputs: a candidate model artifact and, unless this is the first cycle, the champion's (``.pt``, ``.onnx``
        or OpenVINO); the golden set ``base.paths.golden`` (forgetting check) and the union of every production
        holdout ``base.paths.holdouts/<cycle>/`` that has ``images/`` + ``labels/`` (none yet: that comparison
        is skipped with a reason); for the latency rules, the artifact each model deploys (the candidate's export
        selection, the champion's ``deploy.artifact``; without both, the scored files of both are timed);
    params: ``base`` (classes, imgsz, device, seed, paths), ``evaluate`` (inference thresholds, batch),
        ``predict.threads``, ``export.speed.static_shapes``, ``gate`` (the policy, the bootstrap, ``gate.speed``);
    outputs: ``<reports>/gate.json``: the decision (``promote`` / ``reject``) and its reasons, per-set mAP50-95
        of both models, the paired-bootstrap confidence interval of the difference, per-class AP, and the paired
        latency pass (both per-round series, the per-round ratios, the estimates and bounds, what was timed);
    side effects: none besides the report (promotion itself belongs to the registry).

How: each model's detections are matched to the ground truth once, image by image, with COCO's rules (greedy
by score, crowd ground truth ignored, 100 detections per image and class, area range "all", IoU 0.50:0.95).
A paired bootstrap over images then re-accumulates COCO's 101-point interpolated precision from those stored
matches for every resample (no COCO re-evaluation per resample); on the full set this reproduces
faster-coco-eval's ``AP`` to 1e-6, which :func:`score_model` checks on every run.

Latency is not taken from the scoring pass (each model alone, one after the other): :func:`time_latency` times
both deployed artifacts in one pass, taking turns round by round on the same images, and :func:`compare` judges
the per-round candidate/champion ratio with a bootstrap interval over rounds (see there why).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tasks.config import GateParams, Params, load_params, stage_argparser
from tasks.contracts.yolo_labels import LabeledImage, list_images, load_rgb, read_labeled_set
from tasks.evaluate import coco_detections, coco_ground_truth, coco_metrics, detect_set, inference_settings
from tasks.export import TARGETS, speed_settings, time_rounds
from tasks.io import write_json_atomic
from tasks.runtimes.detectors import Deployed, Detections, InferenceSettings, letterbox

log = logging.getLogger(__name__)

# COCOeval's defaults (pycocotools Params.setDetParams), bbox, area range "all", the last maxDets.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, round((1.00 - 0.0) / 0.01) + 1, endpoint=True)
MAX_DETS = 100
# The bootstrap's full-set mAP must equal faster-coco-eval's AP to this (checked on every scored set).
MAP_TOLERANCE = 1e-6

GOLDEN = "golden"
PRODUCTION = "production"
# Resamples are drawn in chunks of this size, so a seed gives the same resamples whatever the data size.
_DRAW_CHUNK = 100

Verdict = Literal["promote", "reject"]
ReasonCode = Literal[
    "no_champion",
    "no_holdouts",
    "production_gain",
    "golden_loss",
    "golden_loss_ci",
    "class_drop",
    "latency_budget",
    "latency_factor",
]


class GateError(RuntimeError):
    """The gate cannot produce a trustworthy comparison (e.g. its mAP disagrees with COCO's)."""


@dataclass(frozen=True, eq=False)
class SetMatches:
    """COCO match outcomes of one model's detections on one labeled set (area "all", 100 dets per image/class).

    Detections are stored ready for accumulation: grouped by class, then by score descending, ties in
    COCO's order (image order, then the detection's order within its image). Images are indexed ``0..N-1``
    in ascending COCO image id.

    Attributes:
        classes: the ``K`` category names, in ascending category id.
        gt_count: ``(N, K)`` int64 non-ignored ground-truth boxes per image and class.
        class_start: ``(K + 1,)`` int64: class ``k``'s detections are ``[class_start[k], class_start[k + 1])``.
        det_image: ``(D,)`` int64 image index of each detection.
        det_score: ``(D,)`` float64 detection scores.
        tp: ``(T, D)`` bool: matched to a non-ignored ground truth at IoU threshold ``IOU_THRESHOLDS[t]``.
        ignored: ``(T, D)`` bool: matched to an ignored (crowd) ground truth at ``t``: neither TP nor FP.
    """

    classes: tuple[str, ...]
    gt_count: npt.NDArray[np.int64]
    class_start: npt.NDArray[np.int64]
    det_image: npt.NDArray[np.int64]
    det_score: npt.NDArray[np.float64]
    tp: npt.NDArray[np.bool_]
    ignored: npt.NDArray[np.bool_]

    @property
    def num_images(self) -> int:
        return int(self.gt_count.shape[0])

    def boxes_per_class(self) -> dict[str, int]:
        """Non-ignored ground-truth boxes per class over the whole set."""
        return {name: int(n) for name, n in zip(self.classes, self.gt_count.sum(axis=0), strict=True)}

    def same_ground_truth(self, other: SetMatches) -> bool:
        """Whether ``other`` was matched against the same images, classes and ground-truth counts."""
        return self.classes == other.classes and np.array_equal(self.gt_count, other.gt_count)


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval: of an mAP difference (candidate − champion), or of a latency statistic.

    Attributes:
        estimate: the statistic on the full sample (the difference on the full set; the median over rounds).
        low, high: percentile bounds at ``level`` (two-sided).
        level: confidence level, e.g. 0.95.
        resamples: bootstrap resamples the bounds come from.
    """

    estimate: float
    low: float
    high: float
    level: float
    resamples: int


@dataclass(frozen=True)
class SetScore:
    """One model on one set: COCO numbers plus the per-image matches the bootstrap needs.

    Attributes:
        name: set name (``golden``, ``production``).
        paths: the YOLO set folders it is the union of.
        map50_95, map50: COCO mAP (area "all", 100 dets).
        per_class_ap: AP50-95 per class name; ``-1`` where the set has no ground truth of that class.
        boxes_per_class: non-ignored ground-truth boxes per class name.
        matches: the stored per-detection matches (not written to reports).
        coco_map50_95: faster-coco-eval's mAP50-95 on the same input, when it was checked.
    """

    name: str
    paths: tuple[str, ...]
    map50_95: float
    map50: float
    per_class_ap: dict[str, float]
    boxes_per_class: dict[str, int]
    matches: SetMatches = field(repr=False)
    coco_map50_95: float | None = None

    @property
    def images(self) -> int:
        return self.matches.num_images


@dataclass(frozen=True)
class LatencySeries:
    """One model's share of the paired latency pass (:func:`time_latency`), round by round.

    Attributes:
        artifact: the file timed.
        runtime: its export target (``onnx``, ``openvino_int8``, ...).
        round_ms: ``(R,)`` per round, the median batch-1 network ms of the model's runs in that round. The
            candidate's and the champion's series of one pass line up: round ``r`` of both was timed moments apart,
            taking turns, on the same images.
        runs_per_round: timed runs behind each round's median.
        threads: intra-op threads the runtime was given.
        fallback: why the FP32 ONNX files were timed instead of the deployed artifacts (``None``: deployed ones).
    """

    artifact: str
    runtime: str
    round_ms: tuple[float, ...]
    runs_per_round: int
    threads: int
    fallback: str | None = None


@dataclass(frozen=True)
class ModelScores:
    """One model scored on every gate set.

    Attributes:
        model: artifact path.
        sets: by set name.
        ms_per_image: mean wall time per image over all sets in the scoring pass (pre-processing + network +
            decoding, in batches of ``evaluate.batch``, after one untimed warm-up batch); informational only: the
            models are scored one after the other, so a noisy moment lands on one of them.
        latency: the model's series from the paired latency pass the latency rules judge (``None``: not timed).
    """

    model: str
    sets: dict[str, SetScore]
    ms_per_image: float
    latency: LatencySeries | None = None


@dataclass(frozen=True)
class GatePolicy:
    """The promotion rules (``gate`` section, seed resolved). ``None`` switches a rule off.

    Attributes:
        min_production_gain: the lower CI bound of production mAP50-95 (candidate − champion) must reach this.
        max_golden_loss: golden mAP50-95 may fall at most this much (point estimate).
        max_golden_loss_ci: the lower CI bound of the golden difference may fall at most this far below 0.
        max_class_drop: AP50-95 any class may lose on any set (point estimate).
        min_class_boxes: classes with fewer ground-truth boxes in a set are not held to ``max_class_drop`` there.
        max_latency_ms: the candidate's ms per image budget (fails when clearly over it, see :func:`compare`).
        max_latency_factor: the candidate may be at most this many times slower per image than the champion (fails
            when clearly slower, see :func:`compare`).
        resamples, level, seed: the paired bootstrap (over images for mAP, over rounds for latency).
    """

    min_production_gain: float
    max_golden_loss: float | None
    max_golden_loss_ci: float | None
    max_class_drop: float | None
    min_class_boxes: int
    max_latency_ms: float | None
    max_latency_factor: float | None
    resamples: int
    level: float
    seed: int

    @property
    def judges_latency(self) -> bool:
        """Whether a latency rule is on (then both models are timed in one paired pass)."""
        return self.max_latency_ms is not None or self.max_latency_factor is not None

    @classmethod
    def from_config(cls, gate: GateParams, *, seed: int) -> GatePolicy:
        """Build the policy from the ``gate`` section; ``seed`` is used when ``gate.seed`` is null."""
        values = gate.model_dump(exclude={"speed"})  # how to time is the stage's business, not the rule's
        values["seed"] = seed if gate.seed is None else gate.seed
        return cls(**values)


@dataclass(frozen=True)
class Reason:
    """One checked rule (or note) behind a decision.

    Attributes:
        code: which rule.
        passed: ``False`` when this rule rejects the candidate; notes are ``True``.
        message: one line for humans.
        numbers: the values the rule compared (NaN where a value does not exist).
    """

    code: ReasonCode
    passed: bool
    message: str
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LatencyComparison:
    """The paired latency pass as :func:`compare` judged it.

    Attributes:
        ratios: ``(R,)`` candidate / champion ms per usable round (both readings finite and > 0).
        ratio: median of ``ratios`` with its bootstrap interval over rounds.
        candidate_ms: median of the candidate's per-round ms with its bootstrap interval over rounds.
        champion_ms: median of the champion's per-round ms over the same rounds.
    """

    ratios: tuple[float, ...]
    ratio: Interval
    candidate_ms: Interval
    champion_ms: float


@dataclass(frozen=True)
class Decision:
    """What :func:`compare` returns: the verdict, every checked rule, and the intervals it used."""

    decision: Verdict
    reasons: list[Reason]
    intervals: dict[str, Interval] = field(default_factory=dict)
    latency: LatencyComparison | None = None

    @property
    def failed(self) -> list[Reason]:
        return [r for r in self.reasons if not r.passed]


@dataclass(frozen=True)
class SetComparison:
    """One set in the report: both models' mAP, the interval of the difference, the per-class table."""

    images: int
    boxes: int
    paths: list[str]
    candidate_map50_95: float
    champion_map50_95: float | None
    candidate_map50: float
    champion_map50: float | None
    interval: Interval | None
    per_class: dict[str, dict[str, float | int | None]]


@dataclass(frozen=True)
class GateReport:
    """What ``reports/gate.json`` holds."""

    decision: Verdict
    reasons: list[Reason]
    candidate: str
    champion: str | None
    sets: dict[str, SetComparison]
    latency_ms_per_image: dict[str, float | None]
    policy: dict[str, Any]
    params_digest: str = ""
    latency: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------- matching


def _box_iou(
    det_xywh: npt.NDArray[np.float64], gt_xywh: npt.NDArray[np.float64], crowd: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """IoU of paired boxes exactly as pycocotools' ``bbIou``: a crowd box's union is the detection's area.

    Args:
        det_xywh, gt_xywh: ``(P, 4)`` float64 ``x, y, w, h`` pixels, row ``i`` of one paired with row ``i`` of
            the other.
        crowd: ``(P,)`` bool, the ground truth of the pair is a crowd region.

    Returns:
        ``(P,)`` float64 IoU.
    """
    w = np.minimum(det_xywh[:, 2] + det_xywh[:, 0], gt_xywh[:, 2] + gt_xywh[:, 0]) - np.maximum(
        det_xywh[:, 0], gt_xywh[:, 0]
    )
    h = np.minimum(det_xywh[:, 3] + det_xywh[:, 1], gt_xywh[:, 3] + gt_xywh[:, 1]) - np.maximum(
        det_xywh[:, 1], gt_xywh[:, 1]
    )
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    det_area = det_xywh[:, 2] * det_xywh[:, 3]
    gt_area = gt_xywh[:, 2] * gt_xywh[:, 3]
    union = np.where(crowd, det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(inter > 0, inter / union, 0.0)
    return iou


def _segment_starts(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Start index of each run of equal values in a sorted ``(M,)`` array (``(R,)``, empty for ``M == 0``)."""
    if keys.size == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]).astype(np.int64)


def match_coco(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> SetMatches:
    """Match COCO-format detections to COCO-format ground truth image by image, as COCOeval does.

    Per image and category, detections are taken by descending score (at most 100); each takes the
    still-unmatched ground truth of highest IoU >= the threshold, preferring non-crowd ground truth; a
    detection that lands on crowd ground truth is ignored. Done for the 10 IoU thresholds at once and
    vectorised over all (image, category) groups: the sequential part runs over a detection's rank among
    the detections that overlap any ground truth by >= 0.5, not over images.

    Args:
        ground_truth: COCO dict with ``images``, ``annotations`` (``bbox`` x, y, w, h pixels, ``iscrowd``),
            ``categories``.
        detections: COCO results: ``image_id``, ``category_id``, ``bbox`` (x, y, w, h pixels), ``score``.
            Results of categories absent from ``categories`` are dropped, as COCOeval does.

    Returns:
        The per-detection matches, sorted for accumulation.

    Raises:
        ValueError: a detection names an image that is not in the ground truth.
    """
    image_ids = sorted({int(img["id"]) for img in ground_truth["images"]})
    categories = sorted(ground_truth["categories"], key=lambda c: int(c["id"]))
    cat_ids = [int(c["id"]) for c in categories]
    n_images, n_classes, n_thr = len(image_ids), len(cat_ids), len(IOU_THRESHOLDS)
    image_index = {image_id: i for i, image_id in enumerate(image_ids)}
    class_index = {cat_id: k for k, cat_id in enumerate(cat_ids)}

    anns = [a for a in ground_truth["annotations"] if int(a["category_id"]) in class_index]
    gt_group = np.asarray(
        [image_index[int(a["image_id"])] * n_classes + class_index[int(a["category_id"])] for a in anns], np.int64
    )
    gt_box = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    # pycocotools: ignore = iscrowd (a dataset's own "ignore" flag is overridden); area range "all" ignores no more
    gt_ignore = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool)
    # COCOeval puts non-ignored ground truth first (stable), which decides ties between equal IoUs
    order = np.lexsort((np.arange(len(anns)), gt_ignore, gt_group))
    gt_group, gt_box, gt_ignore = gt_group[order], gt_box[order], gt_ignore[order]
    gt_count = np.bincount(gt_group[~gt_ignore], minlength=n_images * n_classes).reshape(n_images, n_classes)

    kept = [d for d in detections if int(d["category_id"]) in class_index]
    unknown = {int(d["image_id"]) for d in kept} - image_index.keys()
    if unknown:
        raise ValueError(f"detections name image ids {sorted(unknown)[:5]} that the ground truth does not have")
    det_img = np.asarray([image_index[int(d["image_id"])] for d in kept], np.int64)
    det_cls = np.asarray([class_index[int(d["category_id"])] for d in kept], np.int64)
    det_group = det_img * n_classes + det_cls
    det_score = np.asarray([d["score"] for d in kept], np.float64)
    det_box = np.asarray([d["bbox"] for d in kept], np.float64).reshape(-1, 4)
    # per group by descending score, ties in result order (COCOeval's mergesort); keep the best MAX_DETS
    order = np.lexsort((np.arange(len(kept)), -det_score, det_group))
    det_group, det_img, det_cls, det_score, det_box = (
        det_group[order],
        det_img[order],
        det_cls[order],
        det_score[order],
        det_box[order],
    )
    starts = _segment_starts(det_group)
    lengths = np.diff(np.r_[starts, len(det_group)])
    rank = np.arange(len(det_group)) - np.repeat(starts, lengths)
    keep = rank < MAX_DETS
    det_group, det_img, det_cls, det_score, det_box = (
        det_group[keep],
        det_img[keep],
        det_cls[keep],
        det_score[keep],
        det_box[keep],
    )
    n_det = len(det_group)

    # every (detection, ground truth) pair of the same image and class, in the sorted ground-truth order
    gt_lo = np.searchsorted(gt_group, det_group, side="left")
    gt_hi = np.searchsorted(gt_group, det_group, side="right")
    per_det = gt_hi - gt_lo
    pair_det = np.repeat(np.arange(n_det), per_det)
    pair_gt = np.arange(pair_det.size) - np.repeat(np.cumsum(per_det) - per_det, per_det) + np.repeat(gt_lo, per_det)
    pair_iou = _box_iou(det_box[pair_det], gt_box[pair_gt], gt_ignore[pair_gt])

    tp = np.zeros((n_thr, n_det), bool)
    ignored = np.zeros((n_thr, n_det), bool)
    # a detection below the lowest threshold with every ground truth is a false positive at every threshold
    reaches = np.zeros(n_det, bool)
    np.logical_or.at(reaches, pair_det[pair_iou >= IOU_THRESHOLDS[0]], True)
    live = reaches[pair_det]
    pair_det, pair_gt, pair_iou = pair_det[live], pair_gt[live], pair_iou[live]
    # the sequential step: k-th overlapping detection of every group at once
    cand = np.flatnonzero(reaches)
    cand_starts = _segment_starts(det_group[cand])
    cand_rank = np.zeros(n_det, np.int64)
    cand_rank[cand] = np.arange(cand.size) - np.repeat(cand_starts, np.diff(np.r_[cand_starts, cand.size]))
    order = np.lexsort((np.arange(pair_det.size), cand_rank[pair_det]))
    pair_det, pair_gt, pair_iou = pair_det[order], pair_gt[order], pair_iou[order]
    step_bounds = np.searchsorted(cand_rank[pair_det], np.arange(int(cand_rank.max(initial=0)) + 2))
    gt_matched = np.zeros((len(gt_group), n_thr), bool)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    for lo, hi in itertools.pairwise(step_bounds):
        if lo == hi:
            continue
        p_det, p_gt, p_iou = pair_det[lo:hi], pair_gt[lo:hi], pair_iou[lo:hi]
        p_ign = gt_ignore[p_gt]
        # a matched crowd region stays available to later detections
        free = ~(gt_matched[p_gt] & ~p_ign[:, None])
        ok = free & (p_iou[:, None] >= thresholds[None, :])
        # preference: non-ignored ground truth, then higher IoU, then the later ground truth (COCOeval's ">=")
        key = np.where(ok, np.where(p_ign, 0.0, 2.0)[:, None] + p_iou[:, None], -1.0)
        seg = _segment_starts(p_det)
        seg_of_pair = np.repeat(np.arange(seg.size), np.diff(np.r_[seg, p_det.size]))
        best = np.maximum.reduceat(key, seg, axis=0)
        chosen = np.where(ok & (key == best[seg_of_pair]), np.arange(p_det.size)[:, None], -1)
        pick = np.maximum.reduceat(chosen, seg, axis=0)
        det_rows = p_det[seg]
        for t in range(n_thr):
            hit = pick[:, t] >= 0
            g = p_gt[pick[hit, t]]
            gt_matched[g, t] = True
            tp[t, det_rows[hit]] = ~gt_ignore[g]
            ignored[t, det_rows[hit]] = gt_ignore[g]

    # accumulation order: class, then score descending, ties by image, then by order within the image
    order = np.lexsort((np.arange(n_det), det_img, -det_score, det_cls))
    class_start = np.searchsorted(det_cls[order], np.arange(n_classes + 1)).astype(np.int64)
    return SetMatches(
        classes=tuple(str(c["name"]) for c in categories),
        gt_count=gt_count.astype(np.int64),
        class_start=class_start,
        det_image=det_img[order],
        det_score=det_score[order],
        tp=tp[:, order],
        ignored=ignored[:, order],
    )


# ------------------------------------------------------------------------------------------------ accumulation


def _recall_thresholds_reached(recall: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """How many of COCO's recall thresholds are <= each recall (``searchsorted(..., side="right")``, faster).

    Args:
        recall: any shape, values in [0, 1].

    Returns:
        Same shape, int64 counts in ``0..101``.
    """
    last = len(RECALL_THRESHOLDS) - 1
    # thresholds are i/100 to within an ulp: estimate, then correct the estimate by at most one either way
    count = np.clip(np.floor(recall * last).astype(np.int64) + 1, 1, last + 1)
    count -= RECALL_THRESHOLDS[count - 1] > recall
    count += (count <= last) & (RECALL_THRESHOLDS[np.minimum(count, last)] <= recall)
    return count


def _segment_sums(
    positions: npt.NDArray[np.int64], ends: npt.NDArray[np.int64], image: npt.NDArray[np.int64], n_images: int
) -> Any:
    """Sparse ``(len(ends), n_images)`` counts: detections at ``positions`` per segment ``(ends[s-1], ends[s]]``.

    Multiplied by ``(n_images, B)`` image weights it gives each segment's weighted detection count; a
    detection after the last end is dropped.
    """
    from scipy.sparse import csr_matrix

    segment = np.searchsorted(ends, positions, side="left")
    keep = segment < len(ends)
    ones = np.ones(int(keep.sum()), np.int64)
    return csr_matrix((ones, (segment[keep], image[positions[keep]])), shape=(len(ends), n_images))


def _class_ap(
    image: npt.NDArray[np.int64],
    tp: npt.NDArray[np.bool_],
    ignored: npt.NDArray[np.bool_],
    gt_count: npt.NDArray[np.int64],
    weights: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """COCO AP of one class per IoU threshold for weighted image multisets.

    Weight ``w`` on an image is the same as the image appearing ``w`` times: its detections count ``w`` times
    in the cumulative TP/FP sums and its ground truth ``w`` times in the recall denominator (copies of one
    detection sit side by side; COCO's stable sort could interleave equal scores of different copies, which
    only ever matters inside a run of exactly equal scores). Interpolated precision at a recall threshold
    is the best precision at any point of higher or equal recall, and that is always reached right after a
    true positive, so only true-positive points are evaluated: the detections in between enter as sparse
    per-image counts, never as a ``(B, D)`` array.

    Args:
        image: ``(D,)`` image index of the class's detections, in accumulation order.
        tp, ignored: ``(T, D)`` bool match outcomes.
        gt_count: ``(N,)`` non-ignored ground truth of the class per image.
        weights: ``(B, N)`` int64 image multiplicities (a row of ones is the full set).

    Returns:
        ``(B, T)`` AP; NaN where a row has no ground truth of the class (COCO's -1).
    """
    n_rows, n_thr = weights.shape[0], tp.shape[0]
    n_images = weights.shape[1]
    n_gt = weights @ gt_count
    ap = np.full((n_rows, n_thr), np.nan)
    valid = n_gt > 0
    if not valid.any():
        return ap
    ap[valid] = 0.0
    tp_positions = [np.flatnonzero(tp[t]) for t in range(n_thr)]
    any_tp = np.unique(np.concatenate(tp_positions))
    if any_tp.size == 0:
        return ap
    by_image = np.ascontiguousarray(weights[valid].T)  # (N, b): rows gathered per detection
    n_gt_valid = n_gt[valid].astype(np.float64)
    # detections counted up to each true positive (any threshold); later detections cannot change the curve
    seen = np.cumsum(
        _segment_sums(np.arange(any_tp[-1] + 1), any_tp, image, n_images) @ by_image, axis=0, dtype=np.int64
    )
    steps = np.zeros((n_thr, by_image.shape[1]))
    for t, pos in enumerate(tp_positions):
        if pos.size == 0:
            continue
        tp_cum = np.cumsum(by_image[image[pos]], axis=0)  # (P, b)
        counted = seen[np.searchsorted(any_tp, pos)]
        ign = np.flatnonzero(ignored[t, : pos[-1]])
        if ign.size:  # detections on crowd regions are neither true nor false positives
            counted = counted - np.cumsum(_segment_sums(ign, pos, image, n_images) @ by_image, axis=0)
        recall = tp_cum / n_gt_valid
        precision = tp_cum / (counted + np.spacing(1))
        envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
        # the recall thresholds each point reaches first take its envelope as interpolated precision
        newly = np.diff(_recall_thresholds_reached(recall), axis=0, prepend=0)
        steps[t] = (envelope * newly).sum(axis=0)
    ap[valid] = steps.T / len(RECALL_THRESHOLDS)
    return ap


def average_precision(matches: SetMatches, weights: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.float64]:
    """COCO AP per class and IoU threshold from stored matches, for the full set or weighted resamples.

    Args:
        matches: one model on one set.
        weights: ``(B, N)`` int image multiplicities; ``None`` is the full set (one row of ones).

    Returns:
        ``(B, K, T)`` AP; NaN where a row has no ground truth of a class.
    """
    if weights is None:
        weights = np.ones((1, matches.num_images), np.int64)
    weights = np.asarray(weights, np.int64)
    if weights.ndim != 2 or weights.shape[1] != matches.num_images:
        raise ValueError(f"weights must be (B, {matches.num_images}), got {weights.shape}")
    out = np.empty((weights.shape[0], len(matches.classes), matches.tp.shape[0]))
    for k in range(len(matches.classes)):
        lo, hi = matches.class_start[k], matches.class_start[k + 1]
        out[:, k] = _class_ap(
            matches.det_image[lo:hi],
            matches.tp[:, lo:hi],
            matches.ignored[:, lo:hi],
            matches.gt_count[:, k],
            weights,
        )
    return out


def mean_ap(ap: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """mAP50-95 per row of :func:`average_precision` (``(B, K, T)`` -> ``(B,)``): classes without GT left out."""
    per_class = ap.mean(axis=2)
    present = ~np.isnan(per_class)
    total = np.where(present, per_class, 0.0).sum(axis=1)
    count = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _resample_weights(rng: np.random.Generator, n_images: int, n: int) -> npt.NDArray[np.int64]:
    """``(n, n_images)`` multiplicities of ``n`` bootstrap resamples (``n_images`` draws with replacement each)."""
    draws = rng.integers(0, n_images, size=(n, n_images)) + (np.arange(n) * n_images)[:, None]
    return np.bincount(draws.ravel(), minlength=n * n_images).reshape(n, n_images).astype(np.int64)


def paired_bootstrap(
    cand_matches: SetMatches, champ_matches: SetMatches, *, resamples: int, seed: int, level: float
) -> Interval:
    """Confidence interval of mAP50-95 (candidate − champion) by resampling images, the same images for both.

    Args:
        cand_matches, champ_matches: both models on the same set (same images, classes, ground truth).
        resamples: bootstrap resamples (e.g. 1000).
        seed: the resamples are a function of ``seed`` and the number of images only.
        level: two-sided confidence level in (0, 1), e.g. 0.95; percentile bounds.

    Returns:
        The full-set difference and its percentile interval (resamples without any ground truth left out).

    Raises:
        ValueError: the matches are not on the same ground truth, the set is empty, or the arguments are invalid.
    """
    if not cand_matches.same_ground_truth(champ_matches):
        raise ValueError("paired bootstrap needs both models matched on the same images, classes and ground truth")
    if cand_matches.num_images == 0:
        raise ValueError("paired bootstrap of an empty set")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got resamples={resamples}, level={level}")
    estimate = float(mean_ap(average_precision(cand_matches))[0] - mean_ap(average_precision(champ_matches))[0])
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, _DRAW_CHUNK):
        weights = _resample_weights(rng, cand_matches.num_images, min(_DRAW_CHUNK, resamples - start))
        diffs.append(
            mean_ap(average_precision(cand_matches, weights)) - mean_ap(average_precision(champ_matches, weights))
        )
    diff = np.concatenate(diffs)
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return Interval(estimate, math.nan, math.nan, level, resamples)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(diff, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high), level, resamples)


def bootstrap_median(values: Sequence[float], *, resamples: int, seed: int, level: float) -> Interval:
    """The median of ``values`` and its percentile-bootstrap interval (resampling the values with replacement).

    Args:
        values: ``(R,)`` finite readings, e.g. one per timing round.
        resamples, seed, level: as :func:`paired_bootstrap`.

    Returns:
        The median and its two-sided interval at ``level``; all NaN for no values. One value gives ``[v, v]``.
    """
    data = np.asarray(values, np.float64)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, level, resamples)
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, data.size, size=(resamples, data.size))], axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(medians, [alpha, 1.0 - alpha])
    return Interval(float(np.median(data)), float(low), float(high), level, resamples)


def compare_latency(
    candidate: LatencySeries, champion: LatencySeries, *, resamples: int, seed: int, level: float
) -> LatencyComparison:
    """Pair two series of one latency pass round by round: the ratio per round and the intervals of both medians.

    Rounds in which either reading is not a finite positive number are left out (a timer that read 0).

    Raises:
        ValueError: the series have different lengths (they were not timed in one paired pass).
    """
    if len(candidate.round_ms) != len(champion.round_ms):
        raise ValueError(
            f"latency series of {len(candidate.round_ms)} and {len(champion.round_ms)} rounds: candidate and "
            "champion must be timed in one paired pass (time_latency)"
        )
    cand = np.asarray(candidate.round_ms, np.float64)
    champ = np.asarray(champion.round_ms, np.float64)
    usable = np.isfinite(cand) & np.isfinite(champ) & (cand > 0) & (champ > 0)
    cand, champ = cand[usable], champ[usable]
    ratios = cand / champ
    return LatencyComparison(
        ratios=tuple(float(r) for r in ratios),
        ratio=bootstrap_median(ratios, resamples=resamples, seed=seed, level=level),
        candidate_ms=bootstrap_median(cand, resamples=resamples, seed=seed, level=level),
        champion_ms=float(np.median(champ)) if champ.size else math.nan,
    )


# ----------------------------------------------------------------------------------------------------- scoring


def score_matches(name: str, matches: SetMatches, *, paths: Sequence[str] = ()) -> SetScore:
    """Full-set COCO numbers of stored matches (the same code path as every bootstrap resample)."""
    ap = average_precision(matches)[0]  # (K, T)
    per_class = ap.mean(axis=1)
    present = ~np.isnan(per_class)
    return SetScore(
        name=name,
        paths=tuple(paths),
        map50_95=float(per_class[present].mean()) if present.any() else -1.0,
        map50=float(ap[present, 0].mean()) if present.any() else -1.0,
        per_class_ap={
            c: (float(v) if ok else -1.0) for c, v, ok in zip(matches.classes, per_class, present, strict=True)
        },
        boxes_per_class=matches.boxes_per_class(),
        matches=matches,
    )


def find_holdouts(root: Path) -> list[Path]:
    """The production holdout sets: every ``root/<cycle>/`` with ``images/`` and ``labels/``, sorted by name.

    Hidden folders (the merge stage's staging copies) are not holdouts; a cycle whose holdout holds no image
    (the merge stage writes one when a cycle had nothing to hold out) is skipped with a log line.
    """
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not ((folder / "images").is_dir() and (folder / "labels").is_dir()):
            continue
        if not list_images(folder / "images"):
            log.info("holdout %s has no images: skipped", folder)
            continue
        found.append(folder)
    return found


def gate_sets(params: Params) -> dict[str, list[Path]]:
    """The sets both models are scored on: golden always, production when any holdout exists."""
    sets = {GOLDEN: [params.base.paths.golden]}
    holdouts = find_holdouts(params.base.paths.holdouts)
    if holdouts:
        sets[PRODUCTION] = holdouts
    return sets


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
        GateError: the matches' mAP50-95 differs from faster-coco-eval's by more than ``MAP_TOLERANCE``.
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
        GateError: the two mAP50-95 differ by more than ``MAP_TOLERANCE``.
    """
    score = score_matches(name, match_coco(ground_truth, detections), paths=paths)
    coco = coco_metrics(ground_truth, detections)
    if abs(score.map50_95 - coco.map50_95) > MAP_TOLERANCE:
        raise GateError(
            f"{model or 'model'} on {name}: bootstrap mAP50-95 {score.map50_95:.9f} != faster-coco-eval "
            f"{coco.map50_95:.9f}; the gate's matching disagrees with COCO (a bug: report it with this set)"
        )
    log.info("%s on %s: mAP50-95 %.4f (%d images)", model or "model", name, score.map50_95, score.images)
    return dataclasses.replace(score, coco_map50_95=coco.map50_95)


def score_model(model_path: Path, sets: Mapping[str, Path | Sequence[Path]], *, params: Params) -> ModelScores:
    """Run a model once over every gate set and keep its per-image COCO matches.

    Args:
        model_path: the artifact (any format :mod:`tasks.runtimes.detectors` loads).
        sets: set name -> a YOLO set folder, or several whose union is the set.
        params: inference thresholds (``evaluate``), classes, image size, device.

    Returns:
        mAP, per-class AP and matches per set, and the mean ms per image over all of them.

    Raises:
        GateError: the matches' mAP disagrees with faster-coco-eval's by more than ``MAP_TOLERANCE``.
    """
    classes = params.base.classes
    roots = {name: [Path(p)] if isinstance(p, str | Path) else [Path(r) for r in p] for name, p in sets.items()}
    images = {name: read_set_union(paths, classes) for name, paths in roots.items()}
    everything = [item for items in images.values() for item in items]
    detections, ms = detect_set(
        Path(model_path),
        everything,
        inference_settings(params),
        batch=params.evaluate.batch,
        desc=f"gate {Path(model_path).name}",
        warmup=True,  # both models' ms/image are compared: keep start-up costs out
    )
    scores: dict[str, SetScore] = {}
    offset = 0
    for name, items in images.items():
        scores[name] = score_detections(
            name,
            items,
            detections[offset : offset + len(items)],
            classes=classes,
            paths=[str(p) for p in roots[name]],
            model=str(model_path),
        )
        offset += len(items)
    return ModelScores(model=str(model_path), sets=scores, ms_per_image=ms)


# ------------------------------------------------------------------------------------------------------ latency

# what an artifact runs on, by its suffix, when nobody named its export target (``python -m tasks.gate`` paths)
_RUNTIME_BY_SUFFIX = {".onnx": "onnx", ".xml": "openvino", ".engine": "tensorrt", ".pt": "pytorch"}


def runtime_of(path: Path) -> str:
    """The export target an artifact file looks like.

    Its folder's name when that names a target (the export stage and the registry lay them out so:
    ``openvino_int8/model.xml``), else the runtime its suffix loads (an OpenVINO folder is ``openvino``).
    """
    if path.parent.name in TARGETS:
        return path.parent.name
    return _RUNTIME_BY_SUFFIX.get(path.suffix, "openvino" if path.is_dir() else path.suffix.lstrip(".") or "unknown")


def timed_pair(
    candidate: Path, champion: Path, *, candidate_deployed: Deployed | None, champion_deployed: Deployed | None
) -> tuple[Deployed, Deployed]:
    """What the latency pass times: both deployed artifacts, or else the scored FP32 ONNX files of both.

    Deployed artifacts are compared only with each other: when one side has none (an old champion registered
    before export selection, a champion whose artifact cannot be fetched, ``python -m tasks.gate`` given paths
    only), both sides fall back to the files they were scored with, and ``fallback`` says why.
    """
    missing = []
    for who, deployed in (("candidate", candidate_deployed), ("champion", champion_deployed)):
        if deployed is None:
            missing.append(f"the {who} has no selected artifact given")
        elif deployed.fallback is not None:
            missing.append(f"{who}: {deployed.fallback}")
    if candidate_deployed is not None and champion_deployed is not None and not missing:
        return candidate_deployed, champion_deployed
    return _scored_files(candidate, champion, "; ".join(missing))


def _scored_files(candidate: Path, champion: Path, why: str) -> tuple[Deployed, Deployed]:
    """The files both models were scored with (FP32 ONNX in the loop), to be timed instead, and why."""
    return (
        Deployed(runtime_of(candidate), "fp32", candidate, fallback=why),
        Deployed(runtime_of(champion), "fp32", champion, fallback=why),
    )


def latency_images(params: Params) -> npt.NDArray[np.float32]:
    """``(N, 3, S, S)`` float32: the first ``gate.speed.images`` golden images, letterboxed to ``base.imgsz``."""
    root = params.base.paths.golden / "images"
    paths = list_images(root)[: params.gate.speed.images]
    if not paths:
        raise FileNotFoundError(f"{root}: no images to time the models on")
    return np.stack([letterbox(load_rgb(p), params.base.imgsz)[0] for p in paths])


def latency_settings(params: Params) -> InferenceSettings:
    """The runtime settings of the latency pass: ``gate.speed.threads``, OpenVINO shapes as export timed them."""
    return dataclasses.replace(speed_settings(params), threads=params.gate.speed.threads)


def time_latency(
    candidate: Deployed,
    champion: Deployed,
    *,
    settings: InferenceSettings,
    images: npt.NDArray[np.float32],
    rounds: int,
    runs: int,
    warmup: int,
) -> tuple[LatencySeries, LatencySeries]:
    """Time both models' networks in one pass, taking turns round by round (:func:`tasks.export.time_rounds`).

    Each model is loaded and warmed up (``warmup`` untimed runs); then in each of ``rounds`` rounds each runs
    ``runs`` timed batch-1 forwards over ``images`` (cycled, the same for both), who goes first alternating
    between rounds. Network only: pre- and post-processing are the same code for every runtime.

    Args:
        candidate, champion: the artifacts to time and the runtime each is named by (``fallback`` is carried over).
        settings: runtime settings (threads, OpenVINO static shapes).
        images: ``(N, 3, S, S)`` float32 letterboxed network inputs.
        rounds, runs, warmup: the pass (``runs`` per model and round).

    Returns:
        The candidate's and the champion's series, round ``r`` of one paired with round ``r`` of the other.
    """
    timings = time_rounds(
        {"candidate": candidate.path, "champion": champion.path},
        settings=settings,
        images=images,
        batch=1,
        warmup=warmup,
        runs=rounds * runs,
        batch_runs=0,
        rounds=rounds,
    )
    cand, champ = (
        LatencySeries(
            artifact=str(deployed.path),
            runtime=deployed.target,
            round_ms=timings[who].round_ms,
            runs_per_round=runs,
            threads=settings.threads,
            fallback=deployed.fallback,
        )
        for who, deployed in (("candidate", candidate), ("champion", champion))
    )
    return cand, champ


def measure_latency(
    params: Params,
    candidate: Path,
    champion: Path,
    *,
    candidate_deployed: Deployed | None = None,
    champion_deployed: Deployed | None = None,
) -> tuple[LatencySeries, LatencySeries]:
    """The paired latency pass of the stage: deployed artifacts when both are given and load, else both FP32 ONNX.

    Args:
        params: ``gate.speed``, ``base`` (image size, device, golden set), ``export.speed.static_shapes``.
        candidate, champion: the files both models were scored with (the fallback).
        candidate_deployed, champion_deployed: what each will run in production (``None``: not known).
    """
    cfg = params.gate.speed
    settings, images = latency_settings(params), latency_images(params)
    timed = timed_pair(candidate, champion, candidate_deployed=candidate_deployed, champion_deployed=champion_deployed)
    try:
        return time_latency(
            *timed, settings=settings, images=images, rounds=cfg.rounds, runs=cfg.runs, warmup=cfg.warmup
        )
    except Exception as exc:  # a deployed artifact this host cannot open (TensorRT without CUDA): time what can
        if timed[0].fallback is not None:
            raise
        why = f"{timed[0].target} vs {timed[1].target} cannot be timed here ({type(exc).__name__}: {exc})"
        log.warning("%s; timing the FP32 ONNX of both", why)
        return time_latency(
            *_scored_files(candidate, champion, why),
            settings=settings,
            images=images,
            rounds=cfg.rounds,
            runs=cfg.runs,
            warmup=cfg.warmup,
        )


# ----------------------------------------------------------------------------------------------------- decision


def _missing(value: float) -> bool:
    return value is None or math.isnan(value) or value < 0


def _class_reasons(name: str, cand: SetScore, champ: SetScore, policy: GatePolicy) -> list[Reason]:
    if policy.max_class_drop is None:
        return []
    limit = policy.max_class_drop
    failing, skipped, worst = [], [], -math.inf
    for cls, champ_ap in champ.per_class_ap.items():
        cand_ap = cand.per_class_ap.get(cls, math.nan)
        boxes = cand.boxes_per_class.get(cls, 0)
        if _missing(cand_ap) or _missing(champ_ap) or boxes < policy.min_class_boxes:
            skipped.append(cls)
            continue
        drop = champ_ap - cand_ap
        worst = max(worst, drop)
        if drop > limit:
            failing.append(
                Reason(
                    "class_drop",
                    False,
                    f"{name}: class {cls!r} AP50-95 {champ_ap:.4f} -> {cand_ap:.4f} (drop {drop:.4f} > {limit})",
                    {"champion": champ_ap, "candidate": cand_ap, "drop": drop, "max_class_drop": limit},
                )
            )
    if failing:
        return failing
    note = f"; not compared: {skipped} (no ground truth or < {policy.min_class_boxes} boxes)" if skipped else ""
    worst_text = f"{worst:.4f}" if math.isfinite(worst) else "n/a"
    return [
        Reason(
            "class_drop",
            True,
            f"{name}: no class lost more than {limit} AP50-95 (largest drop {worst_text}){note}",
            {"largest_drop": worst if math.isfinite(worst) else math.nan, "max_class_drop": limit},
        )
    ]


def _latency_reasons(
    cand: LatencySeries | None, champ: LatencySeries | None, latency: LatencyComparison | None, policy: GatePolicy
) -> list[Reason]:
    """The ``latency_budget`` and ``latency_factor`` reasons (each only when its limit is set)."""
    limits: list[tuple[ReasonCode, float]] = []
    if policy.max_latency_ms is not None:
        limits.append(("latency_budget", policy.max_latency_ms))
    if policy.max_latency_factor is not None:
        limits.append(("latency_factor", policy.max_latency_factor))
    if cand is None or champ is None or latency is None or not latency.ratios:
        why = (
            "no paired latency pass of both models"
            if latency is None
            else f"no usable round among {len(cand.round_ms) if cand else 0}"
        )
        return [
            Reason(code, False, f"not measured ({why}): cannot show the candidate is within {limit}", {"limit": limit})
            for code, limit in limits
        ]
    pct = f"{policy.level:.0%}"
    rounds = f"{len(latency.ratios)} rounds of {cand.runs_per_round} runs, {cand.threads} thread(s)"
    note = f"; FP32 ONNX of both timed: {cand.fallback}" if cand.fallback else ""
    reasons = []
    for code, limit in limits:
        if code == "latency_budget":
            iv = latency.candidate_ms
            ok = iv.low <= limit
            message = (
                f"candidate {iv.estimate:.2f} ms/image, {pct} CI [{iv.low:.2f}, {iv.high:.2f}] ({cand.runtime}, "
                f"{rounds}{note}): lower bound {'<=' if ok else '>'} budget {limit} ms"
            )
            numbers = {"estimate_ms": iv.estimate, "low_ms": iv.low, "high_ms": iv.high, "max_latency_ms": limit}
        else:
            iv = latency.ratio
            ok = iv.low <= limit
            message = (
                f"candidate/champion {iv.estimate:.2f}x, {pct} CI [{iv.low:.2f}, {iv.high:.2f}] ({cand.runtime} vs "
                f"{champ.runtime}, {rounds}{note}): lower bound {'<=' if ok else '>'} {limit}"
            )
            numbers = {
                "ratio": iv.estimate,
                "low": iv.low,
                "high": iv.high,
                "candidate_ms": latency.candidate_ms.estimate,
                "champion_ms": latency.champion_ms,
                "max_latency_factor": limit,
            }
        reasons.append(Reason(code, ok, message, numbers | {"rounds": float(len(latency.ratios))}))
    return reasons


def compare(candidate: ModelScores, champion: ModelScores | None, policy: GatePolicy) -> Decision:
    """Decide whether the candidate replaces the champion. Pure: the same inputs give the same decision.

    Rules (each ``None`` in the policy switches its rule off); the candidate is rejected if any fails:
        production_gain: lower CI bound of production mAP50-95 (cand − champ) >= ``min_production_gain``;
        golden_loss: golden mAP50-95 (cand − champ) >= −``max_golden_loss``;
        golden_loss_ci: lower CI bound of the golden difference >= −``max_golden_loss_ci``;
        class_drop: on every set, no class (with ground truth and >= ``min_class_boxes`` boxes) loses more than
            ``max_class_drop`` AP50-95;
        latency_factor: fails only when the candidate is *clearly* more than ``max_latency_factor`` times slower:
            the lower bound of the interval of the median per-round ratio (candidate / champion) is above it;
        latency_budget: fails only when the candidate is clearly over ``max_latency_ms``: the lower bound of the
            interval of its median per-round ms is above it.
    No champion: promote ("no_champion"). No production set: decided on golden only ("no_holdouts").

    Why the latency rules look like this: a single ms/image per model, each measured alone, swings by 2x and more
    on a shared host (another process, another thread), and one unlucky reading rejected a better model. The paired
    pass (:func:`time_latency`) times both models in rounds, taking turns on the same images, so a noisy moment
    hits both within a round; the per-round *ratio* cancels what the round shared. The median over rounds shrugs
    off the rounds a burst hit only one side of, and the bootstrap over rounds (``resamples``, ``seed``,
    ``level``, as for mAP) says how far that median may be off. The burden of proof is on "slower": a noisy pass
    gives a wide interval whose lower bound stays low, so it passes; a genuine slowdown moves every round and
    the whole interval. A latency rule that is on but has nothing to judge (no pass, no usable round) fails:
    a switched-on rule is never silently skipped.

    Args:
        candidate: the candidate scored on ``golden`` and, when holdouts exist, ``production``.
        champion: the champion scored on the same sets, or ``None`` on the first cycle.
        policy: the rules and the bootstrap settings.

    Raises:
        ValueError: golden missing, the two models were not scored on the same sets and ground truth, or their
            latency series were not timed in one pass.
    """
    if GOLDEN not in candidate.sets:
        raise ValueError(f"candidate was not scored on {GOLDEN!r} (sets: {sorted(candidate.sets)})")
    golden = candidate.sets[GOLDEN]
    if champion is None:
        return Decision(
            "promote",
            [
                Reason(
                    "no_champion",
                    True,
                    f"no champion yet: the candidate is promoted (golden mAP50-95 {golden.map50_95:.4f})",
                    {"candidate_golden_map50_95": golden.map50_95, "candidate_ms_per_image": candidate.ms_per_image},
                )
            ],
        )
    if set(candidate.sets) != set(champion.sets):
        raise ValueError(f"models scored on different sets: {sorted(candidate.sets)} vs {sorted(champion.sets)}")
    for name, score in candidate.sets.items():
        if not score.matches.same_ground_truth(champion.sets[name].matches):
            raise ValueError(f"set {name!r}: candidate and champion were not scored on the same ground truth")

    intervals = {
        name: paired_bootstrap(
            candidate.sets[name].matches,
            champion.sets[name].matches,
            resamples=policy.resamples,
            seed=policy.seed,
            level=policy.level,
        )
        for name in sorted(candidate.sets)
    }
    reasons: list[Reason] = []
    pct = f"{policy.level:.0%}"
    if PRODUCTION in intervals:
        iv = intervals[PRODUCTION]
        ok = iv.low >= policy.min_production_gain  # NaN fails: no evidence of a gain
        reasons.append(
            Reason(
                "production_gain",
                ok,
                f"production mAP50-95 gain {iv.estimate:+.4f}, {pct} CI [{iv.low:+.4f}, {iv.high:+.4f}]: lower bound "
                f"{'>=' if ok else '<'} {policy.min_production_gain}",
                {
                    "estimate": iv.estimate,
                    "low": iv.low,
                    "high": iv.high,
                    "min_production_gain": policy.min_production_gain,
                },
            )
        )
    else:
        reasons.append(
            Reason(
                "no_holdouts", True, "no production holdouts yet: production comparison skipped, decided on golden only"
            )
        )

    champ_golden = champion.sets[GOLDEN]
    diff = golden.map50_95 - champ_golden.map50_95
    if policy.max_golden_loss is not None:
        ok = diff >= -policy.max_golden_loss
        reasons.append(
            Reason(
                "golden_loss",
                ok,
                f"golden mAP50-95 {champ_golden.map50_95:.4f} -> {golden.map50_95:.4f} ({diff:+.4f}; "
                f"{'within' if ok else 'beyond'} the allowed loss {policy.max_golden_loss})",
                {
                    "candidate": golden.map50_95,
                    "champion": champ_golden.map50_95,
                    "diff": diff,
                    "max_golden_loss": policy.max_golden_loss,
                },
            )
        )
    if policy.max_golden_loss_ci is not None:
        iv = intervals[GOLDEN]
        ok = iv.low >= -policy.max_golden_loss_ci
        reasons.append(
            Reason(
                "golden_loss_ci",
                ok,
                f"golden mAP50-95 difference {pct} CI [{iv.low:+.4f}, {iv.high:+.4f}]: lower bound "
                f"{'>=' if ok else '<'} -{policy.max_golden_loss_ci}",
                {
                    "estimate": iv.estimate,
                    "low": iv.low,
                    "high": iv.high,
                    "max_golden_loss_ci": policy.max_golden_loss_ci,
                },
            )
        )
    for name in sorted(candidate.sets):
        reasons.extend(_class_reasons(name, candidate.sets[name], champion.sets[name], policy))

    latency = None
    if policy.judges_latency:
        latency = (
            compare_latency(
                candidate.latency, champion.latency, resamples=policy.resamples, seed=policy.seed, level=policy.level
            )
            if candidate.latency is not None and champion.latency is not None
            else None
        )
        reasons.extend(_latency_reasons(candidate.latency, champion.latency, latency, policy))
    verdict: Verdict = "promote" if all(r.passed for r in reasons) else "reject"
    return Decision(verdict, reasons, intervals, latency)


# ------------------------------------------------------------------------------------------------------ report


def build_report(
    candidate: ModelScores, champion: ModelScores | None, decision: Decision, *, policy: GatePolicy, digest: str = ""
) -> GateReport:
    """Assemble the report record (small: no matches) from the scores and the decision."""
    sets: dict[str, SetComparison] = {}
    for name, cand in candidate.sets.items():
        champ = champion.sets[name] if champion is not None else None
        per_class: dict[str, dict[str, float | int | None]] = {}
        for cls, cand_ap in cand.per_class_ap.items():
            champ_ap = champ.per_class_ap.get(cls) if champ is not None else None
            both = champ_ap is not None and not _missing(cand_ap) and not _missing(champ_ap)
            per_class[cls] = {
                "candidate": cand_ap,
                "champion": champ_ap,
                "diff": cand_ap - champ_ap if both and champ_ap is not None else None,
                "boxes": cand.boxes_per_class.get(cls, 0),
            }
        sets[name] = SetComparison(
            images=cand.images,
            boxes=sum(cand.boxes_per_class.values()),
            paths=list(cand.paths),
            candidate_map50_95=cand.map50_95,
            champion_map50_95=champ.map50_95 if champ is not None else None,
            candidate_map50=cand.map50,
            champion_map50=champ.map50 if champ is not None else None,
            interval=decision.intervals.get(name),
            per_class=per_class,
        )
    return GateReport(
        decision=decision.decision,
        reasons=decision.reasons,
        candidate=candidate.model,
        champion=champion.model if champion is not None else None,
        sets=sets,
        latency_ms_per_image={
            "candidate": candidate.ms_per_image,
            "champion": champion.ms_per_image if champion is not None else None,
        },
        policy=asdict(policy),
        params_digest=digest,
        latency=_latency_report(candidate, champion, decision),
    )


def _latency_report(candidate: ModelScores, champion: ModelScores | None, decision: Decision) -> dict[str, Any] | None:
    """The paired latency pass for the report: both series, the per-round ratios, the estimates and bounds."""
    if champion is None or candidate.latency is None or champion.latency is None:
        return None
    out: dict[str, Any] = {
        "candidate": asdict(candidate.latency),
        "champion": asdict(champion.latency),
        "rounds": len(candidate.latency.round_ms),
        "runs_per_round": candidate.latency.runs_per_round,
        "threads": candidate.latency.threads,
        "timed": f"{candidate.latency.runtime} vs {champion.latency.runtime}",
        "fallback": candidate.latency.fallback,
    }
    if decision.latency is not None:
        out |= {
            "ratios": list(decision.latency.ratios),
            "ratio": asdict(decision.latency.ratio),
            "candidate_ms": asdict(decision.latency.candidate_ms),
            "champion_ms": decision.latency.champion_ms,
        }
    return out


def _json_safe(value: Any) -> Any:
    """NaN and infinities become ``null`` (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def run(
    params: Params,
    *,
    candidate: Path,
    champion: Path | None,
    candidate_deployed: Deployed | None = None,
    champion_deployed: Deployed | None = None,
    report_path: Path | None = None,
) -> GateReport:
    """Score both models on the same sets, time them in one paired pass, decide, and write ``<reports>/gate.json``.

    Args:
        params: validated config.
        candidate: the candidate's artifact to score (FP32 ONNX in the loop: both models scored on one runtime).
        champion: the champion's artifact to score, ``None`` on the first cycle.
        candidate_deployed: the artifact the candidate would ship (the export stage's selection), for the latency
            pass; ``None``: not known, both models are timed on the files they were scored with.
        champion_deployed: the artifact the champion runs (:func:`tasks.predict.find_deployed`), likewise.
        report_path: where to write the JSON (default ``<reports>/gate.json``).
    """
    start = time.perf_counter()
    policy = GatePolicy.from_config(params.gate, seed=params.base.seed)
    sets = gate_sets(params)
    if PRODUCTION not in sets:
        log.info("no production holdouts under %s: the gate decides on golden only", params.base.paths.holdouts)
    cand = score_model(candidate, sets, params=params)
    champ = score_model(champion, sets, params=params) if champion is not None else None
    if champ is not None and champion is not None and policy.judges_latency:
        cand_latency, champ_latency = measure_latency(
            params, candidate, champion, candidate_deployed=candidate_deployed, champion_deployed=champion_deployed
        )
        cand = dataclasses.replace(cand, latency=cand_latency)
        champ = dataclasses.replace(champ, latency=champ_latency)
    decision = compare(cand, champ, policy)
    report = build_report(cand, champ, decision, policy=policy, digest=params.digest())
    for reason in decision.reasons:
        log.log(logging.INFO if reason.passed else logging.WARNING, "%s: %s", reason.code, reason.message)
    log.info("gate: %s", decision.decision)
    payload = _json_safe(asdict(report) | {"wall_s": round(time.perf_counter() - start, 2)})
    write_json_atomic(report_path or params.base.paths.reports / "gate.json", payload)
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.gate [--params P] --candidate PATH [--champion PATH] [--candidate-deployed PATH ...]``."""
    from tasks.env import apply_env

    parser = stage_argparser("gate", __doc__)
    parser.add_argument("--candidate", type=Path, required=True, help="candidate model artifact")
    parser.add_argument("--champion", type=Path, default=None, help="champion model artifact (none: first cycle)")
    for who in ("candidate", "champion"):
        parser.add_argument(
            f"--{who}-deployed",
            type=Path,
            default=None,
            help=f"the artifact the {who} deploys, timed for the latency rules (both or neither: else both "
            "scored files are timed)",
        )
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def deployed(path: Path | None) -> Deployed | None:
        return None if path is None else Deployed(runtime_of(path), "", path)

    report = run(
        load_params(args.params),
        candidate=args.candidate,
        champion=args.champion,
        candidate_deployed=deployed(args.candidate_deployed),
        champion_deployed=deployed(args.champion_deployed),
    )
    print(json.dumps({"decision": report.decision, "failed": [r.code for r in report.reasons if not r.passed]}))


if __name__ == "__main__":
    main()
