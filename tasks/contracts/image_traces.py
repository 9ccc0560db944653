"""Traces of one image in a file's bytes, and the same bytes with them taken out (the forget stage's scanner).

An image leaves three kinds of trace: its own bytes (a copy, a tar member), its content hash (``image_sha256``
columns, JSON fields) and its ids (file stems, ``image_id`` columns, URIs ``.../<id>.png``). :func:`contains` finds
any of them in a blob: raw bytes, and inside Parquet files (compressed: the raw bytes hide the strings) the decoded
string values. :func:`scrub` returns the blob without them, by kind: Parquet files lose the rows that mention the
image (schema and metadata kept), JSON loses the list items and keys that mention it, text loses the lines;
anything else that still holds a trace (an image, an archive, a cache) is :data:`DELETE`.

Used on files the contracts do not own (reports, MLflow artifacts, DVC objects, caches); the files a contract owns
(the prediction log, the ledger, the merged shards) are edited by their owners.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PARQUET_MAGIC = b"PAR1"
DELETE: Final = None
"""What :func:`scrub` returns for a blob that must go whole."""

_TEXT_SUFFIXES = (".txt", ".csv", ".md", ".yaml", ".yml", ".html", ".prom", ".log", ".tsv")


@dataclass(frozen=True)
class ImageKey:
    """What identifies one image everywhere.

    Attributes:
        sha256: lowercase hex SHA-256 of the image bytes.
        ids: the image's ids (file stems) in every store that named it.
        data: the image bytes, when a copy was found (None: only the hash and ids are searched).
    """

    sha256: str
    ids: frozenset[str]
    data: bytes | None = None

    def token_pattern(self) -> re.Pattern[str]:
        """A regex matching the hash or an id as a whole token (``2026-11-02_3`` does not match ``..._31``)."""
        names = sorted({self.sha256, *self.ids}, key=len, reverse=True)
        alternatives = "|".join(re.escape(n) for n in names)
        return re.compile(rf"(?<![A-Za-z0-9_-])(?:{alternatives})(?![A-Za-z0-9])")

    def arrow_pattern(self) -> str:
        """:meth:`token_pattern` for Arrow's RE2 (no look-around: the neighbours are matched instead)."""
        names = sorted({self.sha256, *self.ids}, key=len, reverse=True)
        alternatives = "|".join(re.escape(n) for n in names)
        return rf"(?:^|[^A-Za-z0-9_-])(?:{alternatives})(?:$|[^A-Za-z0-9])"


def mentions(text: str, key: ImageKey) -> bool:
    """Whether ``text`` names the image (its hash or an id, as a whole token)."""
    return bool(key.token_pattern().search(text))


def _raw_hit(blob: bytes, key: ImageKey) -> bool:
    if key.data is not None and key.data in blob:
        return True
    return mentions(blob.decode("latin-1"), key)


def _read_parquet(blob: bytes) -> pa.Table | None:
    if not (blob.startswith(PARQUET_MAGIC) and blob.endswith(PARQUET_MAGIC)):
        return None
    try:
        return pq.read_table(io.BytesIO(blob))
    except (pa.ArrowException, OSError):
        return None


def _row_mask(table: pa.Table, key: ImageKey) -> pa.ChunkedArray | pa.Array:
    """True on the rows whose string columns name the image (hash or id as a token)."""
    pattern = key.arrow_pattern()
    hit: Any = pa.array([False] * table.num_rows)
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            found = pc.fill_null(pc.match_substring_regex(column, pattern), False)
            hit = pc.or_(hit, found)
        elif pa.types.is_binary(column.type) and key.data is not None:
            found = pc.fill_null(pc.equal(column, pa.scalar(key.data, type=column.type)), False)
            hit = pc.or_(hit, found)
    return hit


def contains(blob: bytes, key: ImageKey) -> bool:
    """Whether ``blob`` holds the image's bytes, its hash or an id (Parquet: also its decoded values)."""
    if _raw_hit(blob, key):
        return True
    table = _read_parquet(blob)
    return table is not None and table.num_rows > 0 and bool(pc.any(_row_mask(table, key)).as_py())


def _scrub_json(value: Any, key: ImageKey) -> Any:
    if isinstance(value, dict):
        return {
            k: _scrub_json(v, key)
            for k, v in value.items()
            if not mentions(str(k), key) and not (isinstance(v, str) and mentions(v, key))
        }
    if isinstance(value, list):
        return [_scrub_json(v, key) for v in value if not mentions(json.dumps(v, default=str), key)]
    return value


def scrub(name: str, blob: bytes, key: ImageKey) -> bytes | None:
    """``blob`` without the image's traces: the same object when it has none, :data:`DELETE` when it must go whole.

    Args:
        name: the file's name (its suffix picks the text rule).
        blob: the file's bytes.
        key: the image.
    """
    if not contains(blob, key):
        return blob
    table = _read_parquet(blob)
    if table is not None:
        if key.data is not None and key.data in blob:
            return DELETE
        kept = table.filter(pc.invert(_row_mask(table, key)))
        sink = io.BytesIO()
        pq.write_table(kept, sink, compression="zstd")
        return sink.getvalue()
    if key.data is not None and key.data in blob:
        return DELETE
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return DELETE
    if name.endswith((".json", ".jsonl")):
        scrubbed = _scrub_text_json(name, text, key)
        if scrubbed is not None:
            return scrubbed
    if name.endswith(_TEXT_SUFFIXES) or name.endswith((".json", ".jsonl")):
        lines = text.splitlines(keepends=True)
        return "".join(line for line in lines if not mentions(line, key)).encode()
    return DELETE


def _scrub_text_json(name: str, text: str, key: ImageKey) -> bytes | None:
    try:
        if name.endswith(".jsonl"):
            lines = [line for line in text.splitlines() if line.strip() and not mentions(line, key)]
            return ("\n".join(lines) + ("\n" if lines else "")).encode()
        cleaned = _scrub_json(json.loads(text), key)
    except ValueError:
        return None
    return (json.dumps(cleaned, indent=2) + "\n").encode()


def any_contains(blobs: Iterable[tuple[str, bytes]], key: ImageKey) -> list[str]:
    """The names of the blobs that hold a trace of the image."""
    return [name for name, blob in blobs if contains(blob, key)]
