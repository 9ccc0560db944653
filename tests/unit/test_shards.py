"""Shard planning (tasks/core/shards.py): whole chunks, contiguous, every item once, never one task per image."""

from __future__ import annotations

import pytest

from tasks.core.shards import Chunk, chunk_groups, plan_shards, split_even


@pytest.mark.parametrize(
    ("n_units", "parts", "expected"),
    [
        pytest.param(0, 4, [], id="empty"),
        pytest.param(1, 4, [(0, 1)], id="fewer-units-than-parts"),
        pytest.param(4, 1, [(0, 4)], id="one-part"),
        pytest.param(4, 2, [(0, 2), (2, 4)], id="even"),
        pytest.param(5, 2, [(0, 3), (3, 5)], id="the-longer-first"),
        pytest.param(7, 3, [(0, 3), (3, 5), (5, 7)], id="lengths-differ-by-one"),
        pytest.param(3, 3, [(0, 1), (1, 2), (2, 3)], id="one-each"),
    ],
)
def test_split_even(n_units: int, parts: int, expected: list[tuple[int, int]]) -> None:
    assert [(r.start, r.stop) for r in split_even(n_units, parts)] == expected


@pytest.mark.parametrize(
    ("n_units", "parts"), [pytest.param(3, 0, id="no-parts"), pytest.param(-1, 2, id="negative-units")]
)
def test_split_even_refuses_nonsense(n_units: int, parts: int) -> None:
    with pytest.raises(ValueError, match="split_even"):
        split_even(n_units, parts)


def test_chunk_groups_refuses_a_zero_chunk() -> None:
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunk_groups([("a", 3)], chunk=0)


@pytest.mark.parametrize(
    ("sizes", "chunk", "shards", "expected"),
    [
        pytest.param([], 8, 4, [], id="no-groups"),
        pytest.param([("a", 0)], 8, 4, [], id="an-empty-group"),
        pytest.param([("a", 5)], 8, 4, [[("a", 0, 5)]], id="one-short-chunk"),
        pytest.param([("a", 6)], 2, 2, [[("a", 0, 2), ("a", 2, 4)], [("a", 4, 6)]], id="tiny-world-batch"),
        pytest.param(
            [("a", 6), ("b", 6)],
            2,
            2,
            [[("a", 0, 2), ("a", 2, 4), ("a", 4, 6)], [("b", 0, 2), ("b", 2, 4), ("b", 4, 6)]],
            id="two-batches",
        ),
        pytest.param(
            [("a", 5), ("b", 0), ("c", 3)],
            3,
            2,
            [[("a", 0, 3), ("a", 3, 5)], [("c", 0, 3)]],
            id="across-groups-empty-skipped",
        ),
        pytest.param([("a", 3)], 1, 8, [[("a", 0, 1)], [("a", 1, 2)], [("a", 2, 3)]], id="chunk-1-bounded-by-items"),
    ],
)
def test_plan_shards(sizes, chunk: int, shards: int, expected) -> None:
    planned = plan_shards(sizes, chunk=chunk, shards=shards)
    assert [[(c.group, c.start, c.stop) for c in shard] for shard in planned] == expected


@pytest.mark.parametrize(
    ("sizes", "chunk", "shards"),
    [
        pytest.param([("day", 100_000)], 8, 2, id="100k-images-2-shards"),
        pytest.param([(f"day-{i}", 997) for i in range(30)], 8, 16, id="30-batches-16-shards"),
        pytest.param([("day", 17)], 8, 3, id="remainder"),
        pytest.param([("day", 10_000)], 1, 4, id="batch-size-1"),
    ],
)
def test_shards_are_coarse_and_cover_every_image_once_in_order(sizes, chunk: int, shards: int) -> None:
    planned = plan_shards(sizes, chunk=chunk, shards=shards)
    total = sum(n for _, n in sizes)
    assert len(planned) == min(shards, len(chunk_groups(sizes, chunk=chunk)))  # bounded by shards, not images
    assert len(planned) < total or total <= shards
    flat = [c for shard in planned for c in shard]
    assert flat == chunk_groups(sizes, chunk=chunk)  # whole chunks as the single-process loop cuts them, in order
    assert [(g, i) for c in flat for g, i in zip([c.group] * len(c), range(c.start, c.stop), strict=True)] == [
        (g, i) for g, n in sizes for i in range(n)
    ]
    counts = [len(shard) for shard in planned]
    assert max(counts) - min(counts) <= 1 and all(len(c) <= chunk for c in flat)


def test_a_chunk_knows_its_length() -> None:
    assert len(Chunk("a", 8, 13)) == 5
