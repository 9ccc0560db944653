"""tasks.core.phash: the one perceptual-hash representation (packed bits; imagehash's hex on disk)."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from tasks.core import phash


def picture(seed: int, size: int = 64) -> Image.Image:
    grid = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    return Image.fromarray(grid).resize((size, size), Image.NEAREST)


@pytest.mark.parametrize("size", [4, 5, 8, 16], ids=str)
def test_hex_is_imagehash_text_and_round_trips(size: int) -> None:
    image = picture(size)
    packed = phash.phash_image(image, size=size)
    assert packed.shape == (phash.n_bytes(size),) and packed.dtype == np.uint8
    text = phash.to_hex(packed, size=size)
    assert text == str(imagehash.phash(image, hash_size=size))
    assert phash.from_hex([text, text], size=size).tolist() == [packed.tolist()] * 2


def test_file_and_image_agree(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    picture(1).save(path)
    assert phash.phash_file(path).tolist() == phash.phash_image(picture(1)).tolist()
    with pytest.raises(phash.UNREADABLE):
        phash.phash_file(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(phash.UNREADABLE):
        phash.phash_file(tmp_path / "bad.png")


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param(["ff"], [[0, 0, 0, 0, 0, 0, 0, 255]], id="short-is-left-padded"),
        pytest.param(["8000000000000001"], [[128, 0, 0, 0, 0, 0, 0, 1]], id="msb-first"),
    ],
)
def test_from_hex(texts: list[str], expected: list[list[int]]) -> None:
    assert phash.from_hex(texts).tolist() == expected


@pytest.mark.parametrize("bad", ["xyz", "0" * 17, "", "00 00000000000000", None], ids=str)
def test_from_hex_names_the_bad_value(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a hex string"):
        phash.from_hex(["00", bad])  # type: ignore[list-item]


def test_hamming_and_nearest_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 8), dtype=np.uint8)
    b = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    brute = np.array([[int(np.unpackbits(x ^ y).sum()) for y in b] for x in a])
    assert phash.hamming(a, b).tolist() == brute.tolist()
    assert phash.hamming(a[2], b).tolist() == brute[2].tolist()
    distance, index = phash.nearest(a, b, pairs_per_block=4)  # several blocks
    assert distance.tolist() == brute.min(axis=1).tolist() and index.tolist() == brute.argmin(axis=1).tolist()


def test_nearest_without_references() -> None:
    distance, index = phash.nearest(np.zeros((3, 8), np.uint8), np.zeros((0, 8), np.uint8))
    assert distance.tolist() == [-1] * 3 and index.tolist() == [-1] * 3
    assert phash.nearest(np.zeros((0, 8), np.uint8), np.zeros((2, 8), np.uint8))[0].shape == (0,)
