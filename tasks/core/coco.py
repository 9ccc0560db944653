"""COCO box matching and AP, ported from pycocotools' ``COCOeval`` so that AP can be re-accumulated per resample.

:func:`match_coco` matches detections to ground truth once, image by image, with COCO's rules (greedy by score,
crowd ground truth ignored, 100 detections per image and class, area range "all", IoU 0.50:0.95) and keeps every
outcome in a :class:`SetMatches`. :func:`average_precision` then accumulates COCO's 101-point interpolated
precision from those stored matches, for the full set or for weighted image multisets (a bootstrap resample is
one row of weights), without evaluating COCO again; :func:`score_matches` gives a set's full-set numbers
(:class:`SetScore`). On the full set this reproduces faster-coco-eval's ``AP`` to 1e-6 (the gate checks that on
every scored set: :func:`tasks.targets.gate_scoring.score_coco`).

Pure numpy (and scipy's sparse matrices); imports nothing of ``tasks``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# COCOeval's defaults (pycocotools Params.setDetParams), bbox, area range "all", the last maxDets.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, round((1.00 - 0.0) / 0.01) + 1, endpoint=True)
MAX_DETS = 100


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


# long: a faithful port of COCOeval.evaluateImg, kept whole so that it reads side by side with pycocotools.
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

    # COCOeval's area range "all" is [0, 1e10]: an unmatched detection of area outside it (an inverted box of
    # negative area) is ignored, not a false positive
    det_area = det_box[:, 2] * det_box[:, 3]
    outside = (det_area < 0) | (det_area > 1e10)
    ignored |= ~tp & ~ignored & outside[None, :]

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


# --------------------------------------------------------------------------------------------------- scores


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
