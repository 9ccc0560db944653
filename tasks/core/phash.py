"""Perceptual hashes (pHash): one way to compute, store and compare them.

Representation, everywhere in ``tasks/``: a hash of ``size x size`` bits is a packed ``uint8`` row of
``ceil(size**2 / 8)`` bytes, most significant bit first (``np.packbits`` of ``imagehash.phash(image, size).hash``);
many hashes are an ``(N, B)`` array of such rows. On disk a hash is text: :func:`to_hex` gives exactly
``str(imagehash.phash(image, hash_size=size))`` (16 hex digits for the default 64-bit hash, the ``phash`` column of
the sample manifest and of the label ledger), and :func:`from_hex` reads it back. Distances are Hamming distances in
bits (:func:`hamming`, :func:`nearest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from PIL import Image

HASH_SIZE = 8
"""Side of the default hash: 64 bits, stored as 16 hex digits (the sample manifest and the label ledger)."""

UNREADABLE: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError)
"""What opening or decoding an image may raise (Pillow's ``UnidentifiedImageError`` is an ``OSError``)."""

PackedHashes = npt.NDArray[np.uint8]
"""``(B,)`` one packed hash or ``(N, B)`` packed hashes, ``B = ceil(size**2 / 8)``."""

_PAIRS_PER_BLOCK = 2_000_000  # (new x reference) hash pairs compared at once by nearest(): bounds its memory


def n_bytes(size: int = HASH_SIZE) -> int:
    """Bytes of one packed hash of ``size x size`` bits."""
    return (size * size + 7) // 8


def phash_image(image: Image.Image, *, size: int = HASH_SIZE) -> PackedHashes:
    """The perceptual hash of an open image (``imagehash.phash``), packed.

    Args:
        image: a Pillow image (any mode; it is decoded fully).
        size: hash side; the hash has ``size**2`` bits.

    Returns:
        ``(B,)`` uint8, ``B = ceil(size**2 / 8)``.

    Raises:
        The :data:`UNREADABLE` errors when the image does not decode.
    """
    import imagehash  # scipy/PyWavelets behind it cost ~0.3 s to import; only hashing needs them

    bits = np.asarray(imagehash.phash(image, hash_size=size).hash, dtype=bool)
    return np.packbits(bits.ravel())


def phash_file(path: Path, *, size: int = HASH_SIZE) -> PackedHashes:
    """The perceptual hash of an image file, packed (see :func:`phash_image`).

    Raises:
        The :data:`UNREADABLE` errors when the file is missing or does not decode.
    """
    from PIL import Image

    from tasks.core.pixels import upright

    with Image.open(path) as image:
        return phash_image(upright(image), size=size)  # as shown: EXIF orientation applied (tasks.core.pixels)


def phash_bytes(data: bytes, *, size: int = HASH_SIZE) -> PackedHashes:
    """The perceptual hash of an image file's bytes (read from an object store), packed; equal to
    :func:`phash_file` on a file holding the same bytes.

    Raises:
        The :data:`UNREADABLE` errors when the bytes do not decode.
    """
    import io

    from PIL import Image

    from tasks.core.pixels import upright

    with Image.open(io.BytesIO(data)) as image:
        return phash_image(upright(image), size=size)


def to_hex(packed: PackedHashes, *, size: int = HASH_SIZE) -> str:
    """One packed hash as text, identical to ``str(imagehash.ImageHash(bits))`` (``ceil(size**2 / 4)`` hex digits)."""
    bits = size * size
    value = int.from_bytes(np.asarray(packed, dtype=np.uint8).tobytes(), "big") >> (8 * n_bytes(size) - bits)
    return f"{value:0{(bits + 3) // 4}x}"


def from_hex(texts: Sequence[str], *, size: int = HASH_SIZE) -> PackedHashes:
    """Hashes stored as text (:func:`to_hex`, ``str(imagehash...)``) back to packed rows.

    Args:
        texts: hex strings of at most ``ceil(size**2 / 4)`` digits (shorter ones are left-padded with zeros).
        size: hash side.

    Returns:
        ``(N, B)`` uint8.

    Raises:
        ValueError: a value that is not such a hex string; the message quotes it.
    """
    width, n = (size * size + 3) // 4, n_bytes(size)
    texts = list(texts)
    if not texts:
        return np.zeros((0, n), np.uint8)
    if size * size % 8 == 0:  # whole bytes: one vectorised decode (a ledger may hold many hashes)
        try:
            if any(not 0 < len(t) <= width for t in texts):
                raise ValueError("too long")
            raw = bytes.fromhex("".join(t.zfill(width) for t in texts))
            if len(raw) != n * len(texts):
                raise ValueError("whitespace")
            return np.frombuffer(raw, np.uint8).reshape(len(texts), n).copy()
        except (ValueError, TypeError, AttributeError):
            pass  # find and name the bad value below
    rows = np.zeros((len(texts), n), np.uint8)
    for i, text in enumerate(texts):
        value = _parse_hex(text, width)
        rows[i] = np.frombuffer((value << (8 * n - size * size)).to_bytes(n, "big"), np.uint8)
    return rows


def _parse_hex(text: object, width: int) -> int:
    bad = ValueError(f"phash {text!r} is not a hex string of at most {width} digits (str(imagehash.phash(image)))")
    if not isinstance(text, str) or not 0 < len(text) <= width or text.strip() != text:
        raise bad
    try:
        return int(text, 16)
    except ValueError:
        raise bad from None


def hamming(a: PackedHashes, b: PackedHashes) -> npt.NDArray[np.int64]:
    """Bit distances between packed hashes.

    Args:
        a: ``(B,)`` one hash or ``(N, B)`` hashes.
        b: ``(M, B)`` hashes of the same size.

    Returns:
        ``(M,)`` distances for one hash, ``(N, M)`` for several.
    """
    a, b = np.asarray(a, np.uint8), np.asarray(b, np.uint8)
    if a.ndim == 1:
        return np.bitwise_count(b ^ a[None, :]).sum(axis=1, dtype=np.int64)
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int64)


def nearest(
    a: PackedHashes, b: PackedHashes, *, pairs_per_block: int = _PAIRS_PER_BLOCK
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For each hash of ``a``, the distance to its nearest hash of ``b`` and that hash's index.

    Compares blocks of rows so memory stays bounded however large both sides are.

    Args:
        a: ``(N, B)`` packed hashes.
        b: ``(M, B)`` packed hashes of the same size.
        pairs_per_block: how many (a, b) pairs one block compares.

    Returns:
        ``(N,)`` distances and ``(N,)`` indices into ``b`` (first of equals); both -1 when ``b`` is empty.
    """
    n = a.shape[0]
    if n == 0 or b.shape[0] == 0:
        return np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    step = max(1, pairs_per_block // b.shape[0])
    best = np.empty(n, np.int64)
    arg = np.empty(n, np.int64)
    for start in range(0, n, step):
        block = hamming(a[start : start + step], b)
        arg[start : start + step] = block.argmin(axis=1)
        best[start : start + step] = block.min(axis=1)
    return best, arg
