"""The validate stage's expectations as data, and the reading of GX results back into reasons.

:data:`EXPECTATIONS` is the table of every check: its suite, its name (``meta.check``, the word used in reasons and
reports), the rule a person reads, the GX expectation class and its arguments. Values that come from params are
written ``"$name"`` and filled in from :func:`expectation_values`; a spec with ``columns`` expands into one
expectation per column (``{column}`` in strings is replaced). :func:`build_suites` turns the table into GX objects
(GX is imported there only: it costs seconds). The rest is pure: :func:`failed_rows` flattens a suite result,
:func:`collect_reasons` and :func:`log_problems` say what is wrong in words.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from tasks.config import Params, VisionloopError
from tasks.contracts import prediction_log
from tasks.contracts.quarantine import Reason
from tasks.contracts.validation_frames import ABSENT
from tasks.contracts.yolo_labels import COORD_TOL

if TYPE_CHECKING:  # GX costs 3-4 s to import: only inside the functions that run it
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.expectations.expectation import Expectation

LABELS, IMAGES, LOG_SCHEMA, LOG_ROWS = "labels", "images", "prediction_log_schema", "prediction_log_rows"
INDEX_COLUMNS = {LABELS: ["image", "line"], IMAGES: ["image"], LOG_SCHEMA: ["file", "column"], LOG_ROWS: ["file"]}
_CORNERS = ("x1n", "y1n", "x2n", "y2n")


class ExpectationError(VisionloopError, RuntimeError):
    """GX could not evaluate an expectation, or a failure names no row."""


@dataclass(frozen=True)
class Spec:
    """One row of :data:`EXPECTATIONS`.

    Attributes:
        suite: the suite (frame) it runs on.
        check: ``meta.check``: the reason's name.
        rule: the rule in words (``meta.rule``); ``{column}`` and ``{<value name>}`` are filled in.
        expectation: the GX expectation class name.
        kwargs: its arguments; ``"$name"`` takes a value from :func:`expectation_values`, other strings get
            ``{column}`` filled in.
        columns: one expectation per column (passed as ``column`` unless ``kwargs`` names it); empty: one.
        boxes_only: only rows with ``kind == "box"`` (the label rows that parsed).
        error_rows: prediction log rows only: ``False`` = only rows with a prediction (``error`` null), ``True`` =
            only error rows, ``None`` = every row.
    """

    suite: str
    check: str
    rule: str
    expectation: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    boxes_only: bool = False
    error_rows: bool | None = None


_BETWEEN, _IN_SET = "ExpectColumnValuesToBeBetween", "ExpectColumnValuesToBeInSet"
_NULL, _NOT_NULL = "ExpectColumnValuesToBeNull", "ExpectColumnValuesToNotBeNull"
_PAIR_EQUAL, _UNIQUE = "ExpectColumnPairValuesToBeEqual", "ExpectCompoundColumnsToBeUnique"

EXPECTATIONS: tuple[Spec, ...] = (
    # labels: one row per box (plus one for a label file without boxes)
    Spec(LABELS, "parse", "a line is 'class cx cy w h'", _NULL, {"column": "parse_error"}),
    Spec(LABELS, "not_null", "{column} is a number", _NOT_NULL, columns=("class_id", "cx", "cy", "w", "h"),
         boxes_only=True),
    Spec(LABELS, "class_in_set", "class in [0..{last_class}] (base.classes)", _IN_SET,
         {"column": "class_id", "value_set": "$classes"}),
    Spec(LABELS, "inside_image", "box corners within [0, 1]", _BETWEEN,
         {"min_value": "$coord_min", "max_value": "$coord_max"}, columns=_CORNERS),
    Spec(LABELS, "min_size", "box {column} > validate.min_box_px = {min_box_px} px", _BETWEEN,
         {"min_value": "$min_box_px", "strict_min": True}, columns=("w_px", "h_px")),
    Spec(LABELS, "unique_id", "(image_id, box) identifies one box", _UNIQUE, {"column_list": ["image_id", "box"]}),
    Spec(LABELS, "boxes_per_image", "boxes per image in validate.boxes_per_image {boxes_per_image}", _BETWEEN,
         {"column": "n_boxes", "min_value": "$boxes_min", "max_value": "$boxes_max"}),
    # images: one row per image
    Spec(IMAGES, "readable", "the image decodes fully", _NULL, {"column": "decode_error"}),
    Spec(IMAGES, "has_label", "the image has a label file", _NOT_NULL, {"column": "label"}),
    Spec(IMAGES, "declared_size", "{column} as the manifest declares", _PAIR_EQUAL,
         {"column_A": "{column}", "column_B": "declared_{column}", "ignore_row_if": "either_value_is_missing"},
         columns=("width", "height")),
    Spec(IMAGES, "leak_exact", "not a byte copy (SHA-256) of a golden/holdout image", _NULL,
         {"column": "exact_test"}),
    Spec(IMAGES, "leak_near",
         "perceptual hash farther than validate.leak_max_distance = {leak_max_distance} "
         "from every golden/holdout image",
         _BETWEEN, {"column": "phash_distance", "min_value": "$leak_max_distance", "strict_min": True}),
    # the prediction log's schema: one row per (file, column)
    Spec(LOG_SCHEMA, "log_readable", "a readable Parquet file", _NULL, {"column": "read_error"}),
    Spec(LOG_SCHEMA, "log_schema", "each column present with its SCHEMA type, no other column", _PAIR_EQUAL,
         {"column_A": "actual_type", "column_B": "expected_type"}),
    Spec(LOG_SCHEMA, "log_schema", "no repeated column", _UNIQUE, {"column_list": ["file", "column"]}),
    # the prediction log's first rows
    Spec(LOG_ROWS, "log_not_null", "{column} not null", _NOT_NULL, columns=("$not_nullable",)),
    Spec(LOG_ROWS, "log_values", "class_id in base.classes", _IN_SET, {"column": "class_id", "value_set": "$classes"}),
    Spec(LOG_ROWS, "log_values", "confidence in [0, 1]", _BETWEEN,
         {"column": "confidence", "min_value": 0, "max_value": 1}),
    Spec(LOG_ROWS, "log_values", "{column} in [0, 1]", _BETWEEN, {"min_value": 0, "max_value": 1}, columns=_CORNERS),
    Spec(LOG_ROWS, "log_values", "{column} >= 1", _BETWEEN, {"min_value": 1},
         columns=("image_width", "image_height"), error_rows=False),
    Spec(LOG_ROWS, "log_values", "n_detections >= 0", _BETWEEN, {"column": "n_detections", "min_value": 0}),
    Spec(LOG_ROWS, "log_values", "error null or one of {error_kinds}", _IN_SET,
         {"column": "error", "value_set": "$error_kinds"}),
    Spec(LOG_ROWS, "log_values", "{column} in [0, 255]", _BETWEEN, {"min_value": 0, "max_value": 255},
         columns=tuple(c for c in prediction_log.STAT_COLUMNS if c != "sharpness")),
    Spec(LOG_ROWS, "log_values", "sharpness >= 0", _BETWEEN, {"column": "sharpness", "min_value": 0}),
    Spec(LOG_ROWS, "log_values", "{column} in [0, 1]", _BETWEEN, {"min_value": 0, "max_value": 1},
         columns=("margin", "evidence_max")),
    Spec(LOG_ROWS, "log_values", "evidence_count >= 0", _BETWEEN, {"column": "evidence_count", "min_value": 0}),
    # an error row: the image has no prediction, only the row that counts it
    Spec(LOG_ROWS, "log_error_rows", "{column} >= 0 on an error row (0: not decoded)", _BETWEEN, {"min_value": 0},
         columns=("image_width", "image_height"), error_rows=True),
    Spec(LOG_ROWS, "log_error_rows", "n_detections 0 on an error row", _BETWEEN,
         {"column": "n_detections", "min_value": 0, "max_value": 0}, error_rows=True),
    Spec(LOG_ROWS, "log_error_rows", "{column} null on an error row", _NULL,
         columns=("class_id", "confidence", "margin", "evidence_max", *prediction_log.STAT_COLUMNS), error_rows=True),
    Spec(LOG_ROWS, "log_error_rows", "evidence_count 0 on an error row", _BETWEEN,
         {"column": "evidence_count", "min_value": 0, "max_value": 0}, error_rows=True),
    Spec(LOG_ROWS, "log_values", "image_sha256 is 64 hex digits", "ExpectColumnValuesToMatchRegex",
         {"column": "image_sha256", "regex": r"^[0-9a-f]{64}$"}),
)  # fmt: skip
"""Every expectation of the four suites (see the validate stage's docstring for what each suite's rows are)."""


def expectation_values(params: Params) -> dict[str, Any]:
    """The ``$name`` values of :data:`EXPECTATIONS`, from ``base.classes`` and the ``validate`` params."""
    v, n_classes = params.validate, len(params.base.classes)
    return {
        "classes": list(range(n_classes)),
        "last_class": n_classes - 1,
        "coord_min": -COORD_TOL,
        "coord_max": 1 + COORD_TOL,
        "min_box_px": v.min_box_px,
        "boxes_min": v.boxes_per_image[0],
        "boxes_max": v.boxes_per_image[1],
        "boxes_per_image": list(v.boxes_per_image),
        "leak_max_distance": v.leak_max_distance,
        "not_nullable": [f.name for f in prediction_log.SCHEMA if not f.nullable],
        "error_kinds": list(prediction_log.ERROR_KINDS),
    }


def expand(spec: Spec, values: Mapping[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """``(kwargs, rule)`` of each expectation a spec stands for, with every value filled in (pure)."""
    columns: list[str | None] = []
    for column in spec.columns or (None,):
        if column is not None and column.startswith("$"):
            columns += list(values[column[1:]])
        else:
            columns.append(column)
    out = []
    for column in columns:
        kwargs: dict[str, Any] = {}
        for key, value in spec.kwargs.items():
            if isinstance(value, str) and value.startswith("$"):
                value = values[value[1:]]
            elif isinstance(value, str) and column is not None:
                value = value.format(column=column)
            kwargs[key] = value
        if column is not None and not any(k in kwargs for k in ("column", "column_A", "column_list")):
            kwargs["column"] = column
        out.append((kwargs, spec.rule.format(column=column, **values)))
    return out


def _gx() -> Any:
    """Import GX with its usage statistics off (``tasks.env`` sets this too; a user's setting wins)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def build_suites(params: Params) -> dict[str, list[Expectation]]:
    """The GX expectations of each suite, from :data:`EXPECTATIONS` filled in with ``params``.

    Every expectation carries ``meta={"check": <name>, "rule": <text>}``; ``check`` names the reason in reports.
    """
    gx = _gx()
    from great_expectations.expectations.row_conditions import Column

    values = expectation_values(params)
    suites: dict[str, list[Expectation]] = {LABELS: [], IMAGES: [], LOG_SCHEMA: [], LOG_ROWS: []}
    for spec in EXPECTATIONS:
        factory = getattr(gx.expectations, spec.expectation)
        for kwargs, rule in expand(spec, values):
            if spec.boxes_only:
                kwargs["row_condition"] = Column("kind") == "box"
            elif spec.error_rows is not None:
                error = Column("error")
                kwargs["row_condition"] = error.is_not_null() if spec.error_rows else error.is_null()
            suites[spec.suite].append(factory(**kwargs, meta={"check": spec.check, "rule": rule}))
    return suites


def _raised(info: Any) -> str | None:
    """The exception message GX caught while evaluating an expectation, if any (it reports, never raises)."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "unknown error")
    nested = [_raised(value) for value in info.values() if isinstance(value, dict)]
    return next((m for m in nested if m), None)


class Failure(NamedTuple):
    """One failing row of one expectation, as GX reported it."""

    where: dict[str, Any]
    check: str
    rule: str
    expectation: str
    column: str


def failed_rows(result: ExpectationSuiteValidationResult, suite: str) -> list[Failure]:
    """Flatten a suite result into one :class:`Failure` per failing row (named by :data:`INDEX_COLUMNS`).

    Raises:
        ExpectationError: GX could not evaluate an expectation, or a failure names no row (a check must never pass
            silently, nor fail without saying where).
    """
    out: list[Failure] = []
    for item in result.results:
        config = item.expectation_config
        if config is None:  # GX attaches the configuration to every result it returns
            raise ExpectationError(f"suite {suite}: a result without its expectation: {item}")
        kwargs = config.kwargs
        columns = kwargs.get("column_list") or [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
        column = ",".join(str(c) for c in columns)
        error = _raised(item.exception_info)
        if error:
            raise ExpectationError(f"suite {suite}: GX could not evaluate {config.type} on {column}: {error}")
        if item.success:
            continue
        index_rows = (item.result or {}).get("unexpected_index_list") or []
        if not index_rows:
            raise ExpectationError(
                f"suite {suite}: {config.type} on {column} failed without naming rows: {item.result}"
            )
        meta = config.meta or {}
        out.extend(
            Failure(row, str(meta.get("check", config.type)), str(meta.get("rule", "")), str(config.type), column)
            for row in index_rows
        )
    return out


def message(check: str, column: str, row: dict[str, Any], params: Params) -> str:
    """A person's sentence for one failing row (``row`` is the full frame row, nulls as None)."""
    v = params.validate
    at = f"line {row['line']}: " if row.get("line") else ""
    text: dict[str, Callable[[], str]] = {
        "parse": lambda: f"{row['parse_error']}",
        "not_null": lambda: f"{column} is null or NaN",
        "class_in_set": lambda: f"class {row['class_id']} not in base.classes [0..{len(params.base.classes) - 1}]",
        "inside_image": lambda: (
            f"box corners ({row['x1n']:.4g}, {row['y1n']:.4g}, {row['x2n']:.4g}, {row['y2n']:.4g}) "
            "lie outside [0, 1] (normalised xywh expected)"
        ),
        "min_size": lambda: (
            f"box {row['w_px']:.3g} x {row['h_px']:.3g} px is not larger than validate.min_box_px = {v.min_box_px}"
        ),
        "unique_id": lambda: f"id ({row['image_id']!r}, box {row['box']}) is not unique: another image has this stem",
        "boxes_per_image": lambda: (
            f"{row['n_boxes']} boxes, outside validate.boxes_per_image {list(v.boxes_per_image)}"
        ),
        "readable": lambda: f"unreadable or truncated image ({row['decode_error']})",
        "has_label": lambda: f"label file labels/{row['image_id']}.txt missing (no objects needs an empty file)",
        "declared_size": lambda: (
            f"size {row['width']}x{row['height']} differs from the manifest's "
            f"{row['declared_width']}x{row['declared_height']}"
        ),
        "leak_exact": lambda: f"byte-identical (SHA-256) to test image {row['exact_test']}",
        "leak_near": lambda: (
            f"near-duplicate of test image {row['nearest_test']} (perceptual-hash distance "
            f"{row['phash_distance']} <= validate.leak_max_distance = {v.leak_max_distance})"
        ),
    }
    return at + text[check]() if check in text else f"{at}{check}: {column}"


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with every null (None, NaN, NA) as None."""
    return [{k: (None if _isna(x) else x) for k, x in row.items()} for row in frame.to_dict(orient="records")]


def _isna(value: Any) -> bool:
    return value is None or (np.ndim(value) == 0 and not isinstance(value, str) and bool(pd.isna(value)))


def collect_reasons(
    results: dict[str, ExpectationSuiteValidationResult], frames: dict[str, pd.DataFrame], params: Params
) -> dict[str, list[Reason]]:
    """Reasons per image file name, from the ``labels`` and ``images`` suite results (repeats dropped)."""
    reasons: dict[str, list[Reason]] = {}
    for suite in (LABELS, IMAGES):
        if suite not in results:
            continue
        keys = INDEX_COLUMNS[suite]
        rows = {tuple(r[k] for k in keys): r for r in records(frames[suite])}
        for failure in failed_rows(results[suite], suite):
            row = rows[tuple(failure.where[k] for k in keys)]
            reason = Reason(
                suite=suite,
                check=failure.check,
                expectation=failure.expectation,
                column=failure.column,
                line=int(row.get("line") or 0),
                message=message(failure.check, failure.column, row, params),
            )
            found = reasons.setdefault(str(row["image"]), [])
            if reason not in found:
                found.append(reason)
    return reasons


def _schema_problem(file: str, column: str, row: dict[str, Any]) -> str:
    if row["read_error"]:
        return f"{file}: {row['read_error']}"
    if row["actual_type"] == ABSENT:
        return f"{file}: missing column {column} ({row['expected_type']})"
    if row["expected_type"] == ABSENT:
        return f"{file}: unexpected column {column} ({row['actual_type']})"
    if row["actual_type"] != row["expected_type"]:
        return f"{file}: column {column} has type {row['actual_type']}, expected {row['expected_type']}"
    return f"{file}: column {column} appears more than once"


def log_problems(results: dict[str, ExpectationSuiteValidationResult], frames: dict[str, pd.DataFrame]) -> list[str]:
    """Readable problems found by the prediction log suites, one line per (file, problem)."""
    problems: list[str] = []
    if LOG_SCHEMA in results:
        rows = {(r["file"], r["column"]): r for r in records(frames[LOG_SCHEMA])}
        for failure in failed_rows(results[LOG_SCHEMA], LOG_SCHEMA):
            file, column = str(failure.where["file"]), str(failure.where["column"])
            text = _schema_problem(file, column, rows[(file, column)])
            if text not in problems:
                problems.append(text)
    if LOG_ROWS in results:
        counts: Counter[tuple[str, str]] = Counter()
        for failure in failed_rows(results[LOG_ROWS], LOG_ROWS):
            counts[(str(failure.where["file"]), failure.rule)] += 1
        problems += [f"{file}: {n} sampled row(s) break '{rule}'" for (file, rule), n in counts.items()]
    return problems
