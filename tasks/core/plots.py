"""Figures of the cycle report: numbers in, PNG bytes out (no file I/O, matplotlib's Agg backend).

Each function returns ``None`` when it has nothing to draw, so the report simply leaves the figure out.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def _paired_bars(
    ax: Any, names: list[str], pairs: Mapping[str, Sequence[float | None]], colors: tuple[str, str]
) -> None:
    """Two bars per name (``pairs``: label -> values, two labels), a legend, names as ticks."""
    x = np.arange(len(names))
    for offset, (label, values), color in zip((-0.2, 0.2), pairs.items(), colors, strict=True):
        ax.bar(x + offset, [np.nan if v is None else v for v in values], 0.4, label=label, color=color)
    ax.set_xticks(x, names, rotation=30)
    ax.legend(fontsize=8)


def plot_per_class(sets: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """Grouped bars: per-class AP50-95 of champion and candidate, one panel per gate set.

    Args:
        sets: the gate report's ``sets`` (set name -> ``images`` and ``per_class``: class -> ``champion`` /
            ``candidate`` AP, ``None`` where a model has none).
    """
    if not sets:
        return None
    fig, axes = pyplot().subplots(1, len(sets), figsize=(6 * len(sets), 3.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets.items(), strict=True):
        classes = list(s["per_class"])
        pairs = {who: [s["per_class"][c].get(who) for c in classes] for who in ("champion", "candidate")}
        _paired_bars(ax, classes, pairs, ("#8c8c8c", "#2a7ab9"))
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} ({s['images']} images)")
        ax.set_ylabel("AP50-95")
    return png_bytes(fig)


def plot_confidence(sampled: np.ndarray, rest: np.ndarray, *, label: str, bins: int) -> bytes | None:
    """Density histograms of box confidences in [0, 1]: the sampled images' vs the other images'.

    Args:
        sampled: confidences ``(N,)`` of the boxes on sampled images.
        rest: confidences ``(M,)`` of the boxes on the other images.
        label: x-axis label (which model's logged boxes).
        bins: number of equal bins over [0, 1].
    """
    if len(sampled) == 0 and len(rest) == 0:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 3.4))
    edges = np.linspace(0, 1, bins + 1).tolist()
    ax.hist(rest, bins=edges, alpha=0.6, density=True, label="not sampled")
    ax.hist(sampled, bins=edges, alpha=0.6, density=True, label="sampled")
    ax.set_xlabel(label)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def plot_strategies(by_strategy: Mapping[str, Mapping[str, int]]) -> bytes | None:
    """Bars: candidates and selected images per sampling strategy (strategy -> ``candidates``, ``selected``)."""
    if not by_strategy:
        return None
    names = list(by_strategy)
    fig, ax = pyplot().subplots(figsize=(6, 3.4))
    pairs = {key: [by_strategy[n].get(key, 0) for n in names] for key in ("candidates", "selected")}
    _paired_bars(ax, names, pairs, ("#c9c9c9", "#2a7ab9"))
    ax.set_ylabel("images")
    return png_bytes(fig)


MONITOR_COLUMNS = ("mean_confidence", "n_detections", "median_box_px", "brightness", "contrast", "sharpness")
"""Per-image columns the monitor draws, baseline against the newest window."""


def plot_distributions(
    baseline: Mapping[str, np.ndarray], window: Mapping[str, np.ndarray], *, title: str, bins: int = 30
) -> bytes | None:
    """One panel per column: density histograms of the baseline and the window on shared bins."""
    names = [n for n in baseline if n in window and len(baseline[n]) and len(window[n])]
    if not names:
        return None
    plt = pyplot()
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        both = np.concatenate([baseline[name], window[name]]).astype(float)
        edges = np.histogram_bin_edges(both[np.isfinite(both)], bins=bins)
        ax.hist(baseline[name], bins=edges, density=True, alpha=0.55, label="baseline", color="tab:blue")
        ax.hist(window[name], bins=edges, density=True, alpha=0.55, label="window", color="tab:orange")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def plot_series(
    series: Mapping[str, Sequence[tuple[str, float | None]]], *, threshold: float | None, title: str
) -> bytes | None:
    """One line per signal over windows (x: window keys), with the decision threshold dashed."""
    if not series or not any(v is not None for points in series.values() for _, v in points):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    keys = [k for k, _ in next(iter(series.values()))]
    for name, points in series.items():
        ax.plot(range(len(points)), [np.nan if v is None else v for _, v in points], marker="o", label=name)
    if threshold is not None:
        ax.axhline(threshold, linestyle="--", color="grey", linewidth=1)
    ax.set_xticks(range(len(keys)), keys, rotation=30, fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, ncol=3)
    return png_bytes(fig)
