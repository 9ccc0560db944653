"""The sample manifest ``<base.paths.samples>/<cycle>/manifest.parquet``: the images chosen for labeling in a cycle.

Owner of the file: its schema (:data:`SCHEMA`), its row type (:class:`SampleRow`), the one writer
(:func:`write_manifest`, the sample stage) and the reader (:func:`read_manifest`, the label stage).

Contract:
    * One row per selected image (:data:`SCHEMA`); ``rank`` 1 was taken first; ``score`` is the attributed
      strategy's score in [0, 1]; ``strategies`` lists every strategy that nominated the image; ``phash`` is the
      image's 64-bit perceptual hash as ``str(imagehash.phash(image))`` (16 hex digits, :mod:`tasks.core.phash`),
      null when the near-duplicate check was off.
    * The file is written atomically and always exists after a sample run (empty when nothing was selected).
    * Readers need only :data:`REQUIRED_COLUMNS` (``phash`` and ``strategies`` are optional), so manifests written by
      older versions and hand-made ones still read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import VisionloopError
from tasks.io import write_bytes_atomic

MANIFEST_FILE = "manifest.parquet"

SCHEMA = pa.schema(
    [
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("phash", pa.string(), nullable=True),
        pa.field("strategies", pa.list_(pa.string()), nullable=False),
    ]
)
"""Arrow schema of the manifest, as the sample stage writes it."""

REQUIRED_COLUMNS = (
    "image_sha256",
    "image_id",
    "image_uri",
    "batch",
    "date",
    "strategy",
    "score",
    "rank",
    "model_name",
    "model_version",
)
"""The columns a reader needs (``phash`` and ``strategies`` may be missing)."""

_NOT_EMPTY = ("image_sha256", "image_id", "image_uri", "batch", "model_name", "model_version")


class SampleManifestError(VisionloopError, ValueError):
    """The manifest is missing or malformed; the message names the file (and the row)."""


@dataclass(frozen=True)
class SampleRow:
    """One row of the sample manifest (see :data:`SCHEMA`; ``strategies`` is not carried)."""

    image_sha256: str
    image_id: str
    image_uri: str
    batch: str
    date: dt.date | None
    strategy: str
    score: float | None
    rank: int | None
    model_name: str
    model_version: str
    phash: str | None = None


def manifest_path(samples: Path, cycle: str) -> Path:
    """``<samples>/<cycle>/manifest.parquet`` (``samples`` is ``base.paths.samples``)."""
    return Path(samples) / cycle / MANIFEST_FILE


def manifest_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Manifest rows (dicts with the :data:`SCHEMA` fields; ``phash`` may be absent) as a :data:`SCHEMA` table."""
    return pa.table({field.name: [row.get(field.name) for row in rows] for field in SCHEMA}, schema=SCHEMA)


def write_manifest(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the manifest atomically (zstd Parquet); an empty ``rows`` writes an empty manifest. Returns ``path``."""
    sink = pa.BufferOutputStream()
    pq.write_table(manifest_table(rows), sink, compression="zstd")
    return write_bytes_atomic(path, sink.getvalue().to_pybytes())


def read_manifest(path: Path) -> list[SampleRow]:
    """Read the manifest in rank order as written; an image listed twice (same SHA-256) is kept once.

    Raises:
        SampleManifestError: missing file (names the stage that writes it), missing columns or an empty key.
    """
    if not path.is_file():
        raise SampleManifestError(f"{path}: sample manifest not found; run the sample stage for this cycle first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise SampleManifestError(f"{path}: sample manifest is not a readable Parquet file ({err})") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise SampleManifestError(f"{path}: manifest lacks column(s) {missing} (has {table.column_names})")
    columns = [*REQUIRED_COLUMNS, *(["phash"] if "phash" in table.column_names else [])]
    rows: list[SampleRow] = []
    seen: set[str] = set()
    for i, rec in enumerate(table.select(columns).to_pylist()):
        empty = next((key for key in _NOT_EMPTY if rec[key] in (None, "")), None)
        if empty is not None:
            raise SampleManifestError(f"{path} row {i}: {empty} is empty")
        if rec["image_sha256"] in seen:
            continue
        seen.add(rec["image_sha256"])
        rows.append(_sample_row(rec))
    return rows


def _sample_row(rec: dict[str, Any]) -> SampleRow:
    date = rec["date"]
    return SampleRow(
        image_sha256=str(rec["image_sha256"]),
        image_id=str(rec["image_id"]),
        image_uri=str(rec["image_uri"]),
        batch=str(rec["batch"]),
        date=dt.date.fromisoformat(date) if isinstance(date, str) else date,
        strategy=str(rec["strategy"] or ""),
        score=None if rec["score"] is None else float(rec["score"]),
        rank=None if rec["rank"] is None else int(rec["rank"]),
        model_name=str(rec["model_name"]),
        model_version=str(rec["model_version"]),
        phash=rec.get("phash") or None,
    )
