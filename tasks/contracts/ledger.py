"""The label ledger ``<base.paths.labels>/ledger.parquet``: one row per image ever queued for labeling.

Owner of the file: its schema (:data:`LEDGER_SCHEMA`), its row type (:class:`LedgerRow`), the one writer
(:func:`write_ledger`, used by the label stage only) and the readers each consumer needs:

- :func:`read_ledger`: every row, keyed by ``image_sha256`` (the label stage; strict: every column present);
- :func:`read_ledger_hashes`: the hashes the sample stage excludes and the perceptual hashes of its duplicate check
  (only ``image_sha256`` and ``status`` required: older ledgers still read);
- :func:`read_ledger_batches`: ``{image_sha256: batch}`` for the merge stage (lenient: a ledger without those
  columns is warned about and read as empty, batches then come from file names).

The file is replaced atomically; a missing file is an empty ledger for every reader.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Params, VisionloopError
from tasks.core.phash import from_hex
from tasks.io import write_bytes_atomic

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.parquet"
QUEUED, LABELED, SKIPPED = "queued", "labeled", "skipped"
"""The values of ``status``."""

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("cycle", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # queued | labeled | skipped
        pa.field("backend", pa.string(), nullable=False),  # labelstudio | files
        pa.field("project_id", pa.int64(), nullable=True),
        pa.field("task_id", pa.int64(), nullable=True),
        pa.field("annotation_id", pa.int64(), nullable=True),
        pa.field("annotation_updated_at", pa.timestamp("us", tz="UTC"), nullable=True),
        pa.field("task_updated_at", pa.timestamp("us", tz="UTC"), nullable=True),  # server clock: collect watermark
        pa.field("n_boxes", pa.int32(), nullable=True),
        pa.field("phash", pa.string(), nullable=True),  # str(imagehash.phash(image)): 16 hex digits
        pa.field("queued_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
"""Arrow schema of ``<base.paths.labels>/ledger.parquet``; one row per image, keyed by ``image_sha256``."""


class LedgerRow(TypedDict):
    """One ledger row, as :func:`read_ledger` returns it and :func:`write_ledger` takes it (see the schema)."""

    image_sha256: str
    image_id: str
    image_uri: str
    batch: str
    cycle: str
    status: str
    backend: str
    project_id: int | None
    task_id: int | None
    annotation_id: int | None
    annotation_updated_at: dt.datetime | None
    task_updated_at: dt.datetime | None
    n_boxes: int | None
    phash: str | None
    queued_at: dt.datetime
    updated_at: dt.datetime


class LedgerError(VisionloopError, ValueError):
    """The ledger file is unreadable or lacks columns; the message names the file."""


@dataclass(frozen=True)
class LedgerHashes:
    """What the label stage already has (the sample stage's view of the ledger).

    Attributes:
        sha256: the unique ``image_sha256`` values, in file order.
        phash: ``(M, 8)`` uint8, the non-null perceptual hashes packed (:func:`tasks.core.phash.from_hex`).
    """

    sha256: pl.Series
    phash: npt.NDArray[np.uint8]


def ledger_path(params: Params) -> Path:
    """``<base.paths.labels>/ledger.parquet``."""
    return params.base.paths.labels / LEDGER_FILE


def read_ledger(path: Path, *, error: type[Exception] = LedgerError) -> dict[str, LedgerRow]:
    """Read every row into ``{image_sha256: row}`` (empty when the file does not exist yet).

    Raises:
        error: the file's columns do not match :data:`LEDGER_SCHEMA` (names the missing ones).
    """
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    missing = [f.name for f in LEDGER_SCHEMA if f.name not in table.column_names]
    if missing:
        raise error(f"{path}: ledger lacks column(s) {missing}; it was not written by the label stage")
    rows = table.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA).to_pylist()
    return {r["image_sha256"]: cast(LedgerRow, r) for r in rows}


def write_ledger(path: Path, rows: Mapping[str, LedgerRow]) -> None:
    """Write the ledger atomically (temp file + rename), rows sorted by cycle, queue time and image id."""
    ordered = sorted(rows.values(), key=lambda r: (r["cycle"], r["queued_at"], r["image_id"]))
    table = pa.Table.from_pylist(cast(list[dict[str, object]], ordered), schema=LEDGER_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes_atomic(path, buffer.getvalue())


def read_ledger_hashes(path: Path, *, error: type[Exception] = LedgerError) -> LedgerHashes:
    """Read the ledger's hashes (and perceptual hashes when it has a ``phash`` column).

    Args:
        path: ``<base.paths.labels>/ledger.parquet``; missing = empty ledger.
        error: the exception to raise (a stage passes its own :class:`~tasks.config.VisionloopError`).

    Returns:
        The unique ``image_sha256`` values and the ledger's non-null ``phash`` values, packed.

    Raises:
        error: unreadable, or without string columns ``image_sha256`` and ``status``, or a ``phash`` that is
            not a 64-bit pHash in hex (the message names the file).
    """
    import polars as pl  # only the sample stage reads the ledger this way

    if not path.exists():
        return LedgerHashes(pl.Series("image_sha256", [], dtype=pl.String), from_hex([]))
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise error(f"{path}: label ledger is not a readable Parquet file ({err})") from err
    problems = [
        f"column {name} missing or not a string (found {schema.field(name).type if name in schema.names else None})"
        for name in ("image_sha256", "status")
        if name not in schema.names or not pa.types.is_string(schema.field(name).type)
    ]
    if problems:
        raise error(f"{path}: label ledger: " + "; ".join(problems))
    columns = ["image_sha256"] + (["phash"] if "phash" in schema.names else [])
    frame = pl.read_parquet(path, columns=columns)
    phash = from_hex([])
    if "phash" in columns:
        try:
            phash = from_hex(frame["phash"].cast(pl.String).drop_nulls().to_list())
        except ValueError as err:
            raise error(f"{path}: {err}") from None
    return LedgerHashes(frame["image_sha256"].drop_nulls().unique(maintain_order=True), phash)


def read_ledger_batches(labels_root: Path) -> dict[str, str]:
    """``{image sha256: production batch}`` from ``<labels_root>/ledger.parquet`` (empty when absent).

    A ledger without ``image_sha256``/``batch`` columns is warned about and read as empty (the merge stage then
    takes batches from file names).
    """
    path = labels_root / LEDGER_FILE
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path, columns=["image_sha256", "batch"])
    except (KeyError, ValueError, pa.ArrowException) as exc:
        log.warning("%s: no image_sha256/batch columns (%s); batches come from file names", path, exc)
        return {}
    return dict(zip(table["image_sha256"].to_pylist(), table["batch"].to_pylist(), strict=True))


def read_cycle_starts(labels_root: Path) -> dict[str, dt.datetime]:
    """``{cycle: first queued_at}`` from ``<labels_root>/ledger.parquet``: when each cycle started (empty when absent).

    The merge stage orders cycles by it (a cycle's age), so user-named cycles (``spring``, ``c10``) age correctly. A
    ledger without ``cycle``/``queued_at`` columns is warned about and read as empty (names order the cycles then).
    """
    path = labels_root / LEDGER_FILE
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path, columns=["cycle", "queued_at"])
    except (KeyError, ValueError, pa.ArrowException) as exc:
        log.warning("%s: no cycle/queued_at columns (%s); cycles are ordered by name", path, exc)
        return {}
    starts: dict[str, dt.datetime] = {}
    for cycle, queued in zip(table["cycle"].to_pylist(), table["queued_at"].to_pylist(), strict=True):
        if cycle is not None and queued is not None:
            starts[cycle] = min(starts.get(cycle, queued), queued)
    return starts
