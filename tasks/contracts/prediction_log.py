"""Production prediction log: one Parquet dataset of detector outputs, partitioned by batch date.

Batch prediction hands this module per-image results (:class:`ImageDetections`); :func:`rows_to_table` turns them
into an Arrow table with :data:`SCHEMA` and :func:`append` writes it atomically; the sampling stage reads the log back
with :func:`read`, :func:`open_dataset`, DuckDB or Polars.

Contract:
    * One row per detected box, plus exactly one row for each image with zero detections (box, class and confidence
      columns null there, ``n_detections`` 0), so every logged image appears at least once.
    * Layout: ``<root>/date=YYYY-MM-DD/<part>.parquet`` (hive style). ``date`` is stored inside each file *and* named
      by its folder, so a single file is self-describing; :func:`read` checks that the two agree.
    * Writes are atomic per file: a temp file ``.<part>.parquet.<random>.tmp`` in the same folder is written, fsynced
      and renamed over the target. Readers never see it (leading ``.``, and it does not end in ``.parquet``), so a
      crash leaves at most an ignored temp file (the suffix matters: DuckDB and Polars globs do read hidden
      ``*.parquet`` files, so :func:`read` rejects any ``.``/``_``-prefixed ``*.parquet``). Appending the
      same ``part`` again for a date replaces that file (idempotent re-runs, no duplicate rows);
      replacement is per (date, part), other dates are left alone.
    * Side effects: :func:`append` creates folders and files under ``root``; every reader is read-only.

Reading the log elsewhere (all return ``date`` as a proper date column; a log that still holds files written before
version 3 needs DuckDB's ``union_by_name=true`` / Polars' ``missing_columns="insert", extra_columns="ignore"``,
which read their newer columns as null):
    * DuckDB: ``duckdb.sql("select * from read_parquet('<root>/**/*.parquet', hive_partitioning=true)")``.
    * Polars: ``pl.scan_parquet("<root>/**/*.parquet", hive_partitioning=True)`` (use the glob: a directory read also
      lists leftover temp files and refuses the mixed extensions).
    * PyArrow: :func:`open_dataset`, i.e. ``ds.dataset(root, format="parquet", partitioning="hive", schema=SCHEMA)``.
      Without ``schema=`` PyArrow infers the folder value as a string and fails to merge it with the stored date32.

Schema: :data:`SCHEMA` and its field table live in :mod:`tasks.contracts.prediction_schema` (re-exported here with
:func:`upgrade`, :data:`V2_COLUMNS`, :data:`ERROR_KINDS`, ...). Every reader accepts files written before version 3
and returns version-3 rows (:func:`upgrade`); :func:`open_dataset` is lazy and cannot fill defaults: on such a file
its newer columns read as null (``upgrade`` the table it gives).

Shadow parts: rows a version logs in shadow beside the champion (``shadow`` true, part ``...__shadow``) are in the
log like any other, but :func:`logged_batches` ignores them, so a version that shadowed a batch still predicts it in
full once it is the champion.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.contracts.prediction_schema import (
    DEFAULT_SOURCE,
    ERROR_KINDS,
    SCHEMA,
    STAT_COLUMNS,
    PredictionLogError,
    format_problems,
    is_v1,
    null_problems,
    schema_problems,
    upgrade,
)
from tasks.contracts.prediction_schema import EMPTY_SHA256 as EMPTY_SHA256  # re-exported: readers import it here
from tasks.contracts.prediction_schema import V1_SCHEMA as V1_SCHEMA
from tasks.contracts.prediction_schema import V2_COLUMNS as V2_COLUMNS
from tasks.core.hashing import file_sha256
from tasks.core.image_stats import ImageStats
from tasks.io import atomic_open

logger = logging.getLogger(__name__)

PARTITION_KEY = "date"
PART_SUFFIX = ".parquet"
TEMP_SUFFIX = ".tmp"
# Rows per Parquet row group. Small enough that a group's string dictionaries (image ids, URIs, hashes) stay within
# the writer's dictionary page limit, so they stay dictionary-encoded, and readers decode groups in parallel; large
# enough that footers stay small. Measured by benchmarks/sample.py: the manifest lookup of image ids and URIs went from
# 0.46 s to about 0.1 s on a 10 M row log.
ROW_GROUP_ROWS = 65_536

_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=-]+")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_PART_CHARS = 200
_INT16_MAX = np.iinfo(np.int16).max


class LoggedBatch(NamedTuple):
    """A (batch, model) combination already present in the log."""

    batch: str
    model_name: str
    model_version: str


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """Detector output for one image (or why there is none), as batch prediction produces it.

    Attributes:
        image_id: identifier of the image, unique within the batch.
        image_uri: file URI or path of the image.
        image_sha256: lowercase hex SHA-256 of the image file bytes (see :func:`sha256_file`); on an error record,
            of the bytes that could be read (:data:`EMPTY_SHA256` when none).
        width: original image width in pixels (> 0; >= 0 on an error record, 0 = not decoded).
        height: original image height in pixels (as ``width``).
        latency_ms: model latency for this image in milliseconds (>= 0).
        boxes_xyxy: (N, 4) float boxes, ``x1, y1, x2, y2`` in pixels of the original image; N may be 0.
        confidence: (N,) float scores in [0, 1].
        class_id: (N,) integer class indices into ``class_names``.
        source: camera / line / site of the image (:data:`DEFAULT_SOURCE` when unknown).
        error: None, or one of :data:`ERROR_KINDS`; then N must be 0 and ``stats`` None.
        stats: the image's input statistics (:func:`tasks.core.image_stats.image_stats`), None when not computed.
        margin: (N,) top-1 minus top-2 class score per box (NaN = unknown), or None (all unknown); column ``margin``.
        evidence_max: highest score of the image's sub-threshold boxes in [0, 1], None when none (or not measured).
        evidence_count: how many sub-threshold boxes (0 when none; then ``evidence_max`` is None, and back).
    """

    image_id: str
    image_uri: str
    image_sha256: str
    width: int
    height: int
    latency_ms: float
    boxes_xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    source: str = DEFAULT_SOURCE
    error: str | None = None
    stats: ImageStats | None = None
    margin: np.ndarray | None = None
    evidence_max: float | None = None
    evidence_count: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not _SHA256.match(self.image_sha256):
            problems.append(f"image_sha256 {self.image_sha256!r} is not 64 lowercase hex characters")
        smallest = 0 if self.error is not None else 1
        if self.width < smallest or self.height < smallest:
            problems.append(f"image size {self.width}x{self.height} must be positive")
        if not self.latency_ms >= 0:
            problems.append(f"latency_ms {self.latency_ms} must be >= 0")
        if not isinstance(self.source, str) or not self.source:
            problems.append(f"source {self.source!r} must be a non-empty string")
        if self.error is not None and self.error not in ERROR_KINDS:
            problems.append(f"error {self.error!r} is not one of {list(ERROR_KINDS)}")
        boxes_shape = np.shape(self.boxes_xyxy)
        if len(boxes_shape) != 2 or boxes_shape[1] != 4:
            problems.append(f"boxes_xyxy has shape {boxes_shape}, expected (N, 4)")
        else:
            n = boxes_shape[0]
            for name in ("confidence", "class_id", "margin")[: 2 if self.margin is None else 3]:
                shape = np.shape(getattr(self, name))
                if shape != (n,):
                    problems.append(f"{name} has shape {shape}, expected ({n},) to match boxes_xyxy")
            if n > _INT16_MAX:
                problems.append(f"{n} boxes exceed the int16 n_detections limit {_INT16_MAX}")
            if self.error is not None and (n or self.stats is not None or self.evidence_count):
                problems.append(f"an error record ({self.error}) carries no boxes and no stats (nor evidence)")
        if not 0 <= self.evidence_count <= _INT16_MAX or (self.evidence_count > 0) != (self.evidence_max is not None):
            problems.append(f"evidence_count {self.evidence_count} must be in [0, {_INT16_MAX}], > 0 with evidence_max")
        elif self.evidence_max is not None and not 0 <= self.evidence_max <= 1:
            problems.append(f"evidence_max {self.evidence_max} must be in [0, 1]")
        if problems:
            raise PredictionLogError(f"image {self.image_id!r}: " + "; ".join(problems))

    @classmethod
    def failed(
        cls,
        *,
        image_id: str,
        image_uri: str,
        image_sha256: str,
        error: str,
        source: str = DEFAULT_SOURCE,
        width: int = 0,
        height: int = 0,
        latency_ms: float = 0.0,
    ) -> ImageDetections:
        """The record of an image that has no prediction: ``error`` set, no boxes, no stats (size 0 = unknown)."""
        return cls(
            image_id=image_id,
            image_uri=image_uri,
            image_sha256=image_sha256,
            width=width,
            height=height,
            latency_ms=latency_ms,
            boxes_xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros(0, np.float32),
            class_id=np.zeros(0, np.int64),
            source=source,
            error=error,
        )

    @property
    def n_detections(self) -> int:
        """Number of boxes N."""
        return int(np.shape(self.boxes_xyxy)[0])


sha256_file = file_sha256
"""The ``image_sha256`` column: hex SHA-256 of the image file's bytes (:func:`tasks.core.hashing.file_sha256`)."""


def image_file(uri: str) -> Path:
    """The local path of an ``image_uri`` value: a ``file://`` URI or a plain path (any other text is kept as is)."""
    parsed = urllib.parse.urlparse(uri)
    return Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(uri)


def empty_table() -> pa.Table:
    """Return a table with :data:`SCHEMA` and no rows."""
    return SCHEMA.empty_table()


# long: one vectorised pass over every box; the small column builders inside share its row layout (a third of
# the length is the docstring of the log's one writer)
def rows_to_table(
    records: Sequence[ImageDetections],
    *,
    batch: str,
    date: dt.date,
    model_name: str,
    model_version: str,
    model_alias: str | None,
    class_names: Sequence[str],
    ts: dt.datetime | None = None,
    shadow: bool = False,
) -> pa.Table:
    """Build a prediction log table from per-image detector results.

    Columns are built with numpy over all boxes at once (the only Python loop is over images). Inputs are not
    modified.

    Args:
        records: one entry per image; images with zero boxes (and error records) become one row with null box
            columns.
        batch: production batch name.
        date: the batch's date (a ``datetime.date``, not a ``datetime``); the partition key.
        model_name: registered model name.
        model_version: registered model version.
        model_alias: alias the model was resolved through, or None.
        class_names: class names indexed by class id (``base.classes``).
        ts: timezone-aware time of the prediction; defaults to now (UTC). Stored in UTC.
        shadow: the rows of a version run in shadow beside the champion (column ``shadow``).

    Returns:
        A table with :data:`SCHEMA` and ``sum(max(N_i, 1))`` rows, in record order then box order. Pixel boxes are
        stored as given; normalised boxes are ``xyxy / (width, height, width, height)`` clipped to [0, 1].

    Raises:
        PredictionLogError: a naive ``ts``, a ``datetime`` as ``date``, or a class id outside ``class_names``
            (the message names the image).
    """
    if isinstance(date, dt.datetime) or not isinstance(date, dt.date):
        raise PredictionLogError(f"date must be a datetime.date, got {date!r}")
    if ts is None:
        ts = dt.datetime.now(dt.UTC)
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise PredictionLogError(f"ts must be timezone-aware, got naive {ts.isoformat()}")
    ts = ts.astimezone(dt.UTC)

    counts = np.array([r.n_detections for r in records], dtype=np.int64)
    rows_per_image = np.maximum(counts, 1)
    n_rows = int(rows_per_image.sum())
    image_of_row = np.repeat(np.arange(len(records)), rows_per_image)
    has_box = np.repeat(counts > 0, rows_per_image)  # True exactly on the box rows, in box order

    boxes = _concat([np.asarray(r.boxes_xyxy, dtype=np.float64).reshape(-1, 4) for r in records], (0, 4))
    confidence = _concat([np.asarray(r.confidence, dtype=np.float64).reshape(-1) for r in records], (0,))
    class_id = _concat([_as_class_ids(r) for r in records], (0,)).astype(np.int64)
    _check_class_ids(records, counts, class_id, len(class_names))

    widths = np.array([r.width for r in records], dtype=np.int64)
    heights = np.array([r.height for r in records], dtype=np.int64)
    scale = np.stack([widths, heights, widths, heights], axis=1).astype(np.float64)
    box_image = image_of_row[has_box]
    boxes_n = np.clip(boxes / scale[box_image], 0.0, 1.0)

    null_mask = ~has_box

    def scatter(values: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
        full = np.zeros(n_rows, dtype=dtype)
        full[has_box] = values
        return full

    def box_column(values: np.ndarray, arrow_type: pa.DataType, dtype: type[np.generic]) -> pa.Array:
        return pa.array(scatter(values, dtype), type=arrow_type, mask=null_mask)

    take = pa.array(image_of_row, type=pa.int64())

    def per_image(values: list[object], arrow_type: pa.DataType) -> pa.Array:
        return pa.array(values, type=arrow_type).take(take)

    def constant(value: object, arrow_type: pa.DataType) -> pa.Array:
        if value is None:
            return pa.nulls(n_rows, type=arrow_type)
        return pa.repeat(pa.scalar(value, type=arrow_type), n_rows)

    names = pa.array(list(class_names), type=pa.string())
    class_name = names.take(pa.array(scatter(class_id, np.int64), mask=null_mask))

    columns: dict[str, pa.Array] = {
        "image_id": per_image([r.image_id for r in records], pa.string()),
        "image_uri": per_image([r.image_uri for r in records], pa.string()),
        "image_sha256": per_image([r.image_sha256 for r in records], pa.string()),
        "batch": constant(batch, pa.string()),
        "date": constant(date, pa.date32()),
        "ts": constant(ts, pa.timestamp("us", tz="UTC")),
        "model_name": constant(model_name, pa.string()),
        "model_version": constant(model_version, pa.string()),
        "model_alias": constant(model_alias, pa.string()),
        "class_id": box_column(class_id, pa.int16(), np.int16),
        "class_name": class_name,
        "confidence": box_column(confidence, pa.float32(), np.float32),
    }
    for i, name in enumerate(("x1", "y1", "x2", "y2")):
        columns[name] = box_column(boxes[:, i], pa.float32(), np.float32)
        columns[f"{name}n"] = box_column(boxes_n[:, i], pa.float32(), np.float32)
    columns["image_width"] = pa.array(widths[image_of_row], type=pa.int32())
    columns["image_height"] = pa.array(heights[image_of_row], type=pa.int32())
    columns["latency_ms"] = per_image([float(r.latency_ms) for r in records], pa.float32())
    columns["n_detections"] = pa.array(counts[image_of_row], type=pa.int16())
    columns["source"] = per_image([r.source for r in records], pa.string())
    columns["error"] = per_image([r.error for r in records], pa.string())
    for name in STAT_COLUMNS:
        columns[name] = per_image([None if r.stats is None else getattr(r.stats, name) for r in records], pa.float32())
    columns["shadow"] = constant(shadow, pa.bool_())
    margin = scatter(_concat([_margin(r) for r in records], (0,)), np.float32)
    columns["margin"] = pa.array(margin, type=pa.float32(), mask=null_mask | np.isnan(margin))
    columns["evidence_max"] = per_image([r.evidence_max for r in records], pa.float32())
    columns["evidence_count"] = per_image([r.evidence_count for r in records], pa.int16())
    return pa.table([columns[name] for name in SCHEMA.names], schema=SCHEMA)


def append(root: Path, table: pa.Table, *, part: str) -> list[Path]:
    """Write a prediction table into the log, one file per date, atomically.

    Each date's rows go to ``<root>/date=YYYY-MM-DD/<safe part>.parquet``: written to a hidden temp file in that folder,
    fsynced, then renamed over the target, so readers see the old file or the new one, never a partial one. Appending
    the same ``part`` again replaces the file for each date in ``table`` (idempotent re-runs).

    Args:
        root: log root folder (created when missing).
        table: rows with :data:`SCHEMA` (column order may differ; a not-null column may be declared nullable as
            long as it holds no nulls).
        part: name of this write, e.g. ``batch=2026-11-02__model=visionloop-detector-v3``; characters other than
            ``A-Z a-z 0-9 . _ = -`` become ``_`` and leading ``.``/``_``/``-`` are dropped (readers skip such names).

    Returns:
        The written file paths, sorted by date; empty when ``table`` has no rows (nothing is written).

    Raises:
        PredictionLogError: the table does not match :data:`SCHEMA` (every mismatch is listed) or ``part`` has no
            safe characters. Nothing is written then.
    """
    root = Path(root)
    problems = schema_problems(table.schema, v1_ok=False) or null_problems(table)
    if problems:
        raise PredictionLogError(format_problems("table to append", problems))
    file_name = _part_file_name(part)
    table = table.select(SCHEMA.names).cast(SCHEMA)
    if table.num_rows == 0:
        logger.warning("prediction log %s: part %r has no rows, nothing written", root, part)
        return []

    written = []
    for date in sorted(pc.unique(table[PARTITION_KEY]).to_pylist()):
        rows = table.filter(pc.equal(table[PARTITION_KEY], pa.scalar(date, type=pa.date32())))
        target = root / f"{PARTITION_KEY}={date.isoformat()}" / file_name
        _write_atomic(rows, target)
        logger.info("prediction log: wrote %d rows to %s", rows.num_rows, target)
        written.append(target)
    return written


def read(root: Path, *, dates: Iterable[dt.date] | None = None) -> pa.Table:
    """Read the log (or some dates of it) into one table, validating every file first.

    Only ``*.parquet`` files are read, so leftover temp files (``*.tmp``) are ignored, as every reader of the log
    ignores them. Nothing is modified.

    Args:
        root: log root folder; a missing or empty root gives an empty table.
        dates: only these partition dates; None reads all.

    Returns:
        A table with :data:`SCHEMA` (files written before version 3 upgraded, :func:`upgrade`), files in path order
        (date, then part name).

    Raises:
        PredictionLogError: a ``*.parquet`` file is not readable Parquet, is not inside a ``date=YYYY-MM-DD``
            folder, has a name starting with ``.``/``_`` (PyArrow would skip it, DuckDB would not), a
            missing/extra/mistyped column, nulls in a not-null column, or dates that differ from its folder. The
            message names the file and lists every problem.
    """
    tables = [_read_file(path, date) for path, date in _part_files(Path(root), dates)]
    if not tables:
        return empty_table()
    return pa.concat_tables(tables)


def logged_batches(root: Path) -> set[LoggedBatch]:
    """Return the (batch, model name, model version) combinations already in the log, shadow rows left out.

    Reads only those three columns and ``shadow`` of each file (after checking the file's schema), so it is cheap
    next to :func:`read`. Rows logged in shadow (``shadow`` true) do not count: a version that shadowed a batch has
    not predicted it (it predicts it in full once it is the champion). Files written before version 2 have no
    shadow rows.

    Args:
        root: log root folder; a missing root gives an empty set.

    Returns:
        Set of :class:`LoggedBatch`, e.g. ``{LoggedBatch("2026-11-02", "visionloop-detector", "3")}``.

    Raises:
        PredictionLogError: a file is unreadable or its schema does not match :data:`SCHEMA`.
    """
    keys = list(LoggedBatch._fields)
    found: set[LoggedBatch] = set()
    for path, _ in _part_files(Path(root), None):
        v1 = is_v1(_check_file_schema(path))
        table = pq.ParquetFile(path).read(columns=keys if v1 else [*keys, "shadow"])
        if not v1:
            table = table.filter(pc.invert(pc.fill_null(table["shadow"], False)))
        columns = table.select(keys).group_by(keys).aggregate([])
        found.update(LoggedBatch(*row) for row in zip(*(columns[k].to_pylist() for k in keys), strict=True))
    return found


def window_files(root: Path, *, days: int) -> list[tuple[Path, dt.date]]:
    """List and schema-check the log files of the newest ``days`` dates (counted back from the log's newest date).

    Args:
        root: log root folder; a missing root gives no files.
        days: how many dates, from the newest date in the log (not from today).

    Returns:
        ``(file, partition date)`` in path order (date, then part name); empty for an empty log.

    Raises:
        PredictionLogError: a ``*.parquet`` file outside a ``date=YYYY-MM-DD`` folder, hidden, unreadable or with a
            schema other than :data:`SCHEMA` or an older one's (the message names the file).
    """
    files = _part_files(Path(root), None)
    for path, date in files:
        if date is None:
            raise PredictionLogError(
                f"{path}: not inside a {PARTITION_KEY}=YYYY-MM-DD folder directly under the log root; move or delete it"
            )
    dates = sorted({date for _, date in files if date is not None})
    if not dates:
        return []
    first = dates[-1] - dt.timedelta(days=days - 1)
    window = [(path, date) for path, date in files if date is not None and date >= first]
    for path, _ in window:
        _check_file_schema(path)
    return window


def open_dataset(root: Path) -> ds.Dataset:
    """Open the log as a lazy PyArrow dataset (for filtered scans); ``date`` comes back as date32.

    No validation: use :func:`read` when file schemas may be wrong. A file written before version 3 reads with
    its newer columns null (``source``, ``shadow``, ``evidence_count`` too): pass a materialised table through
    :func:`upgrade` to get the defaults (``upgrade(open_dataset(root).to_table())``).

    Args:
        root: existing log root folder.

    Returns:
        ``ds.dataset(root, format="parquet", partitioning="hive", schema=SCHEMA)``.
    """
    return ds.dataset(Path(root), format="parquet", partitioning="hive", schema=SCHEMA)


def _concat(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(empty_shape)


def _margin(record: ImageDetections) -> np.ndarray:
    n = record.n_detections
    return np.full(n, np.nan) if record.margin is None else np.asarray(record.margin, np.float64).reshape(n)


def _as_class_ids(record: ImageDetections) -> np.ndarray:
    ids = np.asarray(record.class_id).reshape(-1)
    integral = np.issubdtype(ids.dtype, np.integer) or (np.all(np.isfinite(ids)) and np.array_equal(ids, np.round(ids)))
    if not integral:
        raise PredictionLogError(f"image {record.image_id!r}: class_id values must be integers, got {ids}")
    return ids


def _check_class_ids(records: Sequence[ImageDetections], counts: np.ndarray, ids: np.ndarray, n_classes: int) -> None:
    bad = (ids < 0) | (ids >= n_classes)
    if not bad.any():
        return
    image_of_box = np.repeat(np.arange(len(records)), counts)
    first = int(np.flatnonzero(bad)[0])
    raise PredictionLogError(
        f"image {records[image_of_box[first]].image_id!r}: class {int(ids[first])} not in classes "
        f"[0..{n_classes - 1}] ({int(bad.sum())} bad box(es) in total); pass the model's class_names"
    )


def _part_file_name(part: str) -> str:
    stem = part.removesuffix(PART_SUFFIX)
    safe = _UNSAFE_CHARS.sub("_", stem).lstrip("._-")[:_MAX_PART_CHARS]
    if not safe:
        raise PredictionLogError(f"part {part!r} has no safe file name characters (use A-Z a-z 0-9 . _ = -)")
    if safe != stem:
        logger.info("prediction log: part %r stored as %r", part, safe)
    return safe + PART_SUFFIX


def _write_atomic(table: pa.Table, target: Path) -> None:
    # the temp file's leading "." hides it from PyArrow; its suffix from "**/*.parquet" globs (DuckDB, Polars)
    with atomic_open(target, suffix=TEMP_SUFFIX) as handle:
        pq.write_table(table, handle, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def _part_files(root: Path, dates: Iterable[dt.date] | None) -> list[tuple[Path, dt.date | None]]:
    if not root.exists():
        return []
    if not root.is_dir():
        raise PredictionLogError(f"{root}: prediction log root is not a folder")
    wanted = None if dates is None else {d.isoformat() for d in dates}
    files = []
    for path in sorted(root.rglob(f"*{PART_SUFFIX}")):
        if not path.is_file():
            continue
        if _is_hidden(path, root):
            raise PredictionLogError(
                f"{path}: a name starting with '.' or '_' is skipped by PyArrow but read by DuckDB and Polars globs, "
                "so the readers of the log would disagree; rename or delete it"
            )
        match = _DATE_DIR.match(path.parent.name) if path.parent.parent == root else None
        folder_date = match.group(1) if match else None
        if wanted is not None and folder_date not in wanted:
            continue
        files.append((path, _parse_date(folder_date) if folder_date else None))
    return files


def _parse_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _check_file_schema(path: Path) -> pa.Schema:
    """The file's schema after checking it is :data:`SCHEMA` or an older version's (``OLD_SCHEMAS``)."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise PredictionLogError(f"{path}: not a readable Parquet file ({err})") from err
    problems = schema_problems(schema)
    if problems:
        raise PredictionLogError(format_problems(path, problems))
    return schema


def _read_file(path: Path, folder_date: dt.date | None) -> pa.Table:
    if folder_date is None:
        raise PredictionLogError(
            f"{path}: not inside a {PARTITION_KEY}=YYYY-MM-DD folder directly under the log root; "
            "move or delete it (every reader of the log picks it up)"
        )
    _check_file_schema(path)
    try:
        # ParquetFile reads just this file; pq.read_table would also add hive columns from the path.
        table = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError) as err:
        raise PredictionLogError(f"{path}: not a readable Parquet file ({err})") from err
    problems = null_problems(table)
    other_dates = sorted(d for d in pc.unique(table[PARTITION_KEY]).to_pylist() if d not in (folder_date, None))
    if other_dates:
        problems.append(
            f"column {PARTITION_KEY} has {', '.join(map(str, other_dates))} but the folder says {folder_date}"
        )
    if problems:
        raise PredictionLogError(format_problems(path, problems))
    return upgrade(table)
