"""The detection cache: one model's per-image detections on one labeled set, stored once, reused while nothing changed.

One file per key under ``<base.paths.models>/../.cache/detections/`` (``.cache/detections/`` in the project; ignored
by git and DVC), named ``<key>.npz``; the least recently used files go when the folder outgrows
``evaluate.cache_max_mb`` (:func:`prune`). The key (:func:`cache_key`) is the SHA-256 of everything that decides the
detections: the model artifact's bytes (:func:`model_digest`; an OpenVINO ``.xml`` with its ``.bin``, a folder
with every file below it), the set's images and labels in order (:func:`set_digest`), the inference settings, the
versions of the runtimes and of the code that decodes, and the host's instruction-set flags (INT8 kernels differ
between hosts). A changed golden set, model, threshold or host is a miss, so two models scored from the cache are
still scored on the very same data.

The file holds the detections of every image concatenated (``boxes (M, 4)``, ``confidence (M,)``, ``class_id
(M,)`` as the runtime produced them, dtypes kept), ``counts (n,)`` (detections per image, in image order), the
model's mean ms per image when they were computed, its own key and a SHA-256 of the payload. Reading checks all of
it: a corrupt, truncated or foreign file is a miss with a warning (:func:`read_detections`), never an error and
never a wrong number. Written atomically (:func:`tasks.io.write_bytes_atomic`); two writers of one key write the
same bytes.

Who reads and writes it: :func:`tasks.targets.scoring.detect_set` (the evaluate, export and gate stages); this
module owns the format, the key and the digests only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tasks.contracts.deployed import artifact_files
from tasks.contracts.yolo_labels import LabeledImage
from tasks.io import write_bytes_atomic

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the file layout or what the key covers changes: every old file becomes a miss
SUFFIX = ".npz"
_CHUNK = 1 << 20
_RACY_S = 2.0  # a file younger than this is hashed every time (see file_digest)
_FIELDS = ("counts", "boxes", "confidence", "class_id", "ms_per_image")
_digests: dict[tuple[str, int, int, int], str] = {}  # file -> SHA-256, by (path, inode, size, mtime_ns)


@dataclass(frozen=True)
class CachedDetections:
    """The stored detections of one set, per image in the set's order.

    Attributes:
        boxes: per image ``(N_i, 4)`` corners in pixels of the original image (dtype as stored).
        confidence: per image ``(N_i,)`` scores.
        class_id: per image ``(N_i,)`` class indices.
        ms_per_image: the model's mean ms per image when the detections were computed.
    """

    boxes: list[npt.NDArray[Any]]
    confidence: list[npt.NDArray[Any]]
    class_id: list[npt.NDArray[Any]]
    ms_per_image: float


def cache_folder(models: Path) -> Path:
    """Where the cache lives for a project whose models are in ``models`` (``base.paths.models``)."""
    return Path(models).parent / ".cache" / "detections"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered per process while its inode, size and mtime stay the same.

    A file modified within the last :data:`_RACY_S` seconds is not remembered: a second write in the same
    timestamp tick would leave inode, size and mtime unchanged (git's "racy" files).
    """
    stat = path.stat()
    marker = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if marker in _digests:
        return _digests[marker]
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    if time.time_ns() - stat.st_mtime_ns > _RACY_S * 1e9:
        _digests[marker] = sha.hexdigest()
    return sha.hexdigest()


def model_digest(path: Path) -> str:
    """SHA-256 over a model artifact's files (:func:`~tasks.contracts.deployed.artifact_files`), names included.

    Raises:
        FileNotFoundError: a file of the artifact is missing (an OpenVINO ``.xml`` without its ``.bin``).
    """
    path = Path(path)
    sha = hashlib.sha256()
    for file in artifact_files(path):
        name = file.relative_to(path).as_posix() if path.is_dir() else file.suffix
        sha.update(f"{name}\0{file_digest(file)}\n".encode())
    return sha.hexdigest()


def set_digest(images: Sequence[LabeledImage]) -> str:
    """SHA-256 of a labeled set in order: each image's name and bytes, its size and its labels as read."""
    sha = hashlib.sha256()
    for item in images:
        sha.update(f"{item.image_id}\0{file_digest(item.path)}\0{item.width}x{item.height}\0".encode())
        sha.update(np.ascontiguousarray(item.class_id, dtype=np.int64).tobytes())
        sha.update(np.ascontiguousarray(item.boxes_xywhn, dtype=np.float64).tobytes())
        sha.update(b"\n")
    return sha.hexdigest()


def cache_key(*, model: str, data: str, settings: Mapping[str, Any], environment: Mapping[str, Any]) -> str:
    """The cache key: SHA-256 of the model and set digests, the inference settings and the environment.

    Args:
        model: :func:`model_digest` of the artifact.
        data: :func:`set_digest` of the images in the order they are detected.
        settings: everything passed to the runtime that can change its output (thresholds, size, batch, threads).
        environment: runtime and code versions, the host's instruction-set flags.
    """
    payload = {"format": FORMAT, "model": model, "data": data, "settings": settings, "environment": environment}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def cache_file(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}{SUFFIX}"


def _payload_digest(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    sha = hashlib.sha256()
    for name in _FIELDS:
        array = np.ascontiguousarray(arrays[name])
        sha.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def _concatenate(parts: Sequence[npt.NDArray[Any]], *, shape: tuple[int, ...], dtype: Any) -> npt.NDArray[Any]:
    return np.concatenate(parts) if parts else np.zeros(shape, dtype)


def write_detections(
    folder: Path,
    key: str,
    *,
    boxes: Sequence[npt.NDArray[Any]],
    confidence: Sequence[npt.NDArray[Any]],
    class_id: Sequence[npt.NDArray[Any]],
    ms_per_image: float,
) -> Path:
    """Store one set's detections under ``key`` (atomically); the arrays are per image, in image order."""
    arrays: dict[str, npt.NDArray[Any]] = {
        "counts": np.array([len(c) for c in confidence], np.int64),
        "boxes": _concatenate(boxes, shape=(0, 4), dtype=np.float32).reshape(-1, 4),
        "confidence": _concatenate(confidence, shape=(0,), dtype=np.float32),
        "class_id": _concatenate(class_id, shape=(0,), dtype=np.int64),
        "ms_per_image": np.array(float(ms_per_image), np.float64),
    }
    buffer = io.BytesIO()
    stored = arrays | {"key": np.array(key), "digest": np.array(_payload_digest(arrays))}
    np.savez(buffer, allow_pickle=False, **stored)
    return write_bytes_atomic(cache_file(folder, key), buffer.getvalue())


def prune(folder: Path, *, max_bytes: int, keep: str = "") -> list[Path]:
    """Delete the least recently used cache files until the folder holds at most ``max_bytes`` (never ``keep``'s).

    A hit touches its file (:func:`read_detections`), so the mtime order is the use order. Returns what was
    deleted; a file another process deleted first is skipped.
    """
    entries = []
    for path in Path(folder).glob(f"*{SUFFIX}"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        entries.append((stat.st_mtime_ns, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path.name == f"{keep}{SUFFIX}":
            continue
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    if removed:
        log.info(
            "detection cache %s: %d least recently used files deleted (over %d bytes)", folder, len(removed), max_bytes
        )
    return removed


def read_detections(folder: Path, key: str, *, images: int) -> CachedDetections | None:
    """The detections stored under ``key`` for a set of ``images`` images, or ``None`` (a miss).

    A file that is missing is a quiet miss; one that cannot be read back exactly as written (truncated, corrupt,
    another key's, another image count) is a miss with a warning naming the file; the next write replaces it.
    """
    path = cache_file(folder, key)
    if not path.is_file():
        return None
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in (*_FIELDS, "key", "digest")}
        problem = _problem(arrays, key=key, images=images)
    except Exception as exc:  # np.load raises many types on a damaged zip: every one is a miss
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    if problem:
        log.warning("detection cache %s: %s; treated as a miss (it is rewritten)", path, problem)
        return None
    with contextlib.suppress(OSError):  # the use order prune() deletes by; a read-only cache still reads
        os.utime(path)
    cuts = np.cumsum(arrays["counts"])[:-1]
    return CachedDetections(
        boxes=np.split(arrays["boxes"], cuts),
        confidence=np.split(arrays["confidence"], cuts),
        class_id=np.split(arrays["class_id"], cuts),
        ms_per_image=float(arrays["ms_per_image"]),
    )


def _problem(arrays: Mapping[str, npt.NDArray[Any]], *, key: str, images: int) -> str | None:
    counts = arrays["counts"]
    if str(arrays["key"]) != key:
        return f"holds key {str(arrays['key'])[:12]}..., not {key[:12]}..."
    if str(arrays["digest"]) != _payload_digest(arrays):
        return "payload digest mismatch (corrupt)"
    total = int(counts.sum()) if len(counts) else 0
    if len(counts) != images or (counts < 0).any():
        return f"{len(counts)} images stored, {images} expected"
    if arrays["boxes"].shape != (total, 4) or len(arrays["confidence"]) != total or len(arrays["class_id"]) != total:
        return f"array lengths disagree with {total} detections"
    return None


def environment_flags() -> str:
    """The host's CPU instruction-set flags (``/proc/cpuinfo``'s ``flags`` or ``Features``), sorted; else ``""``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in {"flags", "Features"}:
            return " ".join(sorted(set(value.split())))
    return ""


def source_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over source files: each ``.py`` file given, and every ``*.py`` below each folder given."""
    sha = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            sha.update(f"{file.relative_to(path.parent).as_posix()}\0{file_digest(file)}\n".encode())
    return sha.hexdigest()
