"""The watch after a promotion: does the new champion regress against the version it replaced? Pure.

Production windows (:func:`watch_window`) pair the two versions' predictions on the same images of one window (both
versions predicted them: the new one as champion, the old one from its own log rows or a re-prediction), so image
difficulty cancels out; the tests are one-sided (only a regression matters) at ``watch.alpha``:

* ``confidence_drop``: previous − new mean box confidence per image (images where both have a box), Wilcoxon
  signed-rank; regresses above ``max_confidence_drop``.
* ``empty_rise``: (images newly empty − images no longer empty) / pairs; exact binomial test on the discordant
  pairs (McNemar); regresses above ``max_empty_rise``.
* ``detections_drop``: 1 − mean(new boxes per image) / mean(previous); Wilcoxon signed-rank on previous − new per
  image; regresses above ``max_detections_drop``.

A fresh holdout labeled after the promotion (:func:`holdout_window`) regresses when the upper bound of the paired
bootstrap CI of (new − previous) mAP50-95 is below ``-max_holdout_loss``. :func:`decide_watch` rolls back on any
regressed holdout or ``confirm_windows`` regressed production windows in a row, and judges nothing once more than
``watch.windows`` production windows have passed since the promotion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy import stats

from tasks.config import WatchParams
from tasks.contracts.monitor_frames import Frames
from tasks.contracts.reports.monitor import Watch, WatchWindow
from tasks.decisions.trigger import confirm


def _wilcoxon_greater(differences: np.ndarray) -> float | None:
    """One-sided Wilcoxon signed-rank p-value that ``differences`` centre above 0 (``None``: fewer than 2)."""
    nonzero = differences[differences != 0]
    if len(differences) < 2:
        return None
    if len(nonzero) == 0:
        return 1.0
    return float(stats.wilcoxon(nonzero, alternative="greater").pvalue)


# long: three paired rules, each a few lines of numbers and a sentence; the module docstring lists them
def watch_window(new: Frames, previous: Frames, rules: WatchParams, *, key: str) -> WatchWindow:
    """Pair the new champion's and the previous version's predictions on the same images of one window.

    Args:
        new: the new champion's rows of the window.
        previous: the previous version's rows of the same window.
        rules: ``monitor.watch``.
        key: the window's name (a batch or a date).

    Returns:
        A production :class:`WatchWindow`: ``images`` = images both predicted (error rows left out), ``numbers``
        (drops, rises and p-values; ``None`` where not computable), ``reasons`` (one sentence per rule that
        fired, or one saying why nothing did), ``regressed`` when any rule fired.
    """
    on = ["batch", "image_id"]
    columns = [*on, "n_detections", "mean_confidence"]
    a = new.images.filter(pl.col("error").is_null()).select(columns)
    b = previous.images.filter(pl.col("error").is_null()).select(columns)
    paired = a.join(b, on=on, how="inner", suffix="_prev")
    n = paired.height
    if n == 0:
        return WatchWindow(
            key=key, kind="production", images=0, regressed=False, reasons=["no image predicted by both versions"]
        )
    numbers: dict[str, float | None] = {}
    reasons: list[str] = []

    conf = paired.filter(pl.col("mean_confidence").is_not_null() & pl.col("mean_confidence_prev").is_not_null())
    conf_diff = (conf["mean_confidence_prev"] - conf["mean_confidence"]).to_numpy()
    numbers["confidence_images"] = float(len(conf_diff))
    numbers["confidence_drop"] = float(conf_diff.mean()) if len(conf_diff) else None
    numbers["confidence_p"] = _wilcoxon_greater(conf_diff)
    if _fires(numbers["confidence_drop"], numbers["confidence_p"], rules.max_confidence_drop, rules.alpha):
        reasons.append(
            f"mean confidence fell by {numbers['confidence_drop']:.3f} per image (> {rules.max_confidence_drop}, "
            f"Wilcoxon p = {numbers['confidence_p']:.2g}, {len(conf_diff)} images)"
        )

    new_empty = (paired["n_detections"] == 0).to_numpy()
    old_empty = (paired["n_detections_prev"] == 0).to_numpy()
    worse, better = int(np.sum(new_empty & ~old_empty)), int(np.sum(old_empty & ~new_empty))
    numbers["empty_new"] = float(new_empty.mean())
    numbers["empty_previous"] = float(old_empty.mean())
    numbers["empty_rise"] = (worse - better) / n
    numbers["empty_p"] = (
        float(stats.binomtest(worse, worse + better, 0.5, alternative="greater").pvalue) if worse + better else 1.0
    )
    if _fires(numbers["empty_rise"], numbers["empty_p"], rules.max_empty_rise, rules.alpha):
        reasons.append(
            f"images without a detection rose by {numbers['empty_rise']:.0%} ({worse} newly empty, {better} no longer; "
            f"> {rules.max_empty_rise:.0%}, exact binomial p = {numbers['empty_p']:.2g})"
        )

    counts_new = paired["n_detections"].cast(pl.Float64).to_numpy()
    counts_old = paired["n_detections_prev"].cast(pl.Float64).to_numpy()
    numbers["detections_new"] = float(counts_new.mean())
    numbers["detections_previous"] = float(counts_old.mean())
    numbers["detections_drop"] = 1.0 - counts_new.mean() / counts_old.mean() if counts_old.mean() > 0 else None
    numbers["detections_p"] = _wilcoxon_greater(counts_old - counts_new)
    if _fires(numbers["detections_drop"], numbers["detections_p"], rules.max_detections_drop, rules.alpha):
        reasons.append(
            f"detections per image fell by {numbers['detections_drop']:.0%} ({counts_old.mean():.2f} -> "
            f"{counts_new.mean():.2f}; > {rules.max_detections_drop:.0%}, Wilcoxon p = {numbers['detections_p']:.2g})"
        )
    regressed = bool(reasons)
    if not regressed:
        reasons.append(f"no regression on {n} paired images")
    return WatchWindow(key=key, kind="production", images=n, regressed=regressed, numbers=numbers, reasons=reasons)


def _fires(value: float | None, p: float | None, threshold: float, alpha: float) -> bool:
    return value is not None and p is not None and value > threshold and p < alpha


def holdout_window(key: str, estimate: float, low: float, high: float, images: int, rules: WatchParams) -> WatchWindow:
    """A fresh holdout's paired-bootstrap result of (new − previous) mAP50-95 as a watch window.

    Regressed when the CI's upper bound ``high`` is below ``-rules.max_holdout_loss`` (the new champion is
    worse beyond doubt and beyond the tolerated loss).
    """
    regressed = high < -rules.max_holdout_loss
    sentence = (
        f"holdout {key}: mAP50-95 new − previous {estimate:+.3f}, 95 % CI [{low:+.3f}, {high:+.3f}] on {images} images"
    )
    verdict = (
        f"; the upper bound is below -{rules.max_holdout_loss}: the new champion is worse"
        if regressed
        else f"; the upper bound is not below -{rules.max_holdout_loss}: no regression shown"
    )
    return WatchWindow(
        key=key,
        kind="holdout",
        images=images,
        regressed=regressed,
        numbers={"estimate": estimate, "low": low, "high": high},
        reasons=[sentence + verdict],
    )


def decide_watch(
    windows: Sequence[WatchWindow],
    rules: WatchParams,
    *,
    new_version: str,
    previous_version: str,
    promoted_at: str,
    windows_since: int,
) -> Watch:
    """Decide whether the newest promotion regressed (and so is rolled back when ``auto_rollback``).

    Args:
        windows: production and holdout watch windows since the promotion, oldest first.
        rules: ``monitor.watch``.
        new_version, previous_version: the promoted version and the one it replaced.
        promoted_at: the promotion's time (ISO), copied into the result.
        windows_since: production windows logged since the promotion.

    Returns:
        The :class:`Watch`: ``expired`` when ``windows_since`` > ``rules.windows`` (nothing judged then);
        otherwise ``regressed`` when a holdout regressed or the production windows (the first ``rules.windows``)
        regressed ``rules.confirm_windows`` in a row; ``reason`` says which and with what numbers.
    """

    def result(reason: str, *, regressed: bool = False, expired: bool = False) -> Watch:
        return Watch(
            new_version=new_version,
            previous_version=previous_version,
            promoted_at=promoted_at,
            windows=list(windows),
            regressed=regressed,
            expired=expired,
            reason=reason,
        )

    if windows_since > rules.windows:
        reason = (
            f"watch over: {windows_since} production windows since the promotion of v{new_version} "
            f"(monitor.watch.windows = {rules.windows}); nothing is judged now"
        )
        return result(reason, expired=True)
    production = [w for w in windows if w.kind == "production"][: rules.windows]
    holdouts = [w for w in windows if w.kind == "holdout" and w.regressed]
    if holdouts:
        reason = f"v{new_version} regressed against v{previous_version} on a fresh holdout: " + " ".join(
            holdouts[0].reasons
        )
        return result(reason, regressed=True)
    k = rules.confirm_windows
    history = [w.regressed for w in production]
    for end in range(k, len(history) + 1):
        if confirm(history[:end], k):
            run = production[end - k : end]
            detail = "; ".join(f"{w.key}: {' '.join(w.reasons)}" for w in run)
            reason = (
                f"v{new_version} regressed against v{previous_version} in {k} production window(s) in a row: {detail}"
            )
            return result(reason, regressed=True)
    reason = (
        f"v{new_version} holds against v{previous_version}: {sum(history)} of {len(production)} production window(s) "
        f"regressed ({k} in a row needed), {windows_since} of {rules.windows} watched so far"
    )
    return result(reason)
