"""The monitor's drift rules: windows of the prediction log judged against the champion's baseline. Pure.

:func:`windows_of` cuts :class:`~tasks.contracts.monitor_frames.Frames` into windows (a batch or a day), oldest
first; :func:`compare` judges one window against the baseline and returns a
:class:`~tasks.contracts.reports.monitor.Window`; :func:`agreement` compares a shadow's predictions with the
champion's on the images both predicted. The retrain trigger (:func:`decide_trigger`) lives in
:mod:`tasks.decisions.trigger` and the post-promotion watch (:func:`watch_window`, :func:`decide_watch`) in
:mod:`tasks.decisions.watch`; both are re-exported here. Nothing reads files.

The signals of :func:`compare` (``monitor.drift`` is :class:`~tasks.config.DriftRules`):

| signal | side | per unit | test | effect |
|---|---|---|---|---|
| ``confidence`` | output | image with a box: mean box confidence | KS | KS statistic |
| ``max_confidence`` | output | image with a box: its highest confidence | KS | KS statistic |
| ``detections_per_image`` | output | image: its number of boxes | KS | KS statistic |
| ``box_size`` | output | image with a box: median shorter box side at the model's input | KS | KS statistic |
| ``low_conf_share`` | output | image with a box: has one below ``low_confidence`` | Fisher | share difference |
| ``empty_share`` | output | image: has no box | Fisher | share difference |
| ``class_mix`` | output | box: its class | chi-square / design effect | Cramér's V |
| each of :data:`~tasks.contracts.monitor_frames.STATS` | input | image: the statistic | KS | KS statistic |

Summaries (``Signal.baseline`` / ``window``): the mean for KS signals (the median for ``box_size``, in pixels at
the model's input, which the imgsz advice reads), the share for the Fisher ones, and for the class mix the share
of boxes of the class whose share moved most (named in the note).

Why these units: the image is the sampling unit (a batch is a sample of images), so every test but the class mix
treats images as independent observations; box-level tests would count one busy image many times. The shares use
Fisher's exact test (no large-sample approximation, fine with zero counts, e.g. a baseline without empty
images). The class mix is a box-level contingency table (classes are properties of boxes), and boxes of one image
are not independent (a scene's objects share lighting, and a drifting image brings several boxes of its class),
so the chi-square statistic is divided by the design effect (first-order Rao-Scott: the variance of each class
share across images, as a ratio estimator over image clusters, against its variance under independent boxes,
averaged; estimated from the data of both sides, never below 1). Images whose boxes share one class inflate it
towards the boxes per image; independent boxes leave it near 1, keeping the test's power. Cramér's V, the
effect, is computed from the uncorrected statistic: it describes the size of the shift, not its certainty.

A signal drifts when its p-value is below ``alpha / m`` (Bonferroni over the ``m`` signals available in this
window) and its effect reaches ``min_effect``; a window drifts when any signal does. PSI (baseline-quantile bins,
``psi_bins``) is reported beside every continuous signal and decides nothing. Error rows (images that could not be
read or inferred) are counted by kind and judged by no signal; latency percentiles are over the other images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import polars as pl
from scipy import stats

from tasks.config import DriftRules
from tasks.contracts.monitor_frames import ERROR_KINDS, STATS, Frames, problems_of, select
from tasks.contracts.reports.monitor import Agreement, Side, Signal, Window
from tasks.decisions.trigger import confirm, decide_trigger
from tasks.decisions.watch import decide_watch, holdout_window, watch_window

__all__ = [
    "OUTPUT_SIGNALS",
    "agreement",
    "compare",
    "confirm",
    "decide_trigger",
    "decide_watch",
    "holdout_window",
    "watch_window",
    "windows_of",
]

OUTPUT_SIGNALS: tuple[str, ...] = (
    "confidence",
    "max_confidence",
    "detections_per_image",
    "box_size",
    "low_conf_share",
    "empty_share",
    "class_mix",
)
"""The output-side signals, in report order (the input side follows, one per statistic)."""

_IMAGE_KEYS = ["model_version", "model_alias", "batch", "image_id"]
_EPS = 1e-4  # PSI: share floor of an empty bin


def windows_of(fr: Frames, *, by: Literal["batch", "day"]) -> list[tuple[str, str, Frames]]:
    """Cut frames into windows, oldest first.

    Windows are ordered by the batch's date (the log's ``date`` column, i.e. the production date of the batch),
    then by batch name, never by ``ts``: prediction timestamps say when a batch was predicted, which may be out of
    order (a re-run, a late batch).

    Args:
        fr: frames of one model's rows (filter first: every row counts).
        by: ``batch`` (one window per batch, key = batch name, date = its earliest date) or ``day`` (one window per
            date, key = date = the ISO date; a batch spanning days falls into each).

    Returns:
        ``(key, ISO date, frames of the window)``; each window keeps the problem lines of its batches. Empty for
        empty frames.
    """
    if fr.images.is_empty():
        return []
    if by == "day":
        out = []
        for day in sorted(fr.images["date"].unique().to_list()):
            in_day = fr.images.filter(pl.col("date") == day)
            batches = sorted(in_day["batch"].unique().to_list())
            keys = in_day.select(_IMAGE_KEYS)
            boxes = fr.boxes.join(keys, on=_IMAGE_KEYS, how="semi", nulls_equal=True, maintain_order="left")
            part = replace(fr, images=in_day, boxes=boxes, problems=problems_of(fr.problems, batches))
            out.append((day.isoformat(), day.isoformat(), part))
        return out
    order = fr.images.group_by("batch").agg(pl.col("date").min()).sort(["date", "batch"])
    images_of = {str(k[0]): v for k, v in fr.images.partition_by("batch", as_dict=True).items()}
    boxes_of = {str(k[0]): v for k, v in fr.boxes.partition_by("batch", as_dict=True).items()}
    out = []
    for batch, date in order.iter_rows():
        boxes = boxes_of.get(batch, fr.boxes.clear())
        part = replace(fr, images=images_of[batch], boxes=boxes, problems=problems_of(fr.problems, [batch]))
        out.append((str(batch), date.isoformat(), part))
    return out


# long: one place lists every signal of a window in report order; each is one call to a small judge below
def compare(
    baseline: Frames,
    window: Frames,
    rules: DriftRules,
    *,
    key: str,
    date: str,
    source: str | None = None,
) -> Window:
    """Judge one window of the champion's log rows against its baseline.

    Args:
        baseline: the champion's predictions (and input statistics) on its own validation images.
        window: the window's rows (one model's; :func:`windows_of`).
        rules: ``monitor.drift``.
        key, date: the window's name and ISO date, copied into the result.
        source: judge only this source of the window (``None``: all sources together).

    Returns:
        The :class:`Window` (``images``: images without an error kind, the ones judged; ``boxes``: their boxes):
        every signal (available or with a note why not), ``drifted`` / ``output_drifted`` /
        ``input_drifted``, latency percentiles, error counts by kind, advice, and the window's problem lines. A
        window with fewer than ``rules.min_images`` judged images is ``too_small`` and never drifts (an empty
        window gives ``images`` 0); a baseline that small judges nothing either (a problem line says so).
    """
    if source is not None:
        window = select(window, source=source)
    base_ok = _judged(baseline.images)
    win_all = window.images
    win_ok = _judged(win_all)
    problems = list(window.problems)
    too_small = win_ok.height < rules.min_images
    if base_ok.height < rules.min_images:
        problems.append(f"baseline has {base_ok.height} judged image(s), fewer than {rules.min_images}: nothing judged")
    base_boxes, win_boxes = _judged_boxes(baseline.boxes), _judged_boxes(window.boxes)
    signals = [
        _ks("confidence", "output", base_ok["mean_confidence"], win_ok["mean_confidence"], rules, what="boxes"),
        _ks("max_confidence", "output", base_ok["max_confidence"], win_ok["max_confidence"], rules, what="boxes"),
        _ks("detections_per_image", "output", base_ok["n_detections"], win_ok["n_detections"], rules, what="images"),
        _ks("box_size", "output", base_ok["median_box_px"], win_ok["median_box_px"], rules, what="boxes", median=True),
        _share(
            "low_conf_share",
            base_ok["low_conf_share"].drop_nulls() > 0,
            win_ok["low_conf_share"].drop_nulls() > 0,
            what="boxes",
        ),
        _share("empty_share", base_ok["n_detections"] == 0, win_ok["n_detections"] == 0, what="images"),
        _class_mix(base_boxes, win_boxes),
    ]
    for name in STATS:
        if not window.stats_logged:
            note = "not available: the log has no input statistics (written before they existed)"
            signals.append(Signal(name=name, side="input", test="ks", available=False, note=note))
        elif not baseline.stats_logged:
            note = "not available: the baseline has no input statistics"
            signals.append(Signal(name=name, side="input", test="ks", available=False, note=note))
        else:
            signals.append(_ks(name, "input", base_ok[name], win_ok[name], rules, what="input statistics"))
    judge = not too_small and base_ok.height >= rules.min_images
    signals = _decide(signals, rules, judge=judge)
    output_drifted = any(s.drifted for s in signals if s.side == "output")
    input_drifted = any(s.drifted for s in signals if s.side == "input")
    return Window(
        key=key,
        date=date,
        source=source,
        images=win_ok.height,
        boxes=win_boxes.height,
        batches=_batches_in_order(win_all),
        drifted=output_drifted or input_drifted,
        output_drifted=output_drifted,
        input_drifted=input_drifted,
        too_small=too_small,
        signals=signals,
        latency_ms=_latency(win_ok),
        errors=_errors(win_all),
        advice=_advice(signals, rules),
        problems=problems,
    )


def _judged(images: pl.DataFrame) -> pl.DataFrame:
    """Images a signal may judge: those without an error kind."""
    return images.filter(pl.col("error").is_null())


def _judged_boxes(boxes: pl.DataFrame) -> pl.DataFrame:
    return boxes.filter(pl.col("confidence").is_not_null())


def _batches_in_order(images: pl.DataFrame) -> list[str]:
    if images.is_empty():
        return []
    order = images.group_by("batch").agg(pl.col("date").min()).sort(["date", "batch"])
    return [str(b) for b in order["batch"].to_list()]


def _finite(values: pl.Series) -> np.ndarray:
    array = values.drop_nulls().cast(pl.Float64).to_numpy()
    return array[np.isfinite(array)]


def _psi(base: np.ndarray, win: np.ndarray, bins: int) -> float:
    """Population stability index over ``bins`` baseline-quantile bins (ties merge bins)."""
    edges = np.unique(np.quantile(base, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    base_share = np.bincount(np.searchsorted(edges, base, side="right"), minlength=len(edges) + 1) / len(base)
    win_share = np.bincount(np.searchsorted(edges, win, side="right"), minlength=len(edges) + 1) / len(win)
    base_share, win_share = np.maximum(base_share, _EPS), np.maximum(win_share, _EPS)
    return float(np.sum((win_share - base_share) * np.log(win_share / base_share)))


def _ks(
    name: str, side: Side, base: pl.Series, win: pl.Series, rules: DriftRules, *, what: str, median: bool = False
) -> Signal:
    """Two-sample KS on one per-image value; the summaries are means (medians when ``median``)."""
    a, b = _finite(base), _finite(win)
    if len(a) == 0 or len(b) == 0:
        where = "baseline" if len(a) == 0 else "window"
        return Signal(name=name, side=side, test="ks", available=False, note=f"not available: no {what} in the {where}")
    result = stats.ks_2samp(a, b)
    summary = np.median if median else np.mean
    return Signal(
        name=name,
        side=side,
        test="ks",
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        effect=float(result.statistic),
        psi=_psi(a, b, rules.psi_bins),
        baseline=float(summary(a)),
        window=float(summary(b)),
    )


def _share(name: str, base: pl.Series, win: pl.Series, *, what: str) -> Signal:
    """Fisher's exact test on two shares of images; statistic = window − baseline share, effect = its size."""
    n_a, n_b = base.len(), win.len()
    if n_a == 0 or n_b == 0:
        where = "baseline" if n_a == 0 else "window"
        return Signal(
            name=name, side="output", test="fisher", available=False, note=f"not available: no {what} in the {where}"
        )
    k_a, k_b = int(base.sum()), int(win.sum())
    p = float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)
    diff = k_b / n_b - k_a / n_a
    return Signal(
        name=name,
        side="output",
        test="fisher",
        statistic=diff,
        p_value=min(p, 1.0),
        effect=abs(diff),
        baseline=k_a / n_a,
        window=k_b / n_b,
    )


def _class_mix(base_boxes: pl.DataFrame, win_boxes: pl.DataFrame) -> Signal:
    """Chi-square on the class counts of boxes, divided by the estimated design effect; effect = Cramér's V."""
    if base_boxes.is_empty() or win_boxes.is_empty():
        where = "baseline" if base_boxes.is_empty() else "window"
        note = f"not available: no boxes in the {where}"
        return Signal(name="class_mix", side="output", test="chi2", available=False, note=note)
    classes = np.union1d(base_boxes["class_id"].unique().to_numpy(), win_boxes["class_id"].unique().to_numpy())
    per_image = [_class_counts(boxes, classes) for boxes in (base_boxes, win_boxes)]
    counts = np.stack([y.sum(axis=0) for y in per_image])
    shares = counts / counts.sum(axis=1, keepdims=True)
    moved = int(np.argmax(np.abs(shares[1] - shares[0])))
    note = (
        f"class {classes[moved]}: {shares[0, moved]:.0%} of boxes in the baseline, {shares[1, moved]:.0%} in the window"
    )
    base_share, win_share = float(shares[0, moved]), float(shares[1, moved])
    if len(classes) < 2:
        note = "one class only in both: " + note
        return Signal("class_mix", "output", "chi2", 0.0, 1.0, 0.0, baseline=base_share, window=win_share, note=note)
    chi2 = float(stats.chi2_contingency(counts, correction=False).statistic)
    total = float(counts.sum())
    deffs = [_design_effect(y) for y in per_image]
    deff = max(1.0, float(np.average(deffs, weights=counts.sum(axis=1))))
    return Signal(
        "class_mix",
        "output",
        "chi2",
        statistic=chi2 / deff,
        p_value=float(stats.chi2.sf(chi2 / deff, len(classes) - 1)),
        effect=math.sqrt(chi2 / total),
        baseline=base_share,
        window=win_share,
        note=f"{note}; chi-square divided by the design effect {deff:.2f} (boxes clustered in images)",
    )


def _class_counts(boxes: pl.DataFrame, classes: np.ndarray) -> np.ndarray:
    """``(images, classes)`` box counts; an image's boxes are adjacent in ``Frames.boxes`` (one run each)."""
    image = boxes.select(pl.struct(_IMAGE_KEYS).rle_id()).to_series().to_numpy()
    column = np.searchsorted(classes, boxes["class_id"].to_numpy())
    flat = np.bincount(image * len(classes) + column, minlength=(int(image[-1]) + 1) * len(classes))
    return flat.reshape(-1, len(classes)).astype(np.float64)


def _design_effect(y: np.ndarray) -> float:
    """Rao-Scott first-order design effect of class shares estimated from image clusters (``y``: images x classes).

    Per class, the variance of its share across images (ratio estimator) over the variance if boxes were
    independent; averaged with weights ``1 - share`` over ``classes - 1`` (the mean generalised design effect).
    1 when there are too few images to estimate it.
    """
    images, n_classes = y.shape
    m = y.sum(axis=1)
    total = m.sum()
    if images < 2 or total <= images or n_classes < 2:
        return 1.0
    share = y.sum(axis=0) / total
    residual = y - m[:, None] * share[None, :]
    clustered = images / (images - 1) * (residual**2).sum(axis=0) / total**2
    independent = share * (1 - share) / total
    inside = independent > 0  # classes this side has (and not only)
    if inside.sum() < 2:
        return 1.0
    ratio = clustered[inside] / independent[inside]
    return float(np.sum((1 - share[inside]) * ratio) / (inside.sum() - 1))


def _decide(signals: list[Signal], rules: DriftRules, *, judge: bool) -> list[Signal]:
    """Bonferroni over the available signals; a signal drifts when p < alpha / m and effect >= min_effect."""
    available = [s for s in signals if s.available]
    corrected = rules.alpha / max(len(available), 1)
    return [
        replace(
            s,
            drifted=judge
            and s.available
            and s.p_value is not None
            and s.effect is not None
            and s.p_value < corrected
            and s.effect >= rules.min_effect,
        )
        for s in signals
    ]


def _latency(images: pl.DataFrame) -> dict[str, float | None]:
    values = _finite(images["latency_ms"])
    if len(values) == 0:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _errors(images: pl.DataFrame) -> dict[str, int]:
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for kind, n in images["error"].drop_nulls().value_counts().iter_rows():
        counts[str(kind)] = int(n)
    return counts


def _advice(signals: Sequence[Signal], rules: DriftRules) -> list[str]:
    """What labeling cannot fix: objects shrinking below what the model's input resolves."""
    box = next((s for s in signals if s.name == "box_size"), None)
    if box is None or not box.drifted or box.window is None or box.baseline is None:
        return []
    if box.window < rules.small_object_px and box.window < box.baseline:
        return [
            f"objects now {box.window:.0f} px at the model's input (baseline {box.baseline:.0f} px); labeling "
            "cannot fix this: consider a larger base.imgsz"
        ]
    return []


def agreement(champion: Frames, shadow: Frames, *, iou: float) -> Agreement | None:
    """The shadow's predictions vs the champion's on the images both predicted (same batch and image id).

    Boxes are matched per image, greedily by descending IoU (class-agnostic, each box at most once), at IoU >=
    ``iou``. Error rows on either side leave their image out.

    Returns:
        The :class:`Agreement` (``matched_box_rate`` over the champion's boxes, ``class_agreement`` over matched
        pairs, ``count_difference`` mean |n_shadow − n_champion| per image, ``latency_ratio`` shadow / champion
        median ms), or ``None`` when no image was predicted by both.
    """
    on = ["batch", "image_id"]
    champ_images = _judged(champion.images).select(*on, "n_detections", "latency_ms")
    shadow_images = _judged(shadow.images).select(*on, "n_detections", "latency_ms", "model_version")
    both = champ_images.join(shadow_images, on=on, how="inner", suffix="_s")
    if both.is_empty():
        return None
    version = ",".join(sorted(str(v) for v in both["model_version"].unique().to_list()))
    pairs_on = both.select(on)
    champ_boxes = _judged_boxes(champion.boxes).join(pairs_on, on=on, how="semi").with_row_index("c")
    shadow_boxes = _judged_boxes(shadow.boxes).join(pairs_on, on=on, how="semi").with_row_index("s")
    matched, same_class = _greedy_matches(champ_boxes, shadow_boxes, iou)
    champ_ms, shadow_ms = _median(both["latency_ms"]), _median(both["latency_ms_s"])
    counts = (both["n_detections"].cast(pl.Float64) - both["n_detections_s"].cast(pl.Float64)).to_numpy()
    return Agreement(
        shadow_version=version,
        images=both.height,
        matched_box_rate=matched / champ_boxes.height if champ_boxes.height else None,
        class_agreement=same_class / matched if matched else None,
        count_difference=float(np.mean(np.abs(counts))),
        latency_ratio=shadow_ms / champ_ms if champ_ms and shadow_ms is not None else None,
    )


def _median(values: pl.Series) -> float | None:
    finite = _finite(values)
    return float(np.median(finite)) if len(finite) else None


def _greedy_matches(champ: pl.DataFrame, shadow: pl.DataFrame, threshold: float) -> tuple[int, int]:
    """(matched pairs, of which same class): per image, greedy by descending IoU, each box used once."""
    if champ.is_empty() or shadow.is_empty():
        return 0, 0
    cols = ["batch", "image_id"]
    pairs = champ.select(*cols, "c", "class_id", "x1", "y1", "x2", "y2").join(
        shadow.select(*cols, "s", "class_id", "x1", "y1", "x2", "y2"), on=cols, suffix="_s"
    )
    iw = (pl.min_horizontal("x2", "x2_s") - pl.max_horizontal("x1", "x1_s")).clip(lower_bound=0)
    ih = (pl.min_horizontal("y2", "y2_s") - pl.max_horizontal("y1", "y1_s")).clip(lower_bound=0)
    inter = iw * ih
    area = (pl.col("x2") - pl.col("x1")) * (pl.col("y2") - pl.col("y1"))
    area_s = (pl.col("x2_s") - pl.col("x1_s")) * (pl.col("y2_s") - pl.col("y1_s"))
    union = area + area_s - inter
    pairs = (
        pairs.with_columns(pl.when(union > 0).then(inter / union).otherwise(0.0).alias("iou"))
        .filter(pl.col("iou") >= threshold)
        .sort(["iou", "c", "s"], descending=[True, False, False])
    )
    used_c: set[int] = set()
    used_s: set[int] = set()
    matched = same = 0
    for c, s, cls, cls_s in pairs.select("c", "s", "class_id", "class_id_s").iter_rows():
        if c in used_c or s in used_s:
            continue
        used_c.add(c)
        used_s.add(s)
        matched += 1
        same += int(cls == cls_s)
    return matched, same
