"""Coarse shards of work for fan-out: whole chunks of items, contiguous, at most a given number of shards.

A stage that can fan out (batch prediction, evaluation) cuts each group of items (a production batch, a labeled
set) into chunks of its inference batch size, exactly as its single-process loop does, and hands the chunks of
all groups, in order, to :func:`plan_shards`. Each shard is a contiguous run of whole chunks, so every model call
sees the same images as in the single-process run (same results), and the number of tasks is bounded by the
``shards`` setting, never by the number of images: a scheduler is never flooded with tiny tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """Items ``[start, stop)`` of group ``group``: one model call's worth."""

    group: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def split_even(n_units: int, parts: int) -> list[range]:
    """Split ``range(n_units)`` into ``min(parts, n_units)`` contiguous ranges whose lengths differ by at most one.

    The longer ranges come first; no range is empty; ``n_units`` 0 gives no range.

    Raises:
        ValueError: ``parts`` < 1 or ``n_units`` < 0.
    """
    if parts < 1 or n_units < 0:
        raise ValueError(f"split_even: need parts >= 1 and n_units >= 0, got parts={parts}, n_units={n_units}")
    count = min(parts, n_units)
    if count == 0:
        return []
    base, extra = divmod(n_units, count)
    ranges, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


def chunk_groups(sizes: Sequence[tuple[str, int]], *, chunk: int) -> list[Chunk]:
    """Every group's items cut into chunks of ``chunk`` (the last one of a group may be shorter), groups in order."""
    if chunk < 1:
        raise ValueError(f"chunk_groups: chunk must be >= 1, got {chunk}")
    return [Chunk(group, start, min(start + chunk, n)) for group, n in sizes for start in range(0, n, chunk)]


def plan_shards(sizes: Sequence[tuple[str, int]], *, chunk: int, shards: int) -> list[tuple[Chunk, ...]]:
    """At most ``shards`` shards of whole chunks over the groups ``sizes`` (``(name, item count)``, in order).

    Returns:
        Shards in order; concatenated, their chunks are :func:`chunk_groups` (every item exactly once, in order).
        ``min(shards, number of chunks)`` shards, whose chunk counts differ by at most one; none is empty.
    """
    chunks = chunk_groups(sizes, chunk=chunk)
    return [tuple(chunks[r.start : r.stop]) for r in split_even(len(chunks), shards)]
