"""File hashes: the one streamed implementation every stage uses.

``file_sha256`` is the identity of an image or label file (the prediction log's ``image_sha256``, the merged
manifest's ``sha256``/``label_sha256``); ``file_md5`` is what DVC records per file (the merged shards and manifest).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def _file_digest(path: Path, algorithm: str, chunk_bytes: int) -> str:
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path, *, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """Return the lowercase hex SHA-256 of a file's bytes (64 characters).

    Args:
        path: file to hash.
        chunk_bytes: read size; the file is streamed, never loaded whole.
    """
    return _file_digest(path, "sha256", chunk_bytes)


def file_md5(path: Path, *, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """Return the lowercase hex MD5 of a file's bytes (32 characters; what DVC records per file)."""
    return _file_digest(path, "md5", chunk_bytes)
