"""The prediction log read per image: one model's rows grouped into image runs, columnar (:class:`ImageRows`).

A reader of :mod:`tasks.contracts.prediction_log` (which owns the file layout and schema) for code that scores
millions of rows per image: the sample stage and its strategies (:mod:`tasks.decisions.sampling`).

* :func:`window_parts` lists the window's files (:func:`prediction_log.window_files`) and the models each holds (from
  the Parquet footer statistics; a scan only for a file holding several); :func:`find_champion` picks the newest
  model under an alias.
* :func:`read_parts` / :func:`read_image_rows` read only ``image_sha256, batch, date, confidence, class_id`` and the
  sampler's evidence ``margin, evidence_max, evidence_count`` (plus the normalised corners on request) of one
  model's rows. Each image's rows are consecutive in a file
  (``prediction_log.rows_to_table`` writes them so), so an image is a run of one hash and per-image features are
  numpy segment reductions over the rows, not a GROUP BY.
* :func:`image_meta` fetches ``image_id``/``image_uri`` of a few images back by position.

Rows of images that have no prediction (``error`` not null: unreadable, not decoded, inference failed or timed out)
are left out by every reader here: such images cannot be scored, compared or labeled. Files written before the
log's version 2 (no ``error`` column) read as they are; before version 3 (no evidence columns), with ``margin`` and
``evidence_max`` NaN and ``evidence_count`` 0, as :func:`prediction_log.upgrade` fills them.

Reads only; a file with another schema or a hash that is not 64 hex digits raises
:class:`~tasks.contracts.prediction_log.PredictionLogError` naming the file or the value.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.contracts import prediction_log

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_COLUMNS = ("model_alias", "model_name", "model_version")
_ROW_COLUMNS = ["image_sha256", "batch", "date", "confidence", "class_id"]
_EVIDENCE = {"margin": pl.Float32, "evidence_max": pl.Float32, "evidence_count": pl.Int16}  # version 3
_STATS = list(prediction_log.STAT_COLUMNS)  # version 2: only ``diversity`` reads them
_BOX_COLUMNS = ["x1n", "y1n", "x2n", "y2n"]
_T = TypeVar("_T")
_R = TypeVar("_R")
_FIRST = pl.col("image_sha256").ne_missing(pl.col("image_sha256").shift(1)).fill_null(True).alias("first")


class ModelKey(NamedTuple):
    """Which model produced a set of prediction rows."""

    alias: str | None
    name: str
    version: str


@dataclass(frozen=True)
class LogPart:
    """One prediction log file of the window and the models whose rows it holds.

    Attributes:
        path: the Parquet file.
        date: its partition date.
        models: model -> newest ``ts`` of its rows in this file (from Parquet statistics, or a scan without them).
    """

    path: Path
    date: dt.date
    models: dict[ModelKey, dt.datetime]


@dataclass(frozen=True, eq=False)
class ImageRows:
    """Box rows grouped by image: the rows of image ``i`` are ``starts[i]:starts[i + 1]``.

    An image is a run of consecutive rows with one ``image_sha256`` within one file; the same picture logged in two
    batches is two entries here (the selection keeps one).

    Attributes:
        images: (I,) frame, one row per image in log order: ``image_sha256``, ``batch``, ``date``, ``part`` (index of
            the file it was read from) and ``row`` (its first row among that file's rows of the model).
        starts: (I,) int64 index of each image's first row; strictly increasing from 0.
        confidence: (R,) float32 box confidence; NaN on the single row of an image without detections.
        class_id: (R,) int16 box class; -1 on the row of an image without detections.
        sha_prefix: (I,) uint64 value of the first 16 hex digits of ``image_sha256`` (the seeded draws start here).
        boxes_xyxyn: (R, 4) float32 normalised corners ``x1n, y1n, x2n, y2n`` (NaN on a zero-detection row), or
            None when not read (only ``disagreement`` needs them).
        margin: (R,) float32 top-1 minus top-2 class score of each box; NaN where not logged (zero-detection rows,
            end-to-end heads, files before version 3), or None: not read (every box unknown).
        evidence_max: (I,) float32 highest sub-threshold score of each image, NaN when none; None: not read.
        evidence_count: (I,) int16 number of sub-threshold boxes of each image; None: not read (all 0).
        stats: (I, 6) float32 input statistics of each image (``prediction_log.STAT_COLUMNS`` order; NaN where not
            logged), or None when not read (only ``diversity`` needs them).
    """

    images: pl.DataFrame
    starts: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int16]
    sha_prefix: npt.NDArray[np.uint64]
    boxes_xyxyn: npt.NDArray[np.float32] | None = None
    margin: npt.NDArray[np.float32] | None = None
    evidence_max: npt.NDArray[np.float32] | None = None
    evidence_count: npt.NDArray[np.int16] | None = None
    stats: npt.NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return self.images.height


# --- the window and its models -----------------------------------------------------------------------------------


def window_parts(root: Path, *, days: int) -> list[LogPart]:
    """List and check the log files of the newest ``days`` dates and the models each holds.

    Args:
        root: prediction log root (``base.paths.predictions``); missing = no files.
        days: how many dates, counted back from the newest date in the log (not from today).

    Returns:
        The window's parts in path order (date, then part name); empty for an empty log.

    Raises:
        PredictionLogError: a ``*.parquet`` file outside a ``date=YYYY-MM-DD`` folder, hidden, unreadable or with a
            schema other than :data:`tasks.contracts.prediction_log.SCHEMA` (the message names the file).
    """
    files = prediction_log.window_files(Path(root), days=days)
    return [LogPart(path=path, date=date, models=_models_in(path)) for path, date in files]


def _models_in(path: Path) -> dict[ModelKey, dt.datetime]:
    """Models and newest ``ts`` of a file: from the footer statistics when the model columns are constant in it."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    wanted = [names.index(name) for name in (*_MODEL_COLUMNS, "ts")]
    found: set[tuple[Any, ...]] = set()
    newest: list[dt.datetime] = []
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        stats = [row_group.column(i).statistics for i in wanted]
        constant = [_constant(s, row_group.num_rows) for s in stats[:3]]
        ts = stats[3]
        if not all(ok for ok, _ in constant) or ts is None or not isinstance(ts.max, dt.datetime):
            return _scan_models(path)  # a file of several models (the stage's writer keeps one per file)
        found.add(tuple(value for _, value in constant))
        newest.append(ts.max)
    if len(found) != 1:
        return _scan_models(path)
    return {ModelKey(*found.pop()): _as_utc(max(newest))}


def _constant(stats: pq.Statistics | None, num_rows: int) -> tuple[bool, Any]:
    """``(True, value)`` when a column chunk holds a single value (None: all null), else ``(False, None)``."""
    if stats is None or not stats.has_null_count:
        return False, None
    if stats.null_count == num_rows:
        return True, None
    if stats.null_count == 0 and stats.has_min_max and stats.min == stats.max:
        return True, stats.min
    return False, None


def _scan_models(path: Path) -> dict[ModelKey, dt.datetime]:
    groups = pl.scan_parquet(path).group_by(_MODEL_COLUMNS).agg(pl.col("ts").max()).collect()
    return {ModelKey(a, n, v): _as_utc(ts) for a, n, v, ts in groups.iter_rows()}


def _as_utc(ts: dt.datetime) -> dt.datetime:
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


def find_champion(parts: Iterable[LogPart], *, alias: str) -> ModelKey | None:
    """The model whose rows under ``alias`` are the newest in the window (ties: highest name, then version)."""
    newest: dict[ModelKey, dt.datetime] = {}
    for part in parts:
        for key, ts in part.models.items():
            if key.alias == alias and (key not in newest or ts > newest[key]):
                newest[key] = ts
    if not newest:
        return None
    return max(newest, key=lambda key: (newest[key], key.name, key.version))


# --- image rows --------------------------------------------------------------------------------------------------


def read_image_rows(paths: Sequence[Path], *, model: ModelKey, boxes: bool = False) -> ImageRows:
    """Read one model's rows of the given log files, grouped by image (:func:`read_parts` + :func:`concat_rows`).

    Args:
        paths: log files (already schema-checked), in log order.
        model: whose rows.
        boxes: also read ``x1n, y1n, x2n, y2n``.

    Returns:
        The rows as :class:`ImageRows`; ``images["part"]`` indexes ``paths``.
    """
    parts = read_parts(paths, model=model, boxes_for=range(len(paths)) if boxes else ())
    return concat_rows(parts, boxes=boxes)


def read_parts(
    paths: Sequence[Path], *, model: ModelKey, boxes_for: Collection[int] = (), stats: bool = False
) -> list[ImageRows]:
    """Read one model's rows file by file: one :class:`ImageRows` per file (``part`` = its index in ``paths``).

    Only ``image_sha256, batch, date, class_id, confidence`` and the evidence columns are read (plus the corners for
    the files whose index is in ``boxes_for``, and the input statistics with ``stats``), filtered on the model
    columns, so memory holds one file's hashes per reading thread at most besides the result. Files are read by
    :func:`map_files` threads (Parquet decoding and Polars release the GIL).
    """

    def read(i: int) -> ImageRows:
        path = paths[i]
        columns = _ROW_COLUMNS + (_BOX_COLUMNS if i in boxes_for else [])
        names = pq.read_schema(path).names
        frame = (
            pl.scan_parquet(path)
            .filter(_row_filter(path, model))
            .select(*columns, *_evidence_columns(names), *(_stat_columns(names) if stats else []), _FIRST)
            .collect()
        )
        try:
            return _group_frame(frame, part=i, boxes=i in boxes_for)
        except prediction_log.PredictionLogError as err:
            raise prediction_log.PredictionLogError(f"{path}: {err}") from None

    return map_files(read, range(len(paths)))


def map_files(read: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """``[read(item) for item in items]`` on one thread per core (at most 4), in order; the first error is raised.

    Per-file reads are independent and spend their time in Parquet decoding and Polars, outside the GIL, so the
    window's files decode side by side; more than 4 threads only adds memory (each holds one file's columns).
    """
    items = list(items)
    workers = max(1, min(len(items), os.cpu_count() or 1, 4))
    if workers == 1:
        return [read(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sample-read") as pool:
        return list(pool.map(read, items))


def image_rows(table: pa.Table, *, boxes: bool = False, stats: bool = False) -> ImageRows:
    """Group a prediction log table (e.g. from :func:`tasks.contracts.prediction_log.read`) by image, as the stage does.

    Args:
        table: rows with at least ``image_sha256, batch, date, confidence, class_id`` (and ``x1n, y1n, x2n, y2n``
            with ``boxes``); each image's rows consecutive, as in the log. Rows with an ``error`` are left out.
        boxes: also keep the normalised corners.
        stats: also keep the input statistics (NaN when the table has none).

    Returns:
        The rows as :class:`ImageRows` (``part`` 0).
    """
    if "error" in table.column_names:  # images without a prediction are no candidates
        table = table.filter(pc.is_null(table["error"]))
    columns = _ROW_COLUMNS + (_BOX_COLUMNS if boxes else [])
    present = [name for name in (*_EVIDENCE, *_STATS) if name in table.column_names]
    frame = pl.from_arrow(table.select(columns + present))
    assert isinstance(frame, pl.DataFrame)  # a Table converts to a DataFrame, never a Series
    frame = frame.select(*columns, *_evidence_columns(present), *(_stat_columns(present) if stats else []))
    return _group_frame(frame.with_columns(_FIRST), part=0, boxes=boxes)


def _stat_columns(names: Collection[str]) -> list[pl.Expr]:
    """The input statistics from a frame with ``names`` (float32; null in a version-1 file)."""
    return [pl.col(n).cast(pl.Float32) if n in names else pl.lit(None, pl.Float32).alias(n) for n in _STATS]


def _evidence_columns(names: Collection[str]) -> list[pl.Expr]:
    """The evidence columns (:data:`_EVIDENCE`) from a frame with ``names``; an older file's as upgrade fills them."""
    return [
        (pl.col(name).fill_null(0) if name == "evidence_count" else pl.col(name)).cast(dtype)
        if name in names
        else pl.lit(0 if name == "evidence_count" else None, dtype).alias(name)
        for name, dtype in _EVIDENCE.items()
    ]


def _group_frame(frame: pl.DataFrame, *, part: int, boxes: bool) -> ImageRows:
    """One file's rows (log order, with :data:`_FIRST`) as ImageRows: an image starts where the hash changes."""
    first = frame["first"]
    starts = np.flatnonzero(first.to_numpy()).astype(np.int64)
    # through Arrow: a compact copy of the first rows' hashes (Polars' string views would pin the whole file's)
    heads = frame.filter(first)
    images = heads.select("image_sha256", "batch", "date").to_arrow()
    images = images.set_column(0, "image_sha256", images.column(0).cast(pa.large_string()))
    frame_images = pl.from_arrow(images)
    assert isinstance(frame_images, pl.DataFrame)  # a Table converts to a DataFrame, never a Series
    return ImageRows(
        images=frame_images.with_columns(part=pl.lit(part, pl.UInt32), row=pl.Series(starts, dtype=pl.UInt32)),
        starts=starts,
        confidence=frame["confidence"].cast(pl.Float32).to_numpy(),
        class_id=frame["class_id"].fill_null(-1).cast(pl.Int16).to_numpy(),
        sha_prefix=_sha_prefix(images.column(0)),
        boxes_xyxyn=frame.select(pl.col(_BOX_COLUMNS).cast(pl.Float32)).to_numpy() if boxes else None,
        margin=frame["margin"].fill_null(np.nan).to_numpy(),
        evidence_max=heads["evidence_max"].fill_null(np.nan).to_numpy(),
        evidence_count=heads["evidence_count"].to_numpy(),
        stats=heads.select(pl.col(_STATS).fill_null(np.nan)).to_numpy() if _STATS[0] in frame.columns else None,
    )


def concat_rows(parts: Sequence[ImageRows], *, boxes: bool = False) -> ImageRows:
    """Concatenate per-file :class:`ImageRows` in order (``boxes``: keep the corners; every part must have them)."""
    offsets = np.cumsum([0] + [len(p.class_id) for p in parts])
    schema = {"image_sha256": pl.String, "batch": pl.String, "date": pl.Date, "part": pl.UInt32, "row": pl.UInt32}
    corners = [p.boxes_xyxyn for p in parts]
    if boxes and any(c is None for c in corners):
        raise ValueError("concat_rows(boxes=True) needs every part read with its corners")
    return ImageRows(
        images=pl.concat([p.images for p in parts], rechunk=True) if parts else pl.DataFrame(schema=schema),
        starts=np.concatenate([np.zeros(0, np.int64)] + [p.starts + o for p, o in zip(parts, offsets, strict=False)]),
        confidence=np.concatenate([np.zeros(0, np.float32)] + [p.confidence for p in parts]),
        class_id=np.concatenate([np.zeros(0, np.int16)] + [p.class_id for p in parts]),
        sha_prefix=np.concatenate([np.zeros(0, np.uint64)] + [p.sha_prefix for p in parts]),
        boxes_xyxyn=np.concatenate([np.zeros((0, 4), np.float32)] + [c for c in corners if c is not None])
        if boxes
        else None,
        margin=np.concatenate([np.zeros(0, np.float32)] + [_or(p.margin, len(p.class_id), np.nan) for p in parts]),
        evidence_max=np.concatenate([np.zeros(0, np.float32)] + [_or(p.evidence_max, len(p), np.nan) for p in parts]),
        evidence_count=np.concatenate([np.zeros(0, np.int16)] + [_or(p.evidence_count, len(p), 0) for p in parts]),
        stats=np.concatenate([np.zeros((0, len(_STATS)), np.float32)] + [p.stats for p in parts if p.stats is not None])
        if all(p.stats is not None for p in parts)
        else None,
    )


def _or(values: npt.NDArray[Any] | None, n: int, fill: float) -> npt.NDArray[Any]:
    """``values``, or ``n`` times ``fill`` for a part that did not read them."""
    return np.full(n, fill, np.float32 if isinstance(fill, float) else np.int16) if values is None else values


def _sha_prefix(sha: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.uint64]:
    """First 16 hex digits of each hash as uint64, straight from the Arrow buffer (64 bytes a hash)."""
    array = sha.combine_chunks() if isinstance(sha, pa.ChunkedArray) else sha
    array = array.cast(pa.large_string())
    if len(array) == 0:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(array.buffers()[1], np.int64)[array.offset : array.offset + len(array) + 1]
    try:
        if array.null_count or (np.diff(offsets) != 64).any():
            raise ValueError("not 64 characters")
        digits = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 64)[:, :16]
        raw = bytes.fromhex(np.ascontiguousarray(digits).tobytes().decode("ascii"))
        if len(raw) != 8 * len(array):
            raise ValueError("whitespace")
    except (ValueError, UnicodeDecodeError):
        bad = next(s for s in array.to_pylist() if not _SHA256.match(s or ""))
        raise prediction_log.PredictionLogError(
            f"image_sha256 {bad!r} is not 64 lowercase hex digits; the log's writer must store the image file's "
            "SHA-256 (prediction_log.sha256_file)"
        ) from None
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def image_meta(
    paths: Sequence[Path], *, model: ModelKey, images: pl.DataFrame
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The manifest fields of some images, fetched by position (``part``, ``row``) from the files they came from.

    Only ``image_id`` and ``image_uri`` are read (filtered on the model and on ``error`` as :func:`read_parts`
    does, so positions agree), and only from the files holding one of the images.

    Args:
        paths: the files ``images["part"]`` indexes.
        model: whose rows were read.
        images: rows of :attr:`ImageRows.images` (``image_sha256, batch, date, part, row``).

    Returns:
        image_sha256 -> ``image_id, image_uri, batch, date, model_name, model_version``; for a picture logged more
        than once, its occurrence with the earliest (date, batch, image id).
    """

    def fetch(group: pl.DataFrame) -> pl.DataFrame:
        path = paths[int(group["part"][0])]
        read = pl.scan_parquet(path).filter(_row_filter(path, model)).select("image_id", "image_uri").collect()
        return pl.concat([group, read[group["row"].to_numpy()]], how="horizontal")

    found = map_files(fetch, images.partition_by("part", maintain_order=True))
    if not found:
        return {}
    frame = (
        pl.concat(found)
        .with_columns(model_name=pl.lit(model.name), model_version=pl.lit(model.version))
        .sort("date", "batch", "image_id", "image_sha256")
        .unique(subset=["image_sha256"], keep="first", maintain_order=True)
        .drop("part", "row")
    )
    return {row["image_sha256"]: row for row in frame.iter_rows(named=True)}


def _row_filter(path: Path, model: ModelKey) -> pl.Expr:
    """The rows of ``model`` in one file that have a prediction (a version-1 file has no ``error`` column)."""
    keep = _model_filter(model)
    if "error" in pq.read_schema(path).names:
        keep = keep & pl.col("error").is_null()
    return keep


def _model_filter(model: ModelKey) -> pl.Expr:
    keep = pl.col("model_name").eq(model.name) & pl.col("model_version").eq(model.version)
    return keep & (pl.col("model_alias").is_null() if model.alias is None else pl.col("model_alias").eq(model.alias))
