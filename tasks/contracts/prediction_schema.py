"""The prediction log's columns, their three versions, and the upgrade of an older table to the current schema.

:mod:`tasks.contracts.prediction_log` owns the log's files (layout, atomic writes, validated reads) and re-exports
everything here; this module holds what every reader needs to agree on: :data:`SCHEMA`, :func:`upgrade`, and the
schema checks.

Versions: version 1 is the first 24 columns below; version 2 (:data:`V2_COLUMNS`) adds the image's ``source``, the
``error`` kind of an image that could not be predicted, its input statistics (:mod:`tasks.core.image_stats`) and
the ``shadow`` flag; version 3 (:data:`V3_COLUMNS`) adds what the sampler needs beyond the logged boxes: each box's
class ``margin`` and the image's sub-threshold evidence (``evidence_max``, ``evidence_count``). Older files still
read: a file whose columns are exactly version 1's or version 2's (:data:`OLD_SCHEMAS`) is upgraded on read
(``source`` = ``"default"``, ``shadow`` = false, ``evidence_count`` = 0, the rest null); any other missing, extra
or mistyped column is an error.

Schema (:data:`SCHEMA`):

| column | type | nullable | meaning |
|---|---|---|---|
| `image_id` | string | no | image identifier (the file stem), unique within the batch |
| `image_uri` | string | no | file URI or path of the image as it was read |
| `image_sha256` | string | no | lowercase hex SHA-256 of the image file bytes (error rows: see below) |
| `batch` | string | no | production batch name |
| `date` | date32 | no | the batch's date; also the partition key (`date=YYYY-MM-DD` folder) |
| `ts` | timestamp[us, UTC] | no | when the prediction was made |
| `model_name` | string | no | registered model name |
| `model_version` | string | no | registered model version |
| `model_alias` | string | yes | registry alias (or version number) the model was resolved through, e.g. `champion` |
| `class_id` | int16 | yes | predicted class index into `base.classes`; null on a zero-detection or error row |
| `class_name` | string | yes | name of `class_id`; null on a zero-detection or error row |
| `confidence` | float32 | yes | detection score in [0, 1]; null on a zero-detection or error row |
| `x1`, `y1`, `x2`, `y2` | float32 | yes | box corners (top-left, bottom-right) in pixels of the original image |
| `x1n`, `y1n`, `x2n`, `y2n` | float32 | yes | the same corners divided by (width, height), clipped to [0, 1] |
| `image_width`, `image_height` | int32 | no | original image size in pixels (error rows: see below) |
| `latency_ms` | float32 | no | model latency for the image in ms (repeated on each of its rows; error rows: below) |
| `n_detections` | int16 | no | number of boxes for the image (0 on its single null row, and on an error row) |
| `source` | string | no | camera / line / site of the image (its batch's `sources.csv`); `default` if unknown (v2) |
| `error` | string | yes | null, or why the image has no prediction (:data:`ERROR_KINDS`; v2) |
| `brightness` | float32 | yes | mean luma `0.299 R + 0.587 G + 0.114 B`, 0-255; null on an error row (v2) |
| `contrast` | float32 | yes | standard deviation of the luma (v2) |
| `sharpness` | float32 | yes | variance of the 3x3 Laplacian of the luma (v2) |
| `mean_r`, `mean_g`, `mean_b` | float32 | yes | channel means, 0-255 (v2) |
| `shadow` | bool | no | true on rows a version logged in shadow beside the champion (v2; see below) |
| `margin` | float32 | yes | the box's top-1 minus top-2 class score (raw head); null otherwise: see below (v3) |
| `evidence_max` | float32 | yes | highest sub-threshold score of the image (see below); null when none (v3) |
| `evidence_count` | int16 | no | number of the image's sub-threshold boxes (see below); 0 when none (v3) |

Error rows: an image that could not be read (``unreadable``: gone, no permission), decoded (``decode``), or whose
model call raised (``inference``) or ran past ``predict.timeout_s`` (``timeout``) has exactly one row: ``error``
set, ``n_detections`` 0, box/class/confidence and statistics columns null. ``image_sha256`` is the hash of the bytes
that were read (:data:`EMPTY_SHA256` when none could be); ``image_width``/``image_height`` are the decoded size for
``inference``/``timeout`` and 0 for ``unreadable``/``decode``; ``latency_ms`` is the chunk's model time until it
failed divided among its images (``inference``/``timeout``) and 0 for images that never reached the model.

Sampler evidence (v3): ``margin`` is null on a zero-detection or error row, for a model whose head has no class
vector (NMS-free / end-to-end), for a one-class model (no second class), and in ingested rows that do not give it.
The sub-threshold boxes are the ``predict.max_det`` strongest the decode finds in ``[predict.evidence_conf,
predict.conf)``, after one class-aware NMS with the detections (a weaker duplicate of a detected box is
suppressed; :mod:`tasks.runtimes.detectors`); they are not rows, only summarised per image: ``evidence_max``
and ``evidence_count`` are repeated on each of the image's rows (null and 0 when there is none, when
``predict.evidence_conf`` is null, and on an error row).

Shadow rows: a version run in shadow on a share of the images (``predict.shadow``) logs them in its own part
(``batch=<b>__model=<name>-v<n>__shadow``) with ``shadow`` true and ``model_alias`` the shadow alias. They never
count as the version having predicted the batch (``prediction_log.logged_batches`` leaves them out), so once that
version is the champion it predicts every batch in full.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import VisionloopError
from tasks.core.image_stats import STAT_NAMES

V1_FIELDS = (
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("batch", pa.string(), nullable=False),
    pa.field("date", pa.date32(), nullable=False),
    pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("model_name", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("model_alias", pa.string(), nullable=True),
    pa.field("class_id", pa.int16(), nullable=True),
    pa.field("class_name", pa.string(), nullable=True),
    pa.field("confidence", pa.float32(), nullable=True),
    pa.field("x1", pa.float32(), nullable=True),
    pa.field("y1", pa.float32(), nullable=True),
    pa.field("x2", pa.float32(), nullable=True),
    pa.field("y2", pa.float32(), nullable=True),
    pa.field("x1n", pa.float32(), nullable=True),
    pa.field("y1n", pa.float32(), nullable=True),
    pa.field("x2n", pa.float32(), nullable=True),
    pa.field("y2n", pa.float32(), nullable=True),
    pa.field("image_width", pa.int32(), nullable=False),
    pa.field("image_height", pa.int32(), nullable=False),
    pa.field("latency_ms", pa.float32(), nullable=False),
    pa.field("n_detections", pa.int16(), nullable=False),
)
V2_FIELDS = (
    pa.field("source", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=True),
    *(pa.field(name, pa.float32(), nullable=True) for name in STAT_NAMES),
    pa.field("shadow", pa.bool_(), nullable=False),
)
V3_FIELDS = (
    pa.field("margin", pa.float32(), nullable=True),
    pa.field("evidence_max", pa.float32(), nullable=True),
    pa.field("evidence_count", pa.int16(), nullable=False),
)
SCHEMA = pa.schema([*V1_FIELDS, *V2_FIELDS, *V3_FIELDS])
"""Arrow schema of every prediction log file written now (version 3; see the field table above)."""

V1_SCHEMA = pa.schema(V1_FIELDS)
"""The schema of files written before version 2 (still read: :func:`upgrade`)."""

V2_SCHEMA = pa.schema([*V1_FIELDS, *V2_FIELDS])
"""The schema of files written before version 3 (still read: :func:`upgrade`)."""

OLD_SCHEMAS = (V1_SCHEMA, V2_SCHEMA)
"""The older versions every reader accepts and upgrades, oldest first."""

V2_COLUMNS: tuple[str, ...] = tuple(field.name for field in V2_FIELDS)
"""The columns version 2 added, in schema order."""

V3_COLUMNS: tuple[str, ...] = tuple(field.name for field in V3_FIELDS)
"""The columns version 3 added, in schema order."""

OLD_MISSING: tuple[frozenset[str], ...] = (frozenset(V2_COLUMNS + V3_COLUMNS), frozenset(V3_COLUMNS))
"""The column sets a file of each older version lacks (version 1, version 2): a file missing exactly one is old."""

STAT_COLUMNS: tuple[str, ...] = STAT_NAMES
"""The input statistics columns (:class:`tasks.core.image_stats.ImageStats` field names)."""

ERROR_KINDS = ("unreadable", "decode", "inference", "timeout")
"""Values of the ``error`` column besides null."""

DEFAULT_SOURCE = "default"
"""The ``source`` of an image its batch names no source for (and of every row of a version-1 file)."""

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
"""The ``image_sha256`` of an error row whose file could not be read at all."""


class PredictionLogError(VisionloopError, ValueError):
    """A prediction log table, file or folder does not match the contract of this module."""


def is_v1(schema: pa.Schema) -> bool:
    """True when ``schema`` has exactly the version-1 column names (any order; types are checked elsewhere)."""
    return sorted(schema.names) == sorted(V1_SCHEMA.names)


def old_schema(schema: pa.Schema) -> pa.Schema | None:
    """The older version (:data:`OLD_SCHEMAS`) whose column names ``schema`` has exactly (any order), else None."""
    return next((old for old in OLD_SCHEMAS if sorted(schema.names) == sorted(old.names)), None)


def is_old(schema: pa.Schema) -> bool:
    """True when ``schema`` has exactly the column names of an older version (1 or 2): readers upgrade it."""
    return old_schema(schema) is not None


def schema_problems(schema: pa.Schema, *, v1_ok: bool = True) -> list[str]:
    """Every way ``schema`` differs from :data:`SCHEMA`.

    Args:
        schema: the schema of a file or table.
        v1_ok: compare a schema with exactly the column names of an older version with that version's schema
            instead (:data:`OLD_SCHEMAS`: readers accept old files; writers write the current version only).

    Returns:
        One line per missing, mistyped, unexpected or repeated column; empty when it matches.
    """
    expected = (old_schema(schema) if v1_ok else None) or SCHEMA
    problems = []
    for field in expected:
        index = schema.get_field_index(field.name)
        if index < 0:
            problems.append(f"missing column {field.name}")
        elif not schema.field(index).type.equals(field.type):
            problems.append(f"column {field.name} has type {schema.field(index).type}, expected {field.type}")
    for name in schema.names:
        if expected.get_field_index(name) < 0:
            problems.append(f"unexpected column {name}")
    if len(set(schema.names)) != len(schema.names):
        problems.append(f"duplicate column names in {schema.names}")
    return problems


def null_problems(table: pa.Table) -> list[str]:
    """Not-null columns of :data:`SCHEMA` present in ``table`` that hold nulls, one line each."""
    return [
        f"column {field.name} is not nullable but has {table[field.name].null_count} null(s)"
        for field in SCHEMA
        if not field.nullable and field.name in table.column_names and table[field.name].null_count
    ]


def format_problems(what: object, problems: list[str]) -> str:
    """``<what>: does not match the prediction log schema (N problem(s))`` and one indented line per problem."""
    lines = [f"{what}: does not match the prediction log schema ({len(problems)} problem(s))"]
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines)


def upgrade(table: pa.Table, *, check_nulls: bool = True) -> pa.Table:
    """Bring a version-1, -2 or -3 table to :data:`SCHEMA` (inputs are not modified).

    Missing version-2 and -3 columns are added: ``source`` = :data:`DEFAULT_SOURCE`, ``shadow`` = false,
    ``evidence_count`` = 0, the others null. Nulls in those three (what
    :func:`tasks.contracts.prediction_log.open_dataset` yields on an older file) get the same defaults.

    Args:
        table: rows with the columns of one version (any order; a not-null column may be declared nullable as
            long as it holds no nulls).
        check_nulls: refuse nulls in a not-null column; False leaves them for the caller's own checks (the
            validate stage's expectations report them row by row).

    Returns:
        The rows with :data:`SCHEMA`, in :data:`SCHEMA` column order (``check_nulls`` False: every field nullable).

    Raises:
        PredictionLogError: any other missing, extra or mistyped column, or (``check_nulls``) nulls in a not-null
            column; every problem is listed.
    """
    problems = schema_problems(table.schema)
    if problems:
        raise PredictionLogError(format_problems("table to upgrade", problems))
    n = table.num_rows
    fills = {
        "source": pa.scalar(DEFAULT_SOURCE, pa.string()),
        "shadow": pa.scalar(False, pa.bool_()),
        "evidence_count": pa.scalar(0, pa.int16()),
    }
    for field in (*V2_FIELDS, *V3_FIELDS):
        if field.name not in table.column_names:
            fill = fills.get(field.name)
            column = pa.nulls(n, field.type) if fill is None else pa.repeat(fill, n)
            table = table.append_column(pa.field(field.name, field.type), column)
        elif field.name in fills and table[field.name].null_count:
            column = pc.fill_null(table[field.name], fills[field.name])
            table = table.set_column(table.schema.get_field_index(field.name), field, column)
    if not check_nulls:  # every field declared nullable, so the cast keeps the nulls for the caller
        return table.select(SCHEMA.names).cast(pa.schema([field.with_nullable(True) for field in SCHEMA]))
    problems = null_problems(table)
    if problems:
        raise PredictionLogError(format_problems("table to upgrade", problems))
    return table.select(SCHEMA.names).cast(SCHEMA)
