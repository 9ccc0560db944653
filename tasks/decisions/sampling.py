"""Sampling decisions: per-image strategy scores and the selection that fills the labeling budget (pure, no I/O).

Scores (one per image of :class:`~tasks.contracts.prediction_rows.ImageRows`, each in [0, 1] or NaN = not a
candidate). The evidence: each logged box's top-class confidence ``p`` and, from the log's version 3, its class
margin ``m`` (top-1 minus top-2 class score: the raw head's class vector) and the image's sub-threshold evidence
(``e``: the highest score among its boxes in ``[predict.evidence_conf, predict.conf)``, after NMS; ``k``: how many;
none on older rows, for end-to-end heads' margins, and when ``predict.evidence_conf`` is null):

* ``random``: ``u < rate`` with ``u`` uniform from (seed, cycle, image SHA-256) (:func:`seeded_uniform`);
  score ``1 - u / rate``.
* ``low_confidence``: ``n`` boxes with confidence in ``[low, high)``; score ``n / (n + 1)`` (>= 0.5). An image
  with no box in the band but sub-threshold evidence (``k >= 1``; a zero-detection image, or one whose boxes are
  all confident) scores ``0.5 x min(e / low, 1)`` (``low`` 0: 0.5): below any image with a box in the band,
  ranked by how close its strongest missed box came. Without evidence it is no candidate (as before).
* ``entropy``: mean binary entropy ``H(p) = -p log2 p - (1-p) log2(1-p)`` over the image's box confidences and,
  when it has sub-threshold evidence, one more term ``H(e)`` (its strongest missed box stands for the band): a
  zero-detection image with evidence scores ``H(e)`` (e.g. 0.72 bits at ``e`` = 0.2), one without none.
* ``margin``: ``max over boxes of (1 - m)`` (1 = two classes tie); a box without a logged margin (older rows,
  end-to-end heads, one class) counts ``1 - |p - threshold| / max(threshold, 1 - threshold)`` instead (1 = a coin
  flip at ``threshold``). So margin asks "which class?" where entropy asks "is it there?".
* ``class_balanced``: ``min_c f_c / f_k`` for the rarest class ``k`` the image shows (``f``: box counts per class).
* ``disagreement``: ``1 - min(agreeing champion boxes, agreeing other boxes) / max(champion boxes, other boxes)``
  against another model version's boxes on the same image (same class, IoU >= ``iou``, best match).
* ``drift``: a seeded share ``rate`` of the images of flagged batches; score ``1 - u / rate``.
* ``diversity``: k-center greedy (:func:`score_diversity`) over a cheap per-image embedding, the input statistics
  (brightness, contrast, sharpness, mean_r/g/b) and the box count, each standardised over the window: the images
  already labeled (in the ledger; at most :data:`MAX_SEED_CENTERS`, a seeded choice) are the first centers (none:
  the image with the smallest seeded draw), then each pick is the eligible image farthest from every center (ties:
  the smaller draw), ``k = POOL_FACTOR x budget`` picks; the i-th of ``n`` picks scores ``1 - i / n``. Images
  without statistics (error rows, logs before version 2) are no candidates.

Selection: :func:`nominate` takes each strategy's best ``POOL_FACTOR x budget`` images; :func:`select` fills the
budget greedily by ``weight x score`` with the per-strategy budgets, the per-day cap and the near-duplicate check
(perceptual hashes, :mod:`tasks.core.phash`). Everything here is deterministic given its inputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import polars as pl

from tasks.config import SampleParams, SampleStrategy
from tasks.contracts.prediction_rows import ImageRows
from tasks.core.phash import PackedHashes, hamming, n_bytes, to_hex

STRATEGIES = (
    "random",
    "low_confidence",
    "entropy",
    "margin",
    "class_balanced",
    "disagreement",
    "drift",
    "diversity",
)
"""Strategy names in tie-break order (the fields of ``sample.strategies``)."""

EXCLUSIONS = ("ledger", "day_cap", "near_duplicate", "unreadable_image")
"""Reasons an image that qualified was not selected (besides a full budget)."""

POOL_FACTOR = 5
"""Each strategy nominates up to ``POOL_FACTOR x budget`` images, so exclusions can be back-filled."""

MAX_SEED_CENTERS = 1024
"""``diversity`` starts from at most this many labeled images of the window (each costs one pass over the images)."""

_FloatArray = npt.NDArray[np.float64]


def enabled_strategies(params: SampleParams) -> dict[str, SampleStrategy]:
    """The strategies that may select images (not null, budget above 0), in :data:`STRATEGIES` order."""
    found = {name: getattr(params.strategies, name) for name in STRATEGIES}
    return {name: config for name, config in found.items() if config is not None and config.budget > 0}


def seeded_uniform(rows: ImageRows, *, seed: int, cycle: str, salt: str) -> _FloatArray:
    """One uniform draw in [0, 1) per image, a pure function of (seed, cycle, salt, image SHA-256).

    The first 64 bits of the SHA-256 are XOR-ed with a key derived from ``seed:cycle:salt`` and mixed with the
    splitmix64 finaliser, so the draw does not depend on row order, on the engine or on its version.

    Returns:
        (I,) float64.
    """
    key = int.from_bytes(hashlib.sha256(f"{seed}:{cycle}:{salt}".encode()).digest()[:8], "little")
    z = rows.sha_prefix ^ np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --- strategies: (I,) scores in [0, 1], NaN = not a candidate ----------------------------------------------------


def _as_frame(rows: ImageRows, score: _FloatArray) -> pl.DataFrame:
    return pl.DataFrame(
        {"image_sha256": rows.images["image_sha256"], "score": pl.Series(score, dtype=pl.Float64, nan_to_null=True)}
    )


def _per_image_sum(rows: ImageRows, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return np.add.reduceat(values, rows.starts) if len(rows) else np.zeros(0, values.dtype)


def _boxes(rows: ImageRows) -> npt.NDArray[np.bool_]:
    return ~np.isnan(rows.confidence)


def _evidence(rows: ImageRows) -> tuple[_FloatArray, npt.NDArray[np.int64]]:
    """(I,) highest sub-threshold score (NaN: none) and (I,) count of each image; none when not read."""
    if rows.evidence_max is None or rows.evidence_count is None:
        return np.full(len(rows), np.nan), np.zeros(len(rows), np.int64)
    count = rows.evidence_count.astype(np.int64)
    return np.where(count > 0, rows.evidence_max.astype(np.float64), np.nan), count


def _binary_entropy(p: npt.NDArray[Any]) -> npt.NDArray[Any]:
    p = np.clip(p, p.dtype.type(1e-7), p.dtype.type(1 - 1e-7))
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def score_random(rows: ImageRows, *, rate: float, seed: int, cycle: str) -> pl.DataFrame:
    """``random``: a seeded uniform share ``rate`` of the images; score ``1 - u / rate`` (u: :func:`seeded_uniform`).

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    u = seeded_uniform(rows, seed=seed, cycle=cycle, salt="random")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _as_frame(rows, np.where(u < rate, 1.0 - u / rate, np.nan))


def score_low_confidence(rows: ImageRows, *, band: tuple[float, float]) -> pl.DataFrame:
    """``low_confidence``: ``n`` boxes with confidence in ``[band[0], band[1])``; score ``n / (n + 1)`` when n >= 1.

    An image with no box in the band but sub-threshold evidence ``e`` scores ``0.5 x min(e / band[0], 1)`` (module
    docstring).

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    low, high = band
    in_band = (rows.confidence >= low) & (rows.confidence < high)  # NaN compares False
    n = _per_image_sum(rows, in_band.astype(np.int32)).astype(np.float64)
    evidence, _ = _evidence(rows)
    missed = 0.5 * np.minimum(evidence / low, 1.0) if low > 0 else np.where(np.isnan(evidence), np.nan, 0.5)
    return _as_frame(rows, np.where(n > 0, n / (n + 1.0), missed))


def score_entropy(rows: ImageRows, *, min_score: float) -> pl.DataFrame:
    """``entropy``: mean binary entropy (bits) of the image's box confidences, kept when >= ``min_score``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    boxes = _boxes(rows)
    entropy = np.zeros(len(rows.confidence), np.float32)
    entropy[boxes] = _binary_entropy(rows.confidence[boxes])  # float32 is plenty for a mean
    n = _per_image_sum(rows, boxes.astype(np.int32))
    total = _per_image_sum(rows, entropy).astype(np.float64)
    evidence, _ = _evidence(rows)
    missed = ~np.isnan(evidence)  # the strongest sub-threshold box is one more term
    total[missed] += _binary_entropy(evidence[missed].astype(np.float32))
    n = n + missed
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
    return _as_frame(rows, np.where((n > 0) & (mean >= min_score), mean, np.nan))


def score_margin(rows: ImageRows, *, threshold: float, min_score: float) -> pl.DataFrame:
    """``margin``: the image's best box score ``1 - m`` (``m``: the box's logged top-1 minus top-2 class score).

    A box without a logged margin (older rows, an end-to-end head, one class) scores the margin of a binary
    keep/drop decision at ``threshold`` instead: ``1 - |conf - threshold| / max(threshold, 1 - threshold)`` (0.5:
    the classic ``1 - |p - (1 - p)|``). Kept when >= ``min_score``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    fallback = 1.0 - np.abs(rows.confidence.astype(np.float64) - threshold) / max(threshold, 1.0 - threshold)
    margin = np.full(len(rows.confidence), np.nan) if rows.margin is None else rows.margin.astype(np.float64)
    per_box = np.where(_boxes(rows), np.where(np.isnan(margin), fallback, 1.0 - margin), -np.inf)
    best = np.maximum.reduceat(per_box, rows.starts) if len(rows) else np.zeros(0)
    return _as_frame(rows, np.where(np.isfinite(best) & (best >= min_score), best, np.nan))


def score_class_balanced(rows: ImageRows, *, min_score: float) -> pl.DataFrame:
    """``class_balanced``: inverse class frequency over ``rows``, scaled so the rarest predicted class scores 1.

    Score of an image = ``min_c f_c / f_k`` for the rarest class ``k`` among its boxes (``f``: box counts per class
    over all of ``rows``); kept when >= ``min_score``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    boxes = rows.class_id >= 0
    counts = np.bincount(rows.class_id[boxes].astype(np.int64), minlength=1).astype(np.float64)
    if not boxes.any():
        return _as_frame(rows, np.full(len(rows), np.nan))
    rarity = np.divide(counts[counts > 0].min(), counts, out=np.zeros_like(counts), where=counts > 0)
    per_box = np.where(boxes, rarity[np.where(boxes, rows.class_id, 0)], -1.0)
    best = np.maximum.reduceat(per_box, rows.starts)
    return _as_frame(rows, np.where((best > 0) & (best >= min_score), best, np.nan))


def score_drift(rows: ImageRows, *, flagged: Collection[str], rate: float, seed: int, cycle: str) -> pl.DataFrame:
    """``drift``: a seeded share ``rate`` of the images of ``flagged`` batches; score ``1 - u / rate``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    in_flagged = rows.images["batch"].is_in(list(flagged)).to_numpy()
    u = seeded_uniform(rows, seed=seed, cycle=cycle, salt="drift")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _as_frame(rows, np.where(in_flagged & (u < rate), 1.0 - u / rate, np.nan))


def score_diversity(rows: ImageRows, *, labeled: npt.NDArray[np.bool_], k: int, seed: int, cycle: str) -> _FloatArray:
    """``diversity``: k-center greedy over the standardised input statistics + box count (module docstring).

    Args:
        rows: the window's images, read with ``stats``.
        labeled: (I,) True for images already labeled (the ledger): they seed the centers and are never picked.
        k: how many images to pick (``POOL_FACTOR x budget``).
        seed: ``base.seed``.
        cycle: the cycle name (with ``seed``, the first center and the tie-break).

    Returns:
        (I,) scores, NaN = not picked; the i-th of ``n`` picks scores ``1 - i / n``.
    """
    if rows.stats is None:
        raise ValueError("score_diversity needs ImageRows read with stats=True")
    boxes = _per_image_sum(rows, _boxes(rows).astype(np.int32)).astype(np.float64)
    features = np.column_stack([rows.stats.astype(np.float64), boxes])
    score = np.full(len(rows), np.nan)
    known = np.flatnonzero(~np.isnan(features).any(axis=1))
    if k <= 0 or len(known) == 0:
        return score
    x = features[known]
    spread = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    u = seeded_uniform(rows, seed=seed, cycle=cycle, salt="diversity")[known]
    seeds = np.flatnonzero(labeled[known])
    seeds = seeds[np.argsort(u[seeds], kind="stable")][:MAX_SEED_CENTERS]
    nearest = np.full(len(known), np.inf)
    for center in seeds:
        nearest = np.minimum(nearest, ((x - x[center]) ** 2).sum(axis=1))
    nearest[labeled[known]] = -np.inf  # never picked
    picks: list[int] = []
    while len(picks) < k:
        best = nearest.max()
        if best == -np.inf:
            break
        tied = np.flatnonzero(nearest == best)  # all of them at first, without labeled centers
        pick = int(tied[np.argmin(u[tied])])
        picks.append(pick)
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(axis=1))
        nearest[pick] = -np.inf
    score[known[picks]] = 1.0 - np.arange(len(picks)) / len(picks)
    return score


def score_disagreement(champion: ImageRows, other: ImageRows, *, iou: float, min_score: float) -> pl.DataFrame:
    """``disagreement``: the champion's boxes against another model version's boxes on the same images.

    Images are matched by ``image_sha256``; every same-class (champion box, other box) pair of a matched image is formed
    at once (numpy, no per-image loop). A box agrees when the other side has a box of the same class at IoU >= ``iou``
    (normalised corners; best match, not one-to-one). Score of an image:
    ``1 - min(agreeing champion boxes, agreeing other boxes) / max(champion boxes, other boxes)``: identical
    predictions score 0; a class flip, a box only one side has, or a moved box each lower the agreement.

    Args:
        champion: the champion's rows, with ``boxes_xyxyn``.
        other: the other version's rows, with ``boxes_xyxyn``.
        iou: IoU threshold in [0, 1].
        min_score: smallest score kept (0 is never kept).

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``champion.images``; ``score`` null when the other version
        did not log the image or the score is below ``min_score``.
    """
    if champion.boxes_xyxyn is None or other.boxes_xyxyn is None:
        raise ValueError("score_disagreement needs ImageRows read with boxes=True")
    c_image, o_image = _same_images(champion, other)
    # Same-class box pairs of every matched image m, by a sorted merge on the key (m, class): no per-image loop and
    # no cross product of boxes of different classes.
    n_classes = int(max(champion.class_id.max(initial=0), other.class_id.max(initial=0))) + 1
    c_row, c_key = _keyed_rows(champion, c_image, n_classes)
    o_row, o_key = _keyed_rows(other, o_image, n_classes)
    c_sorted = np.argsort(c_key, kind="stable")  # keys come nearly sorted (by match): cheap, and cache-friendly below
    c_row, c_key = c_row[c_sorted], c_key[c_sorted]
    o_sorted = np.argsort(o_key, kind="stable")
    low = np.searchsorted(o_key[o_sorted], c_key, side="left")
    count = np.searchsorted(o_key[o_sorted], c_key, side="right") - low
    offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    c_pair = np.repeat(c_row, count)
    o_pair = o_row[o_sorted[np.repeat(low, count) + offset]]
    hit = box_iou(champion.boxes_xyxyn[c_pair], other.boxes_xyxyn[o_pair]) >= iou
    c_hit = np.zeros(len(champion.class_id), np.int32)
    c_hit[c_pair[hit]] = 1
    o_hit = np.zeros(len(other.class_id), np.int32)
    o_hit[o_pair[hit]] = 1
    c_agree = _per_image_sum(champion, c_hit)[c_image]
    o_agree = _per_image_sum(other, o_hit)[o_image]
    c_boxes = _per_image_sum(champion, (champion.class_id >= 0).astype(np.int32))[c_image]
    o_boxes = _per_image_sum(other, (other.class_id >= 0).astype(np.int32))[o_image]
    most = np.maximum(c_boxes, o_boxes)
    with np.errstate(divide="ignore", invalid="ignore"):
        found = np.where(most > 0, 1.0 - np.minimum(c_agree, o_agree) / most, 0.0)
    score = np.full(len(champion), -np.inf)
    np.maximum.at(score, c_image, found)  # an image the other version logged twice keeps its larger score
    return _as_frame(champion, np.where((score > 0) & (score >= min_score), score, np.nan))


def _same_images(a: ImageRows, b: ImageRows) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Index pairs ``(i, j)`` with ``a`` image i and ``b`` image j of the same SHA-256 (joined on the 64-bit prefix)."""
    left = pl.DataFrame({"key": a.sha_prefix}).with_row_index("a")
    right = pl.DataFrame({"key": b.sha_prefix}).with_row_index("b")
    pairs = left.join(right, on="key", how="inner")
    i = pairs["a"].to_numpy().astype(np.int64)
    j = pairs["b"].to_numpy().astype(np.int64)
    same = (a.images["image_sha256"].gather(i) == b.images["image_sha256"].gather(j)).to_numpy()
    return i[same], j[same]


def _keyed_rows(
    rows: ImageRows, images: npt.NDArray[np.int64], n_classes: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Box rows of ``images`` (zero-detection rows left out) and their key ``match index x n_classes + class``."""
    count = _rows_per_image(rows)[images]
    match = np.repeat(np.arange(len(images)), count)
    row = (
        np.repeat(rows.starts[images], count) + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    )
    keep = rows.class_id[row] >= 0
    row, match = row[keep], match[keep]
    return row, match * n_classes + rows.class_id[row]


def box_iou(a_xyxy: npt.NDArray[np.float32], b_xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise IoU of two (N, 4) ``x1, y1, x2, y2`` box arrays (any common unit); 0 for two empty boxes."""
    inter = np.clip(np.minimum(a_xyxy[:, 2], b_xyxy[:, 2]) - np.maximum(a_xyxy[:, 0], b_xyxy[:, 0]), 0, None)
    inter *= np.clip(np.minimum(a_xyxy[:, 3], b_xyxy[:, 3]) - np.maximum(a_xyxy[:, 1], b_xyxy[:, 1]), 0, None)
    union = (a_xyxy[:, 2] - a_xyxy[:, 0]) * (a_xyxy[:, 3] - a_xyxy[:, 1])
    union += (b_xyxy[:, 2] - b_xyxy[:, 0]) * (b_xyxy[:, 3] - b_xyxy[:, 1])
    union -= inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.float32(0.0))


def _rows_per_image(rows: ImageRows) -> npt.NDArray[np.int64]:
    return np.diff(np.append(rows.starts, len(rows.class_id)))


# --- selection -----------------------------------------------------------------------------------------------------


class Pool(NamedTuple):
    """Nominations, best first: one entry per (strategy, image) a strategy put forward."""

    image: npt.NDArray[np.int64]  # index into ImageRows.images
    strategy: npt.NDArray[np.int64]  # index into STRATEGIES
    score: _FloatArray


def nominate(
    scores: dict[str, _FloatArray],
    *,
    strategies: dict[str, SampleStrategy],
    eligible: npt.NDArray[np.bool_],
    order: _FloatArray,
) -> Pool:
    """Each strategy's best ``POOL_FACTOR x budget`` eligible images, merged and sorted by weighted score.

    Args:
        scores: strategy -> (I,) scores (NaN = not a candidate).
        strategies: strategy -> its config (weight, budget).
        eligible: (I,) False for images excluded up front (the ledger).
        order: (I,) seeded tie-break in [0, 1).

    Returns:
        The nominations, sorted by weight x score descending, then strategy order, then ``order``.
    """
    picked: list[tuple[npt.NDArray[np.int64], int, _FloatArray]] = []
    for name, score in scores.items():
        keep = np.flatnonzero(eligible & ~np.isnan(score))
        size = POOL_FACTOR * strategies[name].budget
        if len(keep) > size:
            # everything at or above the size-th best score, then the exact order on that short list
            cut = np.partition(-score[keep], size - 1)[size - 1]
            keep = keep[-score[keep] <= cut]
        keep = keep[np.lexsort((order[keep], -score[keep]))][:size]
        picked.append((keep, STRATEGIES.index(name), score[keep]))
    if not picked:
        return Pool(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    image = np.concatenate([p[0] for p in picked]).astype(np.int64)
    strategy = np.concatenate([np.full(len(p[0]), p[1], np.int64) for p in picked])
    score = np.concatenate([p[2] for p in picked])
    weight = np.array([strategies[STRATEGIES[s]].weight for s in strategy], dtype=np.float64)
    ranked = np.lexsort((order[image], strategy, -(weight * score)))
    return Pool(image[ranked], strategy[ranked], score[ranked])


@dataclass
class _Selection:
    """The greedy fill's state (mutable, internal)."""

    params: SampleParams
    phash: Callable[[str], PackedHashes | None]
    taken: set[str]
    rows: list[dict[str, Any]]
    used: Counter[str]
    per_day: Counter[dt.date]
    rejected: dict[str, str]  # sha -> exclusion reason
    hashes: PackedHashes  # (M + budget, 8): ledger phashes, then the taken images' ones
    n_hashes: int

    def admit(self, sha: str, row: dict[str, Any]) -> tuple[bool, PackedHashes | None]:
        """Check the day cap and the near-duplicate rule; ``(taken, its hash)``; a refusal is recorded."""
        cap, check = self.params.max_per_day, self.params.phash_distance
        if cap is not None and self.per_day[row["date"]] >= cap:
            self.rejected[sha] = "day_cap"
            return False, None
        if check is None:
            return True, None
        value = self.phash(row["image_uri"])
        if value is None:
            self.rejected[sha] = "unreadable_image"
            return False, None
        if self.n_hashes and hamming(value, self.hashes[: self.n_hashes]).min() <= check:
            self.rejected[sha] = "near_duplicate"
            return False, None
        self.hashes[self.n_hashes] = value
        self.n_hashes += 1
        return True, value

    def take(self, sha: str, row: dict[str, Any], *, strategy: str, score: float, value: PackedHashes | None) -> None:
        self.taken.add(sha)
        self.used[strategy] += 1
        self.per_day[row["date"]] += 1
        phash = None if value is None else to_hex(value)
        rank = len(self.rows) + 1
        self.rows.append(
            {**row, "image_sha256": sha, "strategy": strategy, "score": score, "rank": rank, "phash": phash}
        )


def select(
    pool: Pool,
    meta: dict[str, dict[str, Any]],
    *,
    rows: ImageRows,
    params: SampleParams,
    ledger_phash: PackedHashes,
    phash: Callable[[str], PackedHashes | None],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Greedy fill of the budget from the nominations, best first.

    An image goes to the nominating strategy that reaches it first while that strategy still has budget, unless its
    batch date is full (``max_per_day``) or it is a near-duplicate (Hamming distance <= ``phash_distance``) of a
    ledger hash or of an image already taken; the loop stops at ``budget`` images. Only the images it reaches are
    hashed.

    Args:
        pool: nominations, best first (:func:`nominate`).
        meta: image_sha256 -> its log row (``image_id, image_uri, batch, date, model_name, model_version``).
        rows: the image rows the pool indexes.
        params: the ``sample`` section.
        ledger_phash: (M, 8) uint8 packed perceptual hashes of labeled images (:mod:`tasks.core.phash`).
        phash: image URI -> its packed 64-bit perceptual hash, or None when unreadable; called only when
            ``phash_distance`` is set.

    Returns:
        The manifest rows in rank order (``phash`` as 16 hex digits or None; without ``strategies``), and
        image_sha256 -> exclusion reason (:data:`EXCLUSIONS`).
    """
    state = _Selection(
        params=params,
        phash=phash,
        taken=set(),
        rows=[],
        used=Counter(),
        per_day=Counter(),
        rejected={},
        hashes=np.concatenate([ledger_phash.reshape(-1, n_bytes()), np.zeros((params.budget, n_bytes()), np.uint8)]),
        n_hashes=len(ledger_phash),
    )
    shas = rows.images["image_sha256"]
    for index, strategy_index, score in zip(
        pool.image.tolist(), pool.strategy.tolist(), pool.score.tolist(), strict=True
    ):
        if len(state.rows) >= params.budget:
            break
        sha = shas[index]
        strategy = STRATEGIES[strategy_index]
        config = getattr(params.strategies, strategy)
        if sha in state.taken or sha in state.rejected or state.used[strategy] >= config.budget:
            continue
        admitted, value = state.admit(sha, meta[sha])
        if admitted:
            state.take(sha, meta[sha], strategy=strategy, score=float(score), value=value)
    return state.rows, state.rejected


def shortfall(params: SampleParams, selected: list[dict[str, Any]]) -> str | None:
    """Why fewer than ``budget`` images were selected (None when the budget is filled)."""
    if len(selected) >= params.budget:
        return None
    enabled = enabled_strategies(params)
    taken = Counter(row["strategy"] for row in selected)
    short = ", ".join(f"{name} {taken[name]}/{c.budget}" for name, c in enabled.items() if taken[name] < c.budget)
    total = sum(config.budget for config in enabled.values())
    if total < params.budget:
        return f"{len(selected)} of {params.budget}: the strategies' budgets add up to {total} ({short or 'all full'})"
    return f"{len(selected)} of {params.budget}: too few eligible candidates for {short}"
