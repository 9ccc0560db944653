"""The frozen test images a training image must not copy: the golden set and the production holdouts.

Owner of two things every leak check needs: *where* the frozen images are (:func:`frozen_image_folders`: the golden
images plus every other cycle's holdout under ``base.paths.holdouts``, which merge writes and never rewrites) and
their hash index (:class:`FrozenImageIndex`: SHA-256 for byte copies, the perceptual hash of
:mod:`tasks.core.phash` for near-duplicates) with the nearest-neighbour search over it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from tasks.config import Params, VisionloopError
from tasks.contracts.yolo_labels import list_images
from tasks.core import phash
from tasks.core.hashing import file_sha256
from tasks.core.pixels import upright

log = logging.getLogger(__name__)


class FrozenImagesMissing(VisionloopError, FileNotFoundError):
    """The golden images are missing, so leakage cannot be checked."""


@dataclass(frozen=True)
class FrozenImageIndex:
    """Hashes of the frozen test images (golden + holdouts) that new training images must not duplicate.

    Attributes:
        names: test image paths as strings, ``(M,)``.
        sha256: lowercase hex SHA-256 of each file's bytes -> its path.
        phash_bits: ``(M, B)`` uint8 packed perceptual hashes (:mod:`tasks.core.phash`; undecodable images are
            left out).
        phash_names: the path of each ``phash_bits`` row.
    """

    names: list[str]
    sha256: dict[str, str]
    phash_bits: npt.NDArray[np.uint8]
    phash_names: list[str] = field(default_factory=list)


def frozen_image_folders(params: Params, *, cycle: str) -> list[Path]:
    """Golden images plus the holdout images of every *other* cycle: the test sets a training image must not copy.

    The cycle's own holdout (``<holdouts>/<cycle>``) is left out: merge carves it from this very cycle's validated
    labels, so after a merge each of its images is a byte copy of its source, and re-validating the cycle would
    otherwise quarantine them all.

    Raises:
        FrozenImagesMissing: no golden image folder (leakage could not be checked).
    """
    golden = params.base.paths.golden / "images"
    if not golden.is_dir():
        raise FrozenImagesMissing(
            f"{golden}: golden test images not found (base.paths.golden); leakage cannot be checked without them. "
            "Run `python -m tasks.world` or point base.paths.golden at your test set"
        )
    holdouts = params.base.paths.holdouts
    found = (
        sorted(p / "images" for p in holdouts.iterdir() if p.name != cycle and (p / "images").is_dir())
        if holdouts.is_dir()
        else []
    )
    return [golden, *found]


def decode_image(path: Path, *, phash_size: int) -> tuple[tuple[int, int] | None, npt.NDArray[np.uint8] | None, str]:
    """Fully decode an image (truncated files fail) and compute its perceptual hash.

    Args:
        path: image file.
        phash_size: hash side (the hash has ``phash_size**2`` bits).

    Returns:
        ``((width, height), packed hash (B,) uint8, "")`` or ``(None, None, error message)``.
    """
    try:
        with Image.open(path) as img:
            img.load()
            shown = upright(img)  # as training, Label Studio and the predict stage see it
            return shown.size, phash.phash_image(shown, size=phash_size), ""
    except phash.UNREADABLE as exc:
        return None, None, f"{type(exc).__name__}: {exc}"


def index_test_images(folders: Sequence[Path], *, phash_size: int) -> FrozenImageIndex:
    """Hash every image of the frozen test sets.

    Args:
        folders: image folders (those that do not exist are skipped).
        phash_size: perceptual hash size, as for the new images.

    Returns:
        The :class:`FrozenImageIndex`; an undecodable test image is kept by SHA-256 only (with a warning).
    """
    names: list[str] = []
    sha: dict[str, str] = {}
    bits: list[npt.NDArray[np.uint8]] = []
    phash_names: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in list_images(folder):
            names.append(str(path))
            sha.setdefault(file_sha256(path), str(path))
            _, packed, error = decode_image(path, phash_size=phash_size)
            if packed is None:
                log.warning("test image %s is unreadable (%s): compared by SHA-256 only", path, error)
                continue
            bits.append(packed)
            phash_names.append(str(path))
    stacked = np.stack(bits) if bits else np.zeros((0, phash.n_bytes(phash_size)), dtype=np.uint8)
    return FrozenImageIndex(names=names, sha256=sha, phash_bits=stacked, phash_names=phash_names)


def nearest_test_images(
    bits: npt.NDArray[np.uint8], index: FrozenImageIndex
) -> tuple[npt.NDArray[np.int64], list[str | None]]:
    """Hamming distance from each new image's hash to its nearest test image.

    Args:
        bits: ``(N, B)`` uint8 packed hashes of the new images (same size as the index's).
        index: the test images.

    Returns:
        ``(N,)`` distances (-1 where there is no test image) and the nearest test image per row (None likewise).
    """
    distance, arg = phash.nearest(bits, index.phash_bits)
    return distance, [index.phash_names[i] if i >= 0 else None for i in arg]
