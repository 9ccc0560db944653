"""``reports/merge.json``: what the merge stage hands on (manifest hash, counts, repeat factors, notes).

The merge stage returns a :class:`MergeResult` and writes a :class:`MergeReport` (the result plus the counts per
source/cycle/split, the recency factors and the shard count) with :func:`tasks.contracts.reports.write_report`;
readers (the registry's lineage, the cycle summary) use ``load_report(reports, "merge")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MergeMode = Literal["merged", "bootstrap", "disabled"]


@dataclass(frozen=True)
class CycleRepeat:
    """The recency weight of one production cycle (``age`` 0 = the newest)."""

    cycle: str
    age: int
    weight: float
    repeat: int


@dataclass(frozen=True)
class SplitCount:
    """Images of one (source, cycle or set, split) in the manifest."""

    source: str
    cycle: str
    split: str
    images: int


@dataclass(frozen=True)
class MergeResult:
    """What the merge hands on: where the manifest is, what it holds, and what changed.

    Attributes:
        mode: ``merged``; ``bootstrap`` (no production image yet: train reads the historical sets);
            ``disabled`` (``merge.enabled: false``).
        cycles: the cycles this run merged.
        manifest: path of ``manifest.parquet``.
        manifest_md5: its MD5 (names every shard by its MD5: the training data's identity), None when absent.
        images: rows in the manifest.
        new_images: rows this run added.
        new_shards: shard files this run wrote (``shards/<name>.tar``).
        train_images, train_samples: ``train`` rows, and their sum of repeats (images per epoch).
        holdout_images, excluded_images: rows in those splits.
        repeats: repeat factor per production cycle.
        notes: what a person should know (duplicates skipped, leaks excluded, nothing new...).
        wall_s: seconds the merge took.
    """

    mode: MergeMode
    cycles: tuple[str, ...]
    manifest: str
    manifest_md5: str | None
    images: int
    new_images: int
    new_shards: tuple[str, ...]
    train_images: int
    train_samples: int
    holdout_images: int
    excluded_images: int
    repeats: dict[str, int]
    notes: tuple[str, ...]
    wall_s: float


@dataclass(frozen=True)
class MergeReport(MergeResult):
    """``reports/merge.json``: the :class:`MergeResult` plus the manifest's breakdown.

    Attributes:
        counts: images per (source, cycle or set, split), sorted.
        recency: the recency factor of every merged production cycle.
        shards: shard files the manifest references.
    """

    counts: tuple[SplitCount, ...] = ()
    recency: tuple[CycleRepeat, ...] = ()
    shards: int = 0
