"""Stage ``sample``: choose the production images to label this cycle from the prediction log.

Contract:
    inputs: the prediction log ``<base.paths.predictions>/date=YYYY-MM-DD/*.parquet`` (schema in
        :mod:`tasks.contracts.prediction_log`; every file of the window is schema-checked first and a bad one is named);
        the label ledger ``<base.paths.labels>/ledger.parquet`` (columns ``image_sha256``, ``status``, optional
        ``phash``; missing = nothing labeled yet); the drift monitor's ``<base.paths.reports>/monitor.json``
        (``{"flagged_batches": [...]}``, optional) plus ``sample.drift_batches``; the image files of the candidates
        (read only for the near-duplicate check).
    params: ``base.seed``, ``base.paths``, ``sample``.
    outputs: ``<base.paths.samples>/<cycle>/manifest.parquet`` (:data:`MANIFEST_SCHEMA`, one row per selected image,
        written atomically, empty when nothing is selected) and ``<base.paths.reports>/sample.json`` (counts per
        strategy, budget used, exclusions by reason, the effective ``sample`` config).
    side effects: none besides those two files; the log and the ledger are only read.

Selection, deterministic given ``base.seed`` and the cycle name:

1. Window: the newest ``sample.window_days`` dates of the log (counted back from its newest date, not from today).
   The champion is the model whose rows logged under ``sample.alias`` are the newest (largest ``ts``); only its rows
   are scored. Models per file come from the Parquet footer statistics (a scan only for a file holding several).
2. Reading: Polars, one file at a time, only ``image_sha256, batch, date, confidence, class_id`` of the champion's
   rows. Each image's rows are consecutive in a file (``prediction_log.rows_to_table`` writes them so), so an image
   is a run of one hash and per-image features are numpy segment reductions (``np.add.reduceat``) over the rows, not
   a GROUP BY: hashing 10 M 64-character strings in a DuckDB or Polars aggregation alone costs more than the whole
   stage's budget. A picture logged in two batches is two runs with equal scores; the manifest keeps it once.
   Images whose hash is in the ledger are excluded before anything is ranked.
3. Scores, each in [0, 1] or none (not a candidate). Only a box's top-class confidence is logged, so uncertainty is
   about that one number per box:

   * ``random``: ``u < rate`` with ``u`` uniform from (seed, cycle, image SHA-256) (:func:`seeded_uniform`);
     score ``1 - u / rate``.
   * ``low_confidence``: ``n`` boxes with confidence in ``[low, high)``; score ``n / (n + 1)``.
   * ``entropy``: mean binary entropy ``H(p) = -p log2 p - (1-p) log2(1-p)`` of the image's box confidences, kept
     when at least ``min_score``.
   * ``margin``: the image's box closest to the decision ``threshold``; score
     ``1 - min |p - threshold| / max(threshold, 1 - threshold)`` (1 = a coin flip), kept when at least ``min_score``.
   * ``class_balanced``: box counts ``f_c`` per class over the window's champion boxes; score
     ``min_c f_c / f_k`` for the rarest class ``k`` the image shows (1 = the rarest class of the window).
   * ``disagreement``: the champion against every other model version (``aliases``: only rows logged under those)
     on the same image, among the champion's files on the dates the other version logged. A box agrees when the
     other side has a box of the same class at IoU >= ``iou`` (best match, not one-to-one); score
     ``1 - min(agreeing champion boxes, agreeing other boxes) / max(champion boxes, other boxes)``, so class flips,
     moved boxes and boxes only one side has all count; the largest over the other versions. Box pairs are formed
     by a sorted merge on (image, class), vectorised.
   * ``drift``: a seeded share ``rate`` of the images of flagged batches; score ``1 - u / rate``.

4. Each strategy nominates its best ``POOL_FACTOR x budget`` images (score, then a seeded tie-break). Nominations
   are taken greedily by ``weight x score``: an image goes to its best-weighted strategy that still has budget,
   unless its batch date is full (``max_per_day``) or it is a near-duplicate (perceptual hash, Hamming distance <=
   ``phash_distance``) of a ledger hash or of an image already taken, until ``budget`` images are taken. That loop
   runs over the nominations (bounded by the budgets), never over the log; only the images it reaches are opened.
   ``strategies`` lists every strategy that nominated the image. ``image_id``/``image_uri`` of the nominated images
   are read last, by position, from their files only.

Degenerate inputs give an empty manifest and a ``reason``, not an error: no log files, no rows under the alias in
the window, ``sample.budget: 0``, every strategy off (a shortfall of candidates is a ``reason`` too). A log file with
a wrong schema or a hash that is not 64 hex digits, a ledger without its columns, an unreadable ``monitor.json`` or
an unsafe cycle name raise, naming the file or the value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import (
    ClassBalancedStrategy,
    DisagreementStrategy,
    DriftStrategy,
    EntropyStrategy,
    LowConfidenceStrategy,
    MarginStrategy,
    Params,
    RandomStrategy,
    SampleParams,
    SampleStrategy,
    load_params,
    stage_argparser,
)
from tasks.contracts import prediction_log
from tasks.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

STRATEGIES = ("random", "low_confidence", "entropy", "margin", "class_balanced", "disagreement", "drift")
"""Strategy names in tie-break order (the fields of ``sample.strategies``)."""

EXCLUSIONS = ("ledger", "day_cap", "near_duplicate", "unreadable_image")
"""Reasons an image that qualified was not selected (besides a full budget)."""

POOL_FACTOR = 5
"""Each strategy nominates up to ``POOL_FACTOR x budget`` images, so exclusions can be back-filled."""

LEDGER_FILE = "ledger.parquet"
MONITOR_FILE = "monitor.json"
MANIFEST_FILE = "manifest.parquet"

MANIFEST_SCHEMA = pa.schema(
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
"""One row per selected image: ``rank`` 1 is taken first; ``score`` is the attributed strategy's score in [0, 1];
``phash`` is ``str(imagehash.phash(image))`` (16 hex digits; null when the near-duplicate check is off)."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_CYCLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")  # as the label stage
_MODEL_COLUMNS = ("model_alias", "model_name", "model_version")
_ROW_COLUMNS = ["image_sha256", "batch", "date", "confidence", "class_id"]
_BOX_COLUMNS = ["x1n", "y1n", "x2n", "y2n"]
_T = TypeVar("_T")
_R = TypeVar("_R")
_FIRST = pl.col("image_sha256").ne_missing(pl.col("image_sha256").shift(1)).fill_null(True).alias("first")
_FloatArray = npt.NDArray[np.float64]


class SampleError(ValueError):
    """An input of the sample stage (ledger, monitor report, cycle name) is unusable; the message names it."""


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
    """

    images: pl.DataFrame
    starts: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int16]
    sha_prefix: npt.NDArray[np.uint64]
    boxes_xyxyn: npt.NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return self.images.height


@dataclass(frozen=True)
class Ledger:
    """What the label stage already has: every hash in it is excluded; ``phash`` (uint64) feeds the duplicate check."""

    sha256: pl.Series
    phash: npt.NDArray[np.uint64]


@dataclass(frozen=True)
class StrategyCount:
    """One strategy's numbers in the report."""

    candidates: int
    selected: int
    budget: int
    weight: float


@dataclass(frozen=True)
class SampleResult:
    """Outcome of one sampling cycle (what ``reports/sample.json`` summarises).

    Attributes:
        cycle: cycle name (the manifest folder).
        manifest: path of the written manifest.
        selected: images in the manifest.
        budget: ``sample.budget``.
        by_strategy: strategy -> candidates, selected, budget, weight (enabled strategies only).
        excluded: reason (:data:`EXCLUSIONS`) -> number of images left out for it.
        per_day: batch date (ISO) -> images selected.
        window: ISO dates of the window, oldest first (empty without log files).
        champion: ``name/version`` of the scored model, None when there is none.
        reason: why fewer than ``budget`` images were selected, None when the budget was filled.
    """

    cycle: str
    manifest: str
    selected: int
    budget: int
    by_strategy: dict[str, StrategyCount]
    excluded: dict[str, int]
    per_day: dict[str, int]
    window: list[str]
    champion: str | None
    reason: str | None


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
    # prediction_log owns the layout rules (date folders, hidden names, schema): reuse them, never restate them.
    files = prediction_log._part_files(Path(root), None)
    for path, date in files:
        if date is None:
            raise prediction_log.PredictionLogError(
                f"{path}: not inside a date=YYYY-MM-DD folder directly under the log root; move or delete it"
            )
    dates = sorted({date for _, date in files if date is not None})
    if not dates:
        return []
    first = dates[-1] - dt.timedelta(days=days - 1)
    parts = []
    for path, date in files:
        if date is not None and date >= first:
            prediction_log._check_file_schema(path)
            parts.append(LogPart(path=path, date=date, models=_models_in(path)))
    return parts


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


def read_parts(paths: Sequence[Path], *, model: ModelKey, boxes_for: Collection[int] = ()) -> list[ImageRows]:
    """Read one model's rows file by file: one :class:`ImageRows` per file (``part`` = its index in ``paths``).

    Only ``image_sha256, batch, date, class_id, confidence`` are read (plus the corners for the files whose index is
    in ``boxes_for``), filtered on the model columns, so memory holds one file's hashes per reading thread at most
    besides the result. Files are read by :func:`map_files` threads (Parquet decoding and Polars release the GIL).
    """
    keep = _model_filter(model)

    def read(i: int) -> ImageRows:
        path = paths[i]
        columns = _ROW_COLUMNS + (_BOX_COLUMNS if i in boxes_for else [])
        frame = pl.scan_parquet(path).filter(keep).select(*columns, _FIRST).collect()
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


def image_rows(table: pa.Table, *, boxes: bool = False) -> ImageRows:
    """Group a prediction log table (e.g. from :func:`tasks.contracts.prediction_log.read`) by image, as the stage does.

    Args:
        table: rows with at least ``image_sha256, batch, date, confidence, class_id`` (and ``x1n, y1n, x2n, y2n``
            with ``boxes``); each image's rows consecutive, as in the log.
        boxes: also keep the normalised corners.

    Returns:
        The rows as :class:`ImageRows` (``part`` 0).
    """
    frame = pl.from_arrow(table.select(_ROW_COLUMNS + (_BOX_COLUMNS if boxes else [])))
    assert isinstance(frame, pl.DataFrame)  # a Table converts to a DataFrame, never a Series
    return _group_frame(frame.with_columns(_FIRST), part=0, boxes=boxes)


def _group_frame(frame: pl.DataFrame, *, part: int, boxes: bool) -> ImageRows:
    """One file's rows (log order, with :data:`_FIRST`) as ImageRows: an image starts where the hash changes."""
    first = frame["first"]
    starts = np.flatnonzero(first.to_numpy()).astype(np.int64)
    # through Arrow: a compact copy of the first rows' hashes (Polars' string views would pin the whole file's)
    images = frame.filter(first).select("image_sha256", "batch", "date").to_arrow()
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
    )


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


def seeded_uniform(rows: ImageRows, *, seed: int, cycle: str, salt: str) -> _FloatArray:
    """One uniform draw in [0, 1) per image, a pure function of (seed, cycle, salt, image SHA-256).

    The first 64 bits of the SHA-256 are XOR-ed with a key derived from ``seed:cycle:salt`` and mixed with the
    splitmix64 finaliser, so the draw does not depend on row order, on the engine or on its version.

    Returns:
        (I,) float64.
    """
    key = int.from_bytes(hashlib.sha256(f"{seed}:{cycle}:{salt}".encode()).digest()[:8], "little")
    z = rows.sha_prefix ^ np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --- strategies: (I,) scores in [0, 1], NaN = not a candidate ----------------------------------------------------


def _as_frame(rows: ImageRows, score: _FloatArray) -> pl.DataFrame:
    return pl.DataFrame(
        {"image_sha256": rows.images["image_sha256"], "score": pl.Series(score, dtype=pl.Float64, nan_to_null=True)}
    )


def _per_image_sum(rows: ImageRows, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return np.add.reduceat(values, rows.starts) if len(rows) else np.zeros(0, values.dtype)


def _boxes(rows: ImageRows) -> npt.NDArray[np.bool_]:
    return ~np.isnan(rows.confidence)


def score_random(rows: ImageRows, *, rate: float, seed: int, cycle: str) -> pl.DataFrame:
    """``random``: a seeded uniform share ``rate`` of the images; score ``1 - u / rate`` (u: :func:`seeded_uniform`).

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    u = seeded_uniform(rows, seed=seed, cycle=cycle, salt="random")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _as_frame(rows, np.where(u < rate, 1.0 - u / rate, np.nan))


def score_low_confidence(rows: ImageRows, *, band: tuple[float, float]) -> pl.DataFrame:
    """``low_confidence``: ``n`` boxes with confidence in ``[band[0], band[1])``; score ``n / (n + 1)`` when n >= 1.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    low, high = band
    in_band = (rows.confidence >= low) & (rows.confidence < high)  # NaN compares False
    n = _per_image_sum(rows, in_band.astype(np.int32)).astype(np.float64)
    return _as_frame(rows, np.where(n > 0, n / (n + 1.0), np.nan))


def score_entropy(rows: ImageRows, *, min_score: float) -> pl.DataFrame:
    """``entropy``: mean binary entropy (bits) of the image's box confidences, kept when >= ``min_score``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    boxes = _boxes(rows)
    p = np.clip(rows.confidence[boxes], np.float32(1e-7), np.float32(1 - 1e-7))  # float32 is plenty for a mean
    entropy = np.zeros(len(rows.confidence), np.float32)
    entropy[boxes] = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    n = _per_image_sum(rows, boxes.astype(np.int32))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = _per_image_sum(rows, entropy).astype(np.float64) / n
    return _as_frame(rows, np.where((n > 0) & (mean >= min_score), mean, np.nan))


def score_margin(rows: ImageRows, *, threshold: float, min_score: float) -> pl.DataFrame:
    """``margin``: ``1 - min |conf - threshold| / max(threshold, 1 - threshold)`` over the image's boxes.

    Only the top class's confidence is logged, so the margin is that of a binary keep/drop decision at
    ``threshold`` (0.5: the classic ``1 - |p - (1 - p)|``); kept when >= ``min_score``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    distance = np.where(_boxes(rows), np.abs(rows.confidence.astype(np.float64) - threshold), np.inf)
    nearest = np.minimum.reduceat(distance, rows.starts) if len(rows) else np.zeros(0)
    score = 1.0 - nearest / max(threshold, 1.0 - threshold)
    return _as_frame(rows, np.where(np.isfinite(nearest) & (score >= min_score), score, np.nan))


def score_class_balanced(rows: ImageRows, *, min_score: float) -> pl.DataFrame:
    """``class_balanced``: inverse class frequency over ``rows``, scaled so the rarest predicted class scores 1.

    Score of an image = ``min_c f_c / f_k`` for the rarest class ``k`` among its boxes (``f``: box counts per class
    over all of ``rows``); kept when >= ``min_score``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    boxes = rows.class_id >= 0
    counts = np.bincount(rows.class_id[boxes].astype(np.int64), minlength=1).astype(np.float64)
    if not boxes.any():
        return _as_frame(rows, np.full(len(rows), np.nan))
    rarity = np.divide(counts[counts > 0].min(), counts, out=np.zeros_like(counts), where=counts > 0)
    per_box = np.where(boxes, rarity[np.where(boxes, rows.class_id, 0)], -1.0)
    best = np.maximum.reduceat(per_box, rows.starts)
    return _as_frame(rows, np.where((best > 0) & (best >= min_score), best, np.nan))


def score_drift(rows: ImageRows, *, flagged: Collection[str], rate: float, seed: int, cycle: str) -> pl.DataFrame:
    """``drift``: a seeded share ``rate`` of the images of ``flagged`` batches; score ``1 - u / rate``.

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``rows.images``; ``score`` null when not a candidate.
    """
    in_flagged = rows.images["batch"].is_in(list(flagged)).to_numpy()
    u = seeded_uniform(rows, seed=seed, cycle=cycle, salt="drift")
    with np.errstate(divide="ignore", invalid="ignore"):
        return _as_frame(rows, np.where(in_flagged & (u < rate), 1.0 - u / rate, np.nan))


def score_disagreement(champion: ImageRows, other: ImageRows, *, iou: float, min_score: float) -> pl.DataFrame:
    """``disagreement``: the champion's boxes against another model version's boxes on the same images.

    Images are matched by ``image_sha256``; every same-class (champion box, other box) pair of a matched image is formed
    at once (numpy, no per-image loop). A box agrees when the other side has a box of the same class at IoU >= ``iou``
    (normalised corners; best match, not one-to-one). Score of an image:
    ``1 - min(agreeing champion boxes, agreeing other boxes) / max(champion boxes, other boxes)``: identical
    predictions score 0; a class flip, a box only one side has, or a moved box each lower the agreement.

    Args:
        champion: the champion's rows, with ``boxes_xyxyn``.
        other: the other version's rows, with ``boxes_xyxyn``.
        iou: IoU threshold in [0, 1].
        min_score: smallest score kept (0 is never kept).

    Returns:
        (I,) frame ``image_sha256, score`` aligned with ``champion.images``; ``score`` null when the other version
        did not log the image or the score is below ``min_score``.
    """
    if champion.boxes_xyxyn is None or other.boxes_xyxyn is None:
        raise ValueError("score_disagreement needs ImageRows read with boxes=True")
    c_image, o_image = _same_images(champion, other)
    # Same-class box pairs of every matched image m, by a sorted merge on the key (m, class): no per-image loop and
    # no cross product of boxes of different classes.
    n_classes = int(max(champion.class_id.max(initial=0), other.class_id.max(initial=0))) + 1
    c_row, c_key = _keyed_rows(champion, c_image, n_classes)
    o_row, o_key = _keyed_rows(other, o_image, n_classes)
    c_sorted = np.argsort(c_key, kind="stable")  # keys come nearly sorted (by match): cheap, and cache-friendly below
    c_row, c_key = c_row[c_sorted], c_key[c_sorted]
    o_sorted = np.argsort(o_key, kind="stable")
    low = np.searchsorted(o_key[o_sorted], c_key, side="left")
    count = np.searchsorted(o_key[o_sorted], c_key, side="right") - low
    offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    c_pair = np.repeat(c_row, count)
    o_pair = o_row[o_sorted[np.repeat(low, count) + offset]]
    hit = box_iou(champion.boxes_xyxyn[c_pair], other.boxes_xyxyn[o_pair]) >= iou
    c_hit = np.zeros(len(champion.class_id), np.int32)
    c_hit[c_pair[hit]] = 1
    o_hit = np.zeros(len(other.class_id), np.int32)
    o_hit[o_pair[hit]] = 1
    c_agree = _per_image_sum(champion, c_hit)[c_image]
    o_agree = _per_image_sum(other, o_hit)[o_image]
    c_boxes = _per_image_sum(champion, (champion.class_id >= 0).astype(np.int32))[c_image]
    o_boxes = _per_image_sum(other, (other.class_id >= 0).astype(np.int32))[o_image]
    most = np.maximum(c_boxes, o_boxes)
    with np.errstate(divide="ignore", invalid="ignore"):
        found = np.where(most > 0, 1.0 - np.minimum(c_agree, o_agree) / most, 0.0)
    score = np.full(len(champion), -np.inf)
    np.maximum.at(score, c_image, found)  # an image the other version logged twice keeps its larger score
    return _as_frame(champion, np.where((score > 0) & (score >= min_score), score, np.nan))


def _same_images(a: ImageRows, b: ImageRows) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Index pairs ``(i, j)`` with ``a`` image i and ``b`` image j of the same SHA-256 (joined on the 64-bit prefix)."""
    left = pl.DataFrame({"key": a.sha_prefix}).with_row_index("a")
    right = pl.DataFrame({"key": b.sha_prefix}).with_row_index("b")
    pairs = left.join(right, on="key", how="inner")
    i = pairs["a"].to_numpy().astype(np.int64)
    j = pairs["b"].to_numpy().astype(np.int64)
    same = (a.images["image_sha256"].gather(i) == b.images["image_sha256"].gather(j)).to_numpy()
    return i[same], j[same]


def _keyed_rows(
    rows: ImageRows, images: npt.NDArray[np.int64], n_classes: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Box rows of ``images`` (zero-detection rows left out) and their key ``match index x n_classes + class``."""
    count = _rows_per_image(rows)[images]
    match = np.repeat(np.arange(len(images)), count)
    row = (
        np.repeat(rows.starts[images], count) + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    )
    keep = rows.class_id[row] >= 0
    row, match = row[keep], match[keep]
    return row, match * n_classes + rows.class_id[row]


def box_iou(a_xyxy: npt.NDArray[np.float32], b_xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise IoU of two (N, 4) ``x1, y1, x2, y2`` box arrays (any common unit); 0 for two empty boxes."""
    inter = np.clip(np.minimum(a_xyxy[:, 2], b_xyxy[:, 2]) - np.maximum(a_xyxy[:, 0], b_xyxy[:, 0]), 0, None)
    inter *= np.clip(np.minimum(a_xyxy[:, 3], b_xyxy[:, 3]) - np.maximum(a_xyxy[:, 1], b_xyxy[:, 1]), 0, None)
    union = (a_xyxy[:, 2] - a_xyxy[:, 0]) * (a_xyxy[:, 3] - a_xyxy[:, 1])
    union += (b_xyxy[:, 2] - b_xyxy[:, 0]) * (b_xyxy[:, 3] - b_xyxy[:, 1])
    union -= inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.float32(0.0))


def _rows_per_image(rows: ImageRows) -> npt.NDArray[np.int64]:
    return np.diff(np.append(rows.starts, len(rows.class_id)))


# --- exclusions ------------------------------------------------------------------------------------------------------


def read_ledger(path: Path) -> Ledger:
    """Read the label ledger's hashes (and perceptual hashes when it has a ``phash`` column).

    Args:
        path: ``<base.paths.labels>/ledger.parquet``; missing = empty ledger.

    Returns:
        The unique ``image_sha256`` values and the ledger's non-null ``phash`` values as uint64.

    Raises:
        SampleError: unreadable, or without string columns ``image_sha256`` and ``status``, or a ``phash`` that is
            not 16 hex digits (the message names the file).
    """
    if not path.exists():
        return Ledger(pl.Series("image_sha256", [], dtype=pl.String), np.zeros(0, np.uint64))
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise SampleError(f"{path}: label ledger is not a readable Parquet file ({err})") from err
    problems = [
        f"column {name} missing or not a string (found {schema.field(name).type if name in schema.names else None})"
        for name in ("image_sha256", "status")
        if name not in schema.names or not pa.types.is_string(schema.field(name).type)
    ]
    if problems:
        raise SampleError(f"{path}: label ledger: " + "; ".join(problems))
    columns = ["image_sha256"] + (["phash"] if "phash" in schema.names else [])
    frame = pl.read_parquet(path, columns=columns)
    phash = np.zeros(0, np.uint64)
    if "phash" in columns:
        text = frame["phash"].cast(pl.String).drop_nulls()
        values = text.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        if values.null_count() or (text.str.len_bytes() > 16).any():
            bad = text.filter(values.is_null() | (text.str.len_bytes() > 16))[0]
            raise SampleError(f"{path}: phash {bad!r} is not 16 hex digits (str(imagehash.phash(image)))")
        phash = values.to_numpy().astype(np.uint64, copy=False)
    return Ledger(frame["image_sha256"].drop_nulls().unique(maintain_order=True), phash)


def drift_batches(params: Params) -> list[str]:
    """Flagged batches: ``sample.drift_batches`` plus ``flagged_batches`` of ``<reports>/monitor.json`` if present.

    Raises:
        SampleError: ``monitor.json`` is not JSON or its ``flagged_batches`` is not a list of strings.
    """
    flagged = list(params.sample.drift_batches)
    path = params.base.paths.reports / MONITOR_FILE
    if path.exists():
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SampleError(f"{path}: drift monitor report is not readable JSON ({err})") from err
        found = report.get("flagged_batches", []) if isinstance(report, dict) else None
        if not isinstance(found, list) or not all(isinstance(b, str) for b in found):
            raise SampleError(f"{path}: flagged_batches must be a list of batch names, got {found!r}")
        flagged += [b for b in found if b not in flagged]
    return flagged


def image_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (anything else is taken as a path)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(uri)


def phash_image(uri: str) -> int | None:
    """The 64-bit perceptual hash (``imagehash.phash``) of an image file, None when it cannot be read."""
    import imagehash  # scipy/PyWavelets behind it cost ~0.3 s to import; only the duplicate check needs them
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path(uri)) as image:
            return int(str(imagehash.phash(image)), 16)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        log.warning("sample: cannot read %s for the duplicate check (%s); it is not selected", uri, err)
        return None


def hamming(value: int, others: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint8]:
    """Bit distances between one 64-bit hash and each of ``others`` (shape (M,))."""
    return np.bitwise_count(others ^ np.uint64(value))


# --- selection -----------------------------------------------------------------------------------------------------


class Pool(NamedTuple):
    """Nominations, best first: one entry per (strategy, image) a strategy put forward."""

    image: npt.NDArray[np.int64]  # index into ImageRows.images
    strategy: npt.NDArray[np.int64]  # index into STRATEGIES
    score: _FloatArray


def nominate(
    scores: dict[str, _FloatArray],
    *,
    strategies: dict[str, SampleStrategy],
    eligible: npt.NDArray[np.bool_],
    order: _FloatArray,
) -> Pool:
    """Each strategy's best ``POOL_FACTOR x budget`` eligible images, merged and sorted by weighted score.

    Args:
        scores: strategy -> (I,) scores (NaN = not a candidate).
        strategies: strategy -> its config (weight, budget).
        eligible: (I,) False for images excluded up front (the ledger).
        order: (I,) seeded tie-break in [0, 1).

    Returns:
        The nominations, sorted by weight x score descending, then strategy order, then ``order``.
    """
    picked: list[tuple[npt.NDArray[np.int64], int, _FloatArray]] = []
    for name, score in scores.items():
        keep = np.flatnonzero(eligible & ~np.isnan(score))
        size = POOL_FACTOR * strategies[name].budget
        if len(keep) > size:
            # everything at or above the size-th best score, then the exact order on that short list
            cut = np.partition(-score[keep], size - 1)[size - 1]
            keep = keep[-score[keep] <= cut]
        keep = keep[np.lexsort((order[keep], -score[keep]))][:size]
        picked.append((keep, STRATEGIES.index(name), score[keep]))
    if not picked:
        return Pool(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    image = np.concatenate([p[0] for p in picked]).astype(np.int64)
    strategy = np.concatenate([np.full(len(p[0]), p[1], np.int64) for p in picked])
    score = np.concatenate([p[2] for p in picked])
    weight = np.array([strategies[STRATEGIES[s]].weight for s in strategy], dtype=np.float64)
    ranked = np.lexsort((order[image], strategy, -(weight * score)))
    return Pool(image[ranked], strategy[ranked], score[ranked])


@dataclass
class _Selection:
    """The greedy fill's state (mutable, internal)."""

    taken: set[str]
    rows: list[dict[str, Any]]
    used: Counter[str]
    per_day: Counter[dt.date]
    rejected: dict[str, str]  # sha -> exclusion reason
    hashes: npt.NDArray[np.uint64]  # ledger phashes, then the taken images' ones
    n_hashes: int


def select(
    pool: Pool,
    meta: dict[str, dict[str, Any]],
    *,
    rows: ImageRows,
    params: SampleParams,
    ledger_phash: npt.NDArray[np.uint64],
    phash: Callable[[str], int | None] = phash_image,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Greedy fill of the budget from the nominations (see the module docstring for the rules).

    Args:
        pool: nominations, best first (:func:`nominate`).
        meta: image_sha256 -> its log row (``image_id, image_uri, batch, date, model_name, model_version``).
        rows: the image rows the pool indexes.
        params: the ``sample`` section.
        ledger_phash: (M,) uint64 perceptual hashes of labeled images.
        phash: image URI -> 64-bit perceptual hash or None (unreadable); called only when the check is on.

    Returns:
        The manifest rows in rank order (without ``strategies``), and image_sha256 -> exclusion reason.
    """
    check = params.phash_distance
    state = _Selection(
        taken=set(),
        rows=[],
        used=Counter(),
        per_day=Counter(),
        rejected={},
        hashes=np.concatenate([ledger_phash, np.zeros(params.budget, np.uint64)]),
        n_hashes=len(ledger_phash),
    )
    shas = rows.images["image_sha256"]
    cap = params.max_per_day
    for index, strategy_index, score in zip(
        pool.image.tolist(), pool.strategy.tolist(), pool.score.tolist(), strict=True
    ):
        if len(state.rows) >= params.budget:
            break
        sha = shas[index]
        strategy = STRATEGIES[strategy_index]
        config = getattr(params.strategies, strategy)
        if sha in state.taken or sha in state.rejected or state.used[strategy] >= config.budget:
            continue
        row = meta[sha]
        if cap is not None and state.per_day[row["date"]] >= cap:
            state.rejected[sha] = "day_cap"
            continue
        value: int | None = None
        if check is not None:
            value = phash(row["image_uri"])
            if value is None:
                state.rejected[sha] = "unreadable_image"
                continue
            if state.n_hashes and hamming(value, state.hashes[: state.n_hashes]).min() <= check:
                state.rejected[sha] = "near_duplicate"
                continue
            state.hashes[state.n_hashes] = value
            state.n_hashes += 1
        state.taken.add(sha)
        state.used[strategy] += 1
        state.per_day[row["date"]] += 1
        state.rows.append(
            {
                **row,
                "image_sha256": sha,
                "strategy": strategy,
                "score": float(score),
                "rank": len(state.rows) + 1,
                "phash": None if value is None else f"{value:016x}",
            }
        )
    return state.rows, state.rejected


def image_meta(
    paths: Sequence[Path], *, model: ModelKey, images: pl.DataFrame
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The manifest fields of some images, fetched by position (``part``, ``row``) from the files they came from.

    Only ``image_id`` and ``image_uri`` are read (filtered on the model as :func:`read_parts` does, so positions
    agree), and only from the files holding one of the images.

    Args:
        paths: the files ``images["part"]`` indexes.
        model: whose rows were read.
        images: rows of :attr:`ImageRows.images` (``image_sha256, batch, date, part, row``).

    Returns:
        image_sha256 -> ``image_id, image_uri, batch, date, model_name, model_version``; for a picture logged more
        than once, its occurrence with the earliest (date, batch, image id).
    """
    keep = _model_filter(model)

    def fetch(group: pl.DataFrame) -> pl.DataFrame:
        read = pl.scan_parquet(paths[int(group["part"][0])]).filter(keep).select("image_id", "image_uri").collect()
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


def _model_filter(model: ModelKey) -> pl.Expr:
    keep = pl.col("model_name").eq(model.name) & pl.col("model_version").eq(model.version)
    return keep & (pl.col("model_alias").is_null() if model.alias is None else pl.col("model_alias").eq(model.alias))


def manifest_table(rows: list[dict[str, Any]], nominated_by: dict[str, list[str]]) -> pa.Table:
    """The manifest rows as a :data:`MANIFEST_SCHEMA` table (``strategies`` from ``nominated_by``)."""
    columns = {field.name: [row.get(field.name) for row in rows] for field in MANIFEST_SCHEMA}
    columns["strategies"] = [nominated_by[row["image_sha256"]] for row in rows]
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def _write_manifest(path: Path, table: pa.Table) -> Path:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return write_bytes_atomic(path, sink.getvalue().to_pybytes())


def _check_cycle(cycle: str) -> None:
    if not _SAFE_CYCLE.match(cycle):
        raise SampleError(f"cycle {cycle!r}: use letters, digits and . _ = - (it names the folder under samples/)")


# --- the stage -----------------------------------------------------------------------------------------------------


def _enabled(params: SampleParams) -> dict[str, SampleStrategy]:
    found = {name: getattr(params.strategies, name) for name in STRATEGIES}
    return {name: config for name, config in found.items() if config is not None and config.budget > 0}


def _score(name: str, config: SampleStrategy, rows: ImageRows, *, params: Params, cycle: str) -> pl.DataFrame:
    """One per-image strategy's (I,) scores for ``rows``, dispatched on its config type (not disagreement)."""
    seed = params.base.seed
    if isinstance(config, RandomStrategy):
        return score_random(rows, rate=config.rate, seed=seed, cycle=cycle)
    if isinstance(config, LowConfidenceStrategy):
        return score_low_confidence(rows, band=config.band)
    if isinstance(config, EntropyStrategy):
        return score_entropy(rows, min_score=config.min_score)
    if isinstance(config, MarginStrategy):
        return score_margin(rows, threshold=config.threshold, min_score=config.min_score)
    if isinstance(config, ClassBalancedStrategy):
        return score_class_balanced(rows, min_score=config.min_score)
    if isinstance(config, DriftStrategy):
        return score_drift(rows, flagged=drift_batches(params), rate=config.rate, seed=seed, cycle=cycle)
    raise TypeError(f"sample.strategies.{name}: no scorer for {type(config).__name__}")  # pragma: no cover, config


class _Others(NamedTuple):
    """What disagreement compares: the other models' files, and which champion files share their dates."""

    files: dict[ModelKey, list[Path]]
    champion_parts: list[int]  # indices into the champion's file list


def _other_models(
    parts: list[LogPart], champion_paths: list[Path], *, champion: ModelKey, config: DisagreementStrategy
) -> _Others:
    files: dict[ModelKey, list[Path]] = {}
    for part in parts:
        for key in part.models:
            if (key.name, key.version) != (champion.name, champion.version) and (
                config.aliases is None or key.alias in config.aliases
            ):
                files.setdefault(key, []).append(part.path)
    dates = {p.date for p in parts if any(p.path in paths for paths in files.values())}
    date_of = {p.path: p.date for p in parts}
    return _Others(files, [i for i, path in enumerate(champion_paths) if date_of[path] in dates])


def _disagreement(
    rows: ImageRows, part_rows: list[ImageRows], others: _Others, config: DisagreementStrategy
) -> _FloatArray:
    """:func:`score_disagreement` against every other model version of the window; the largest per image.

    The champion's side is its files on the dates the other versions logged (read with corners by the main read);
    their images are the ``rows`` images whose ``part`` is one of those files, in the same order.
    """
    score = np.full(len(rows), np.nan)
    if not others.champion_parts:
        return score
    subset = concat_rows([part_rows[i] for i in others.champion_parts], boxes=True)
    where = np.flatnonzero(rows.images["part"].is_in(others.champion_parts).to_numpy())
    for key in sorted(others.files, key=lambda k: (k.name, k.version, k.alias or "")):
        other = read_image_rows(others.files[key], model=key, boxes=True)
        found = score_disagreement(subset, other, iou=config.iou, min_score=config.min_score)["score"]
        score[where] = np.fmax(score[where], found.fill_null(np.nan).to_numpy())
    return score


def _why_nothing(params: Params, parts: list[LogPart], champion: ModelKey | None) -> str | None:
    sample = params.sample
    if sample.budget == 0:
        return "sample.budget is 0"
    if not _enabled(sample):
        return "every strategy is off (null or budget 0 under sample.strategies)"
    if not parts:
        return f"the prediction log {params.base.paths.predictions} has no files"
    if champion is None:
        first, last = parts[0].date, parts[-1].date
        return f"no rows logged under alias {sample.alias!r} in the window {first}..{last} (sample.alias)"
    return None


@dataclass(frozen=True)
class _Outcome:
    """What the selection produced (internal; :class:`SampleResult` is the public summary)."""

    selected: list[dict[str, Any]]
    rejected: dict[str, str]
    nominated_by: dict[str, list[str]]
    candidates: dict[str, int]
    in_ledger: int
    timings_s: dict[str, dict[str, float]]


def sample_images(params: Params, parts: list[LogPart], *, champion: ModelKey, cycle: str) -> _Outcome:
    """Score the champion's images of the window, nominate, and fill the budget (the module docstring's steps)."""
    sample = params.sample
    enabled = _enabled(sample)
    clock = _Clock()
    champion_paths = [p.path for p in parts if champion in p.models]
    disagreement = sample.strategies.disagreement if "disagreement" in enabled else None
    others = (
        None if disagreement is None else _other_models(parts, champion_paths, champion=champion, config=disagreement)
    )
    part_rows = read_parts(champion_paths, model=champion, boxes_for=others.champion_parts if others else ())
    rows = concat_rows(part_rows)
    ledger = read_ledger(params.base.paths.labels / LEDGER_FILE)
    excluded = rows.images["image_sha256"].is_in(ledger.sha256.implode()).to_numpy()
    clock.lap("read")
    scores: dict[str, _FloatArray] = {}
    for name, config in enabled.items():
        if disagreement is not None and others is not None and name == "disagreement":
            scores[name] = _disagreement(rows, part_rows, others, disagreement)
        else:
            frame = _score(name, config, rows, params=params, cycle=cycle)
            scores[name] = frame["score"].fill_null(np.nan).to_numpy().astype(np.float64, copy=False)
        clock.lap(name)
    del part_rows  # only disagreement needed the corners
    order = seeded_uniform(rows, seed=params.base.seed, cycle=cycle, salt="order")
    pool = nominate(scores, strategies=enabled, eligible=~excluded, order=order)
    nominations = pl.DataFrame({"image_sha256": rows.images["image_sha256"].gather(pool.image), "s": pool.strategy})
    nominated_by = {
        sha: [STRATEGIES[i] for i in sorted(set(found))]
        for sha, found in nominations.group_by("image_sha256").agg("s").iter_rows()
    }
    clock.lap("nominate")
    meta = image_meta(champion_paths, model=champion, images=rows.images[np.unique(pool.image)])
    clock.lap("meta")
    selected, rejected = select(pool, meta, rows=rows, params=sample, ledger_phash=ledger.phash)
    clock.lap("select")
    return _Outcome(
        selected=selected,
        rejected=rejected,
        nominated_by=nominated_by,
        candidates={name: int((~np.isnan(score) & ~excluded).sum()) for name, score in scores.items()},
        in_ledger=int(rows.images["image_sha256"].filter(pl.Series(excluded)).n_unique()),
        timings_s=clock.laps,
    )


class _Clock:
    """Wall and process CPU seconds per phase, for the report (CPU shows the cost on a busy machine)."""

    def __init__(self) -> None:
        self.laps: dict[str, dict[str, float]] = {}
        self._last = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.laps[name] = {"wall": round(now[0] - self._last[0], 4), "cpu": round(now[1] - self._last[1], 4)}
        self._last = now


def _shortfall(sample: SampleParams, selected: list[dict[str, Any]]) -> str | None:
    if len(selected) >= sample.budget:
        return None
    enabled = _enabled(sample)
    taken = Counter(row["strategy"] for row in selected)
    short = ", ".join(f"{name} {taken[name]}/{c.budget}" for name, c in enabled.items() if taken[name] < c.budget)
    total = sum(config.budget for config in enabled.values())
    if total < sample.budget:
        return f"{len(selected)} of {sample.budget}: the strategies' budgets add up to {total} ({short or 'all full'})"
    return f"{len(selected)} of {sample.budget}: too few eligible candidates for {short}"


def _warn_band_below_log_floor(params: Params) -> None:
    """Warn when ``low_confidence``'s band starts below ``predict.conf``.

    The predict stage logs only boxes at or above ``predict.conf``, so a lower band edge never sees a box: the
    band in effect starts at ``predict.conf``.
    """
    config = params.sample.strategies.low_confidence
    floor = params.predict.conf
    if config is not None and config.budget > 0 and config.band[0] < floor:
        log.warning(
            "sample.strategies.low_confidence.band starts at %s, below predict.conf %s: the prediction log holds "
            "no weaker boxes, so the band in effect is [%s, %s)",
            config.band[0],
            floor,
            floor,
            config.band[1],
        )


def run(params: Params, *, cycle: str) -> SampleResult:
    """Select this cycle's images to label and write the manifest and ``reports/sample.json``.

    Args:
        params: the whole configuration (``base`` and ``sample`` are read).
        cycle: cycle name, e.g. ``2026-11-16``; the manifest goes to ``<samples>/<cycle>/manifest.parquet``.

    Returns:
        The :class:`SampleResult` (also written, with the effective ``sample`` config, to the report).

    Raises:
        PredictionLogError: a log file of the window does not match the schema (the message names it).
        SampleError: an unsafe cycle name, an unusable ledger or ``monitor.json``.
    """
    _check_cycle(cycle)
    start = time.perf_counter()
    sample = params.sample
    paths = params.base.paths
    _warn_band_below_log_floor(params)
    parts = window_parts(paths.predictions, days=sample.window_days)
    champion = find_champion(parts, alias=sample.alias)
    reason = _why_nothing(params, parts, champion)
    if reason is None and champion is not None:
        outcome = sample_images(params, parts, champion=champion, cycle=cycle)
        reason = _shortfall(sample, outcome.selected)
    else:
        outcome = _Outcome([], {}, {}, {}, 0, {})
    selected = outcome.selected
    result = SampleResult(
        cycle=cycle,
        manifest=str(paths.samples / cycle / MANIFEST_FILE),
        selected=len(selected),
        budget=sample.budget,
        by_strategy={
            name: StrategyCount(
                candidates=outcome.candidates.get(name, 0),
                selected=sum(row["strategy"] == name for row in selected),
                budget=config.budget,
                weight=config.weight,
            )
            for name, config in _enabled(sample).items()
        },
        excluded={"ledger": outcome.in_ledger}
        | {r: sum(v == r for v in outcome.rejected.values()) for r in EXCLUSIONS[1:]},
        per_day={d.isoformat(): n for d, n in sorted(Counter(row["date"] for row in selected).items())},
        window=[d.isoformat() for d in sorted({p.date for p in parts})],
        champion=None if champion is None else f"{champion.name}/{champion.version}",
        reason=reason,
    )
    _write_manifest(Path(result.manifest), manifest_table(selected, outcome.nominated_by))
    write_json_atomic(
        paths.reports / "sample.json",
        asdict(result)
        | {
            "champion_alias": sample.alias,
            "seed": params.base.seed,
            "params": sample.model_dump(mode="json"),
            "timings_s": outcome.timings_s,
            "wall_s": round(time.perf_counter() - start, 3),
        },
    )
    log.info(
        "sample %s: %d of %d selected (%s); excluded %s%s",
        cycle,
        result.selected,
        result.budget,
        ", ".join(f"{k} {v.selected}" for k, v in result.by_strategy.items()),
        result.excluded,
        f"; {reason}" if reason else "",
    )
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.sample --params P --cycle C``."""
    from tasks.env import apply_env

    parser = stage_argparser("sample", __doc__)
    parser.add_argument("--cycle", required=True, help="cycle name: the manifest goes to <samples>/<cycle>/")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(load_params(args.params), cycle=args.cycle)
    print(json.dumps({"selected": result.selected, "manifest": result.manifest, "reason": result.reason}))


if __name__ == "__main__":
    main()
