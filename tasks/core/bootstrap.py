"""Bootstrap confidence intervals: the paired bootstrap of an mAP difference over images, of one model's mAP, and
of a median.

:func:`paired_bootstrap` resamples the images of one set (the same images for both models) and re-accumulates
COCO AP from stored matches (:mod:`tasks.core.coco`) for every resample; :func:`bootstrap_median` resamples
readings, e.g. one per timing round. Both give an :class:`Interval` with percentile bounds; a seed gives the same
resamples whatever else the process does. Pure numpy; imports nothing of ``tasks`` outside ``core``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tasks.core.coco import SetMatches, average_precision, mean_ap

# Resamples are drawn in chunks of this size, so a seed gives the same resamples whatever the data size.
_DRAW_CHUNK = 100


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


def bootstrap_map(matches: SetMatches, *, resamples: int, seed: int, level: float) -> Interval:
    """Confidence interval of one model's mAP50-95 on one set, by resampling its images (learning curves).

    Args:
        matches: the model's stored matches on the set.
        resamples, seed, level: as :func:`paired_bootstrap` (the same images are drawn for any model on a set of
            that size and ``seed``).

    Returns:
        The full-set mAP50-95 and its percentile interval (resamples without any ground truth left out).

    Raises:
        ValueError: the set is empty, or the arguments are invalid.
    """
    if matches.num_images == 0:
        raise ValueError("bootstrap of an empty set")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got resamples={resamples}, level={level}")
    estimate = float(mean_ap(average_precision(matches))[0])
    rng = np.random.default_rng(seed)
    values = np.concatenate(
        [
            mean_ap(
                average_precision(
                    matches, _resample_weights(rng, matches.num_images, min(_DRAW_CHUNK, resamples - start))
                )
            )
            for start in range(0, resamples, _DRAW_CHUNK)
        ]
    )
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(estimate, math.nan, math.nan, level, resamples)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
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
