"""Prediction rows from another serving stack: the input record, its checks, and how good ones become log rows.

Owner of the ingest input contract (``tasks/ingest.py`` reads files and HTTP bodies through it; the log itself stays
:mod:`tasks.contracts.prediction_log`'s). One input record is one image as a serving system reports it, with its
boxes nested (what an edge device or an inference server emits per request), in any accepted format:

* JSON Lines (``.jsonl`` / ``.ndjson``): one object per line; ``line`` in reasons is the file's line number.
* JSON (``.json``, and the HTTP body): an array of objects (or one object); ``line`` is the item's 1-based index.
* Parquet (``.parquet``): one row per image, ``detections`` a ``list<struct>`` column; ``line`` is the row number.

Fields (unknown ones are refused, so a typo never passes silently):

* required: ``image_id``, ``image_uri``, ``batch``, ``model_name``, ``model_version`` (non-empty strings);
  ``image_sha256`` (64 lowercase hex digits: SHA-256 of the image file bytes); ``ts`` (when the prediction was made:
  ISO 8601 with an offset, e.g. ``2026-12-01T10:00:00Z``, or a tz-aware timestamp); ``image_width``,
  ``image_height`` (integers > 0, >= 0 on an error record); ``latency_ms`` (number >= 0); ``detections`` (a list,
  ``[]`` for an image without boxes; absent or null on an error record).
* optional: ``model_alias`` (the alias the model was resolved through; the monitor and the sampler select on it);
  ``date`` (``YYYY-MM-DD``, the log's partition; default the UTC date of ``ts``); ``source`` (camera / line / site;
  default ``ingest.default_source``); ``error`` (null or ``unreadable``, ``decode``, ``inference``, ``timeout``: then
  no detections and no statistics); ``shadow`` (bool, default false); ``brightness``, ``contrast``, ``sharpness``,
  ``mean_r``, ``mean_g``, ``mean_b`` (numbers, all six or none; 0-255, contrast and sharpness >= 0);
  ``evidence_max`` (number in [0, 1]) and ``evidence_count`` (integer >= 1) together, or neither: the image's boxes
  scored below the serving stack's own threshold (the sampler's evidence; absent = none measured, logged as null
  and 0).

A detection is ``{class_id and/or class_name, confidence, x1, y1, x2, y2}`` and an optional ``margin`` (top-1
minus top-2 class score in [0, 1]; absent = null in the log): a known class (``class_id`` in
``[0, len(base.classes))``, ``class_name`` in ``base.classes``, the two agreeing when both are given), confidence in
[0, 1], pixel corners with ``x1 < x2``, ``y1 < y2`` inside the image (``ingest.box_tolerance_px`` of slack).

Duplicates: two records are the same prediction when they share ``(image_sha256, model_name, model_version,
shadow)`` (the key ``make doctor`` checks the log for; error records whose file could not be read at all also
``batch`` and ``image_id``). A second one in the input, or one already in the log, is refused with its reason.

Identity: :func:`ingest_id` hashes the records' content (canonical JSON, in input order), so the same rows give the
same id whatever the file name or format; the stage names the log part and the quarantine file after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.config import VisionloopError
from tasks.contracts import prediction_log
from tasks.contracts.prediction_schema import EMPTY_SHA256, ERROR_KINDS, STAT_COLUMNS
from tasks.core.image_stats import ImageStats
from tasks.io import json_lines, write_bytes_atomic

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
"""File suffix -> input format."""

TEXT_FIELDS = ("image_id", "image_uri", "batch", "model_name", "model_version")
REQUIRED = (*TEXT_FIELDS, "image_sha256", "ts", "image_width", "image_height", "latency_ms", "detections")
OPTIONAL = ("model_alias", "date", "source", "error", "shadow", *STAT_COLUMNS, "evidence_max", "evidence_count")
DETECTION_FIELDS = ("class_id", "class_name", "confidence", "x1", "y1", "x2", "y2", "margin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INT16_MAX = int(np.iinfo(np.int16).max)

Key = tuple[str, str, str, bool, str, str]
"""Duplicate key: image_sha256, model_name, model_version, shadow, and batch + image_id for unread error records."""


class IngestError(VisionloopError, ValueError):
    """An ingest input as a whole cannot be read: unknown or refused format, not JSON, not Parquet, wrong shape."""


@dataclass(frozen=True)
class Reason:
    """Why one input record is refused: one failed check on one field.

    Attributes:
        line: the record's line (JSON Lines), item (JSON) or row (Parquet) number, 1-based.
        field: the field, e.g. ``detections[1].confidence`` (``-`` for the record as a whole).
        check: ``json``, ``record``, ``missing``, ``unknown``, ``type``, ``range``, ``class``, ``box``,
            ``error_record``, ``stats``, ``duplicate_in_input`` or ``duplicate_in_log``.
        message: what is wrong, for a person.
    """

    line: int
    field: str
    check: str
    message: str


@dataclass(frozen=True)
class InputRow:
    """One record as read: ``value`` the parsed object (None when the line is not JSON: then ``text`` holds it)."""

    line: int
    value: Any
    text: str | None = None


@dataclass(frozen=True, eq=False)
class Record:
    """A record that passed every check, normalised: what :func:`to_table` turns into log rows."""

    line: int
    batch: str
    date: dt.date
    ts: dt.datetime
    model_name: str
    model_version: str
    model_alias: str | None
    shadow: bool
    detections: prediction_log.ImageDetections
    key: Key


# --------------------------------------------------------------------------------------------------- reading


def input_format(path: Path, accepted: Sequence[str]) -> str:
    """The format of ``path`` by its suffix, if ``accepted`` (``ingest.formats``) has it."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None or fmt not in accepted:
        known = ", ".join(f"{suffix} ({name})" for suffix, name in FORMATS.items() if name in accepted)
        raise IngestError(f"{path}: not an accepted ingest input; accepted suffixes: {known} (ingest.formats)")
    return fmt


def read_input(path: Path, fmt: str) -> list[InputRow]:
    """The records of an input file (see the module docstring for each format's layout)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: ingest input not found")
    if fmt == "parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise IngestError(f"{path}: not a readable Parquet file ({err})") from err
        return [InputRow(line=i, value=row) for i, row in enumerate(rows, start=1)]
    data = path.read_bytes()
    return parse_jsonl(data, what=str(path)) if fmt == "jsonl" else parse_json(data, what=str(path))


def parse_jsonl(data: bytes, *, what: str) -> list[InputRow]:
    """One record per non-blank line; a line that is not JSON becomes a record refused for it (``text`` set)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise IngestError(f"{what}: not UTF-8 text ({err})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(InputRow(line=number, value=json.loads(line)))
        except json.JSONDecodeError as err:
            rows.append(InputRow(line=number, value=None, text=f"{line[:200]} ({err.msg} at column {err.colno})"))
    return rows


def parse_json(data: bytes, *, what: str) -> list[InputRow]:
    """An array of records (or one record object); anything else refuses the whole input."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IngestError(f"{what}: not JSON ({err}); send an array of prediction records") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise IngestError(f"{what}: expected a JSON array of prediction records, got {type(value).__name__}")
    return [InputRow(line=i, value=item) for i, item in enumerate(value, start=1)]


def ingest_id(rows: Sequence[InputRow]) -> str:
    """16 hex digits of the SHA-256 of the records' canonical JSON, in order: same rows, same id, any format."""
    canonical = json.dumps(
        [row.value if row.text is None else {"unparsed": row.text} for row in rows],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Rules:
    """What a record is checked against: ``base.classes`` and the ``ingest`` section's values."""

    classes: tuple[str, ...]
    default_source: str
    tolerance_px: float


class _Problems:
    """Collects the reasons of one record."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.reasons: list[Reason] = []

    def add(self, name: str, check: str, message: str) -> None:
        self.reasons.append(Reason(self.line, name, check, message))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(row: dict[str, Any], name: str, problems: _Problems, *, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            problems.add(name, "missing", f"{name} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(name, "type", f"{name} must be a non-empty string, got {value!r}")
        return None
    return value


def _number(row: dict[str, Any], name: str, problems: _Problems, *, low: float, high: float = math.inf) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if not _is_number(value):
        problems.add(name, "type", f"{name} must be a finite number, got {value!r}")
        return None
    if not low <= value <= high:
        problems.add(name, "range", f"{name} {value} not in [{low:g}, {high:g}]")
        return None
    return float(value)


def _integer(row: dict[str, Any], name: str, problems: _Problems, *, low: int) -> int | None:
    value = row.get(name)
    if value is None:
        problems.add(name, "missing", f"{name} is required")
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        problems.add(name, "type", f"{name} must be an integer, got {value!r}")
        return None
    if value < low:
        problems.add(name, "range", f"{name} {value} must be >= {low}")
        return None
    return value


def _timestamp(value: Any, problems: _Problems) -> dt.datetime | None:
    if value is None:
        problems.add("ts", "missing", "ts is required (ISO 8601 with an offset, e.g. 2026-12-01T10:00:00Z)")
        return None
    ts = value
    if isinstance(value, str):
        try:
            ts = dt.datetime.fromisoformat(value)
        except ValueError:
            problems.add("ts", "type", f"ts {value!r} is not ISO 8601 (e.g. 2026-12-01T10:00:00Z)")
            return None
    if not isinstance(ts, dt.datetime):
        problems.add("ts", "type", f"ts must be an ISO 8601 string or a timestamp, got {value!r}")
        return None
    if ts.tzinfo is None or ts.utcoffset() is None:
        fix = "add an offset (Z or +01:00)" if isinstance(value, str) else "store it as a timestamp with tz='UTC'"
        problems.add("ts", "type", f"ts {value} has no timezone; {fix}")
        return None
    return ts.astimezone(dt.UTC)


def _date(value: Any, ts: dt.datetime | None, problems: _Problems) -> dt.date | None:
    if value is None:
        return ts.date() if ts is not None else None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    problems.add("date", "type", f"date {value!r} is not YYYY-MM-DD")
    return None


def _class(item: dict[str, Any], name: str, rules: Rules, problems: _Problems) -> int | None:
    class_id, class_name = item.get("class_id"), item.get("class_name")
    if class_id is None and class_name is None:
        problems.add(f"{name}.class_id", "missing", "a detection needs class_id or class_name")
        return None
    by_name = None
    if class_name is not None:
        if class_name not in rules.classes:
            problems.add(f"{name}.class_name", "class", f"class {class_name!r} not in classes {list(rules.classes)}")
            return None
        by_name = rules.classes.index(class_name)
    if class_id is None:
        return by_name
    if not isinstance(class_id, int) or isinstance(class_id, bool):
        problems.add(f"{name}.class_id", "type", f"class_id must be an integer, got {class_id!r}")
        return None
    if not 0 <= class_id < len(rules.classes):
        problems.add(f"{name}.class_id", "class", f"class {class_id} not in classes [0..{len(rules.classes) - 1}]")
        return None
    if by_name is not None and by_name != class_id:
        problems.add(f"{name}.class_name", "class", f"class_name {class_name!r} is class {by_name}, not {class_id}")
        return None
    return class_id


def _detection(
    item: Any, name: str, size: tuple[int, int], rules: Rules, problems: _Problems
) -> tuple[int, float, list[float], float] | None:
    """``(class, confidence, xyxy, margin)`` of one detection (margin NaN when not given), or None (its problems
    recorded)."""
    if not isinstance(item, dict):
        problems.add(name, "type", f"a detection must be an object, got {item!r}")
        return None
    before = len(problems.reasons)
    for key in sorted(set(item) - set(DETECTION_FIELDS)):
        problems.add(f"{name}.{key}", "unknown", f"unknown detection field {key!r} (known: {list(DETECTION_FIELDS)})")
    class_id = _class(item, name, rules, problems)
    confidence = _number(item, "confidence", _Renamed(problems, name), low=0.0, high=1.0)
    if item.get("confidence") is None:
        problems.add(f"{name}.confidence", "missing", "confidence is required")
    margin = _number(item, "margin", _Renamed(problems, name), low=0.0, high=1.0)
    corners = []
    for corner in ("x1", "y1", "x2", "y2"):
        value: Any = item.get(corner)
        if not _is_number(value):
            problems.add(f"{name}.{corner}", "missing" if value is None else "type", f"{corner} must be a number")
            value = math.nan
        corners.append(float(value))
    if len(problems.reasons) > before or class_id is None or confidence is None:
        return None
    x1, y1, x2, y2 = corners
    (width, height), tol = size, rules.tolerance_px
    if not (x1 < x2 and y1 < y2):
        problems.add(name, "box", f"box {corners} must have x1 < x2 and y1 < y2 (pixel corners)")
    elif min(x1, y1) < -tol or x2 > width + tol or y2 > height + tol:
        problems.add(name, "box", f"box {corners} is outside the {width}x{height} image")
    else:
        return class_id, confidence, corners, math.nan if margin is None else margin
    return None


class _Renamed(_Problems):
    """A view of ``problems`` that prefixes field names (a detection's fields are ``detections[i].<name>``)."""

    def __init__(self, problems: _Problems, prefix: str) -> None:
        super().__init__(problems.line)
        self.reasons = problems.reasons
        self.prefix = prefix

    def add(self, name: str, check: str, message: str) -> None:
        super().add(f"{self.prefix}.{name}", check, message)


def _stats(row: dict[str, Any], problems: _Problems) -> ImageStats | None:
    if all(row.get(name) is None for name in STAT_COLUMNS):
        return None
    highs = {"contrast": math.inf, "sharpness": math.inf}
    values = {name: _number(row, name, problems, low=0.0, high=highs.get(name, 255.0)) for name in STAT_COLUMNS}
    given = [name for name in STAT_COLUMNS if row.get(name) is not None]
    if given and len(given) != len(STAT_COLUMNS):
        missing = [name for name in STAT_COLUMNS if name not in given]
        problems.add(",".join(missing), "stats", f"statistics come all six or none; missing {missing}")
        return None
    if not given or any(v is None for v in values.values()):
        return None
    return ImageStats(**{k: float(v) for k, v in values.items() if v is not None})


def _evidence(row: dict[str, Any], problems: _Problems, *, error: Any) -> tuple[float | None, int]:
    """``(evidence_max, evidence_count)``: both given (count >= 1) or neither (None, 0); none on an error record."""
    highest, count = _number(row, "evidence_max", problems, low=0.0, high=1.0), row.get("evidence_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= _INT16_MAX):
        problems.add("evidence_count", "type", f"evidence_count must be an integer in [1, {_INT16_MAX}], got {count!r}")
    elif (count is None) != (row.get("evidence_max") is None):
        problems.add("evidence_count", "evidence", "evidence_max and evidence_count come together, or neither")
    elif count is not None and error is not None:
        problems.add("error", "error_record", f"an error record ({error}) carries no evidence")
    elif highest is not None and isinstance(count, int):
        return highest, count
    return None, 0


# long: one pass over a record's fields in contract order, each adding its reasons; split, it reads worse
def check_record(row: InputRow, rules: Rules) -> Record | list[Reason]:
    """Check one input record against the contract (module docstring).

    Returns:
        The normalised :class:`Record`, or every :class:`Reason` it fails (one per field and check).
    """
    problems = _Problems(row.line)
    value = row.value
    if row.text is not None:
        return [Reason(row.line, "-", "json", f"not JSON: {row.text}")]
    if not isinstance(value, dict):
        return [Reason(row.line, "-", "record", f"a record must be an object, got {type(value).__name__}")]
    for key in sorted(set(value) - set(REQUIRED) - set(OPTIONAL)):
        problems.add(key, "unknown", f"unknown field {key!r} (fields: {', '.join(REQUIRED + OPTIONAL)})")
    texts = {name: _text(value, name, problems) for name in TEXT_FIELDS}
    sha: Any = value.get("image_sha256")
    if sha is None:
        problems.add("image_sha256", "missing", "image_sha256 is required")
    elif not isinstance(sha, str) or not _SHA256.match(sha):
        problems.add("image_sha256", "type", f"image_sha256 {sha!r} is not 64 lowercase hex digits")
    ts = _timestamp(value.get("ts"), problems)
    date = _date(value.get("date"), ts, problems)
    alias = _text(value, "model_alias", problems, required=False)
    source = _text(value, "source", problems, required=False) or rules.default_source
    error = value.get("error")
    if error is not None and error not in ERROR_KINDS:
        problems.add("error", "range", f"error {error!r} is not null or one of {list(ERROR_KINDS)}")
    shadow = value.get("shadow")
    if shadow is not None and not isinstance(shadow, bool):
        problems.add("shadow", "type", f"shadow must be true or false, got {shadow!r}")
    smallest = 0 if error is not None else 1
    width = _integer(value, "image_width", problems, low=smallest)
    height = _integer(value, "image_height", problems, low=smallest)
    latency = _number(value, "latency_ms", problems, low=0.0)
    if value.get("latency_ms") is None:
        problems.add("latency_ms", "missing", "latency_ms is required (model time for the image, ms)")
    stats = _stats(value, problems)
    evidence = _evidence(value, problems, error=error)
    items = value.get("detections")
    if items is None and error is None:
        problems.add("detections", "missing", "detections is required ([] for an image with no boxes)")
    elif items is not None and not isinstance(items, list):
        problems.add("detections", "type", f"detections must be a list, got {type(items).__name__}")
        items = None
    items = items or []
    if error is not None and (items or stats is not None):
        problems.add("error", "error_record", f"an error record ({error}) carries no detections and no statistics")
    if len(items) > _INT16_MAX:
        problems.add("detections", "range", f"{len(items)} detections exceed the log's limit {_INT16_MAX}")
    boxes = []
    if width is not None and height is not None:
        for i, item in enumerate(items):
            found = _detection(item, f"detections[{i}]", (width, height), rules, problems)
            if found is not None:
                boxes.append(found)
    if problems.reasons:
        return problems.reasons
    assert ts is not None and date is not None and width is not None and height is not None and latency is not None
    detections = prediction_log.ImageDetections(
        image_id=texts["image_id"] or "",
        image_uri=texts["image_uri"] or "",
        image_sha256=sha,
        width=width,
        height=height,
        latency_ms=latency,
        boxes_xyxy=np.array([b[2] for b in boxes], dtype=np.float64).reshape(-1, 4),
        confidence=np.array([b[1] for b in boxes], dtype=np.float64),
        class_id=np.array([b[0] for b in boxes], dtype=np.int64),
        source=source,
        error=error,
        stats=stats,
        margin=np.array([b[3] for b in boxes], dtype=np.float64),
        evidence_max=evidence[0],
        evidence_count=evidence[1],
    )
    return Record(
        line=row.line,
        batch=texts["batch"] or "",
        date=date,
        ts=ts,
        model_name=texts["model_name"] or "",
        model_version=texts["model_version"] or "",
        model_alias=alias,
        shadow=bool(shadow),
        detections=detections,
        key=_key(
            detections, texts["model_name"] or "", texts["model_version"] or "", bool(shadow), texts["batch"] or ""
        ),
    )


def _key(d: prediction_log.ImageDetections, model_name: str, model_version: str, shadow: bool, batch: str) -> Key:
    """The duplicate key of a record (module docstring)."""
    unread = d.image_sha256 == EMPTY_SHA256
    return (d.image_sha256, model_name, model_version, shadow, batch if unread else "", d.image_id if unread else "")


# --------------------------------------------------------------------------------------------------- the log


def logged_keys(root: Path, hashes: Iterable[str], *, skip_file: str) -> set[Key]:
    """The duplicate keys of the log's rows whose ``image_sha256`` is among ``hashes`` (files named ``skip_file`` left
    out: an interrupted ingest of the same rows that is being completed).

    Raises:
        IngestError: a log file cannot be read (the message names it).
    """
    wanted = sorted(set(hashes))
    if not wanted or not Path(root).is_dir():
        return set()
    dataset = prediction_log.open_dataset(Path(root))
    columns = ["image_sha256", "model_name", "model_version", "shadow", "batch", "image_id"]
    keys: set[Key] = set()
    for fragment in dataset.get_fragments():
        if Path(fragment.path).name == skip_file or not fragment.path.endswith(prediction_log.PART_SUFFIX):
            continue
        try:
            table = fragment.to_table(
                schema=dataset.schema, columns=columns, filter=pc.field("image_sha256").isin(wanted)
            )
        except (pa.ArrowException, OSError) as err:
            raise IngestError(f"{fragment.path}: prediction log file not readable ({err}); run make doctor") from err
        for sha, name, version, shadow, batch, image in zip(*(table[c].to_pylist() for c in columns), strict=True):
            unread = sha == EMPTY_SHA256
            keys.add((sha, name, version, bool(shadow), batch if unread else "", image if unread else ""))
    return keys


def to_table(records: Sequence[Record], *, classes: Sequence[str]) -> pa.Table:
    """Log rows of ``records`` (:data:`prediction_log.SCHEMA`), built by the log's own writer, in input order per
    (batch, date, model, alias, shadow) group; each image's ``ts`` is its own."""
    groups: dict[tuple[Any, ...], list[Record]] = {}
    for record in records:
        group = (record.batch, record.date, record.model_name, record.model_version, record.model_alias, record.shadow)
        groups.setdefault(group, []).append(record)
    tables = []
    for (batch, date, name, version, alias, shadow), members in groups.items():
        table = prediction_log.rows_to_table(
            [r.detections for r in members],
            batch=batch,
            date=date,
            model_name=name,
            model_version=version,
            model_alias=alias,
            class_names=list(classes),
            ts=members[0].ts,
            shadow=shadow,
        )
        rows = [max(r.detections.n_detections, 1) for r in members]
        ts = pa.array([r.ts for r in members], pa.timestamp("us", tz="UTC")).take(np.repeat(np.arange(len(rows)), rows))
        index = table.schema.get_field_index("ts")
        tables.append(table.set_column(index, table.schema.field(index), ts))
    return pa.concat_tables(tables) if tables else prediction_log.empty_table()


# --------------------------------------------------------------------------------------------------- quarantine


def write_quarantine(folder: Path, name: str, refused: Sequence[tuple[InputRow, list[Reason]]]) -> Path | None:
    """Write the refused records and their reasons to ``<folder>/<name>.jsonl`` atomically (None: none refused).

    One JSON line per record: ``line``, ``reasons`` (``field``, ``check``, ``message``), and the record as received
    (``row``; the text of a line that was not JSON). Same input, same file: a re-run replaces it with itself.
    """
    if not refused:
        return None
    lines = [
        {
            "line": row.line,
            "reasons": [{"field": r.field, "check": r.check, "message": r.message} for r in reasons],
            "row": row.text if row.text is not None else json.loads(json.dumps(row.value, default=str)),
        }
        for row, reasons in refused
    ]
    return write_bytes_atomic(Path(folder) / f"{name}.jsonl", json_lines(lines))
