"""Stage ``validate``: Great Expectations suites over a cycle's new labels; bad images go to quarantine.

Contract:
    inputs: the cycle's labeled images from the label stage, ``<base.paths.labels>/<cycle>/images/*`` with
        ``labels/<stem>.txt`` (YOLO ``class cx cy w h`` normalised; an empty file = no objects) and an optional
        manifest ``<base.paths.labels>/<cycle>/<validate.manifest>`` declaring image sizes; the frozen test
        images ``<base.paths.golden>/images`` (required) and the other cycles' ``<base.paths.holdouts>/*/images``
        (optional; the cycle's own holdout is carved from it by merge, see :func:`frozen_image_folders`);
        the prediction log ``<base.paths.predictions>`` (missing = nothing to check);
    params: ``base`` (classes, paths), ``validate``;
    outputs: ``<reports>/validate.json`` (summary: counts, share, reasons, effective params);
        ``<reports>/validate/<cycle>/<suite>.json`` (GX validation results, ``COMPLETE`` format with the failing
        rows named by ``unexpected_index_column_names``), ``<reports>/validate/<cycle>/images.json`` (size,
        SHA-256 and perceptual hash of every checked image), ``<reports>/validate/data_docs/`` (GX HTML data docs,
        when ``validate.data_docs``); ``<base.paths.quarantine>/<cycle>/quarantine.json`` (per quarantined image:
        where it came from, where it is, which expectation failed and why; merged over earlier runs);
    side effects: every image that fails any expectation is *moved* (never deleted, never overwritten) with its
        label file from ``<labels>/<cycle>/{images,labels}/`` to ``<quarantine>/<cycle>/{images,labels}/`` (one
        ``os.replace`` per file: atomic on one filesystem; the image goes first, so an interrupted run never leaves
        a quarantined image downstream). What stays in ``<labels>/<cycle>/`` is exactly the validated set the
        merge stage reads.

Failure: the stage raises, *moving nothing*, when the quarantined share of the checked images exceeds
``validate.max_quarantine_share`` (:class:`QuarantineShareError`, naming the share and the top reasons) or when
the prediction log does not match :data:`tasks.contracts.prediction_log.SCHEMA`
(:class:`PredictionLogSchemaError`, naming each file). Reports are written in both cases. Re-running a cycle
checks only what is still there.

Suites (each expectation carries ``meta.check``, the name used in reasons and reports):
    ``labels`` (one row per box, plus one row for an image whose label file has no boxes): the line parses, no
    null field, class in ``range(len(base.classes))``, corners within [0, 1], width and height above
    ``validate.min_box_px``, ``(image_id, box)`` unique, boxes per image within ``validate.boxes_per_image``;
    ``images`` (one row per image): fully decodable, has a label file, size as the manifest declares, not a
    byte copy (SHA-256) or a near-duplicate (perceptual hash, Hamming distance <= ``validate.leak_max_distance``)
    of any golden or holdout image;
    ``prediction_log_schema`` (one row per file and column): readable, each column's Arrow type as in ``SCHEMA``,
    no missing, extra or repeated column; ``prediction_log_rows`` (the first ``validate.log_sample_rows`` rows of
    each file): no nulls where ``SCHEMA`` forbids them, classes, confidences and normalised corners in range,
    SHA-256 well formed.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import imagehash
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from tasks.config import ConfigError, Params, load_params, stage_argparser
from tasks.contracts import prediction_log
from tasks.contracts.yolo_labels import label_path_for, list_images
from tasks.io import write_json_atomic

if TYPE_CHECKING:  # GX costs 3-4 s to import: only inside the functions that run it
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.expectations.expectation import Expectation

log = logging.getLogger(__name__)

STAGE = "validate"
LABELS, IMAGES, LOG_SCHEMA, LOG_ROWS = "labels", "images", "prediction_log_schema", "prediction_log_rows"
QUARANTINE_REPORT = "quarantine.json"
# Normalised corners may miss 0 or 1 by float rounding (cx - w/2 with cx = w/2); contracts.yolo_labels uses the same.
COORD_TOL = 1e-6
ABSENT = "<absent>"
INDEX_COLUMNS = {LABELS: ["image", "line"], IMAGES: ["image"], LOG_SCHEMA: ["file", "column"], LOG_ROWS: ["file"]}
_TOP_REASONS = 5
# Bounds the (new x test x hash bytes) XOR block of the leakage search to ~64 MB.
_PAIRS_PER_BLOCK = 2_000_000


class ValidateError(RuntimeError):
    """The validate stage refused the cycle; the message says why and where."""


class QuarantineShareError(ValidateError):
    """More of the cycle failed validation than ``validate.max_quarantine_share`` allows (nothing was moved)."""


class PredictionLogSchemaError(ValidateError):
    """A prediction log file does not match :data:`tasks.contracts.prediction_log.SCHEMA` (names each file)."""


@dataclass(frozen=True)
class Reason:
    """Why one image is quarantined: one failed expectation on one of its rows.

    Attributes:
        suite: ``labels`` or ``images``.
        check: the expectation's ``meta.check`` (e.g. ``class_in_set``).
        expectation: the GX expectation type (e.g. ``expect_column_values_to_be_in_set``).
        column: the column it tested (for multi-column expectations, joined by ``,``).
        line: label file line (1-based), 0 for an image-level row.
        message: what is wrong, for a person.
    """

    suite: str
    check: str
    expectation: str
    column: str
    line: int
    message: str


@dataclass(frozen=True)
class ValidateResult:
    """What one run of the stage did (also summarised in ``<reports>/validate.json``).

    Attributes:
        cycle: the cycle validated.
        checked: images checked in this run.
        passed: images left in place (the set that continues downstream).
        quarantined: images moved to quarantine in this run.
        share: ``quarantined / checked`` (0 when nothing was checked).
        reasons: number of quarantined images per check name.
        report: the summary JSON.
        gx_results: GX validation result JSON per suite that ran.
        images_report: size and hashes of every checked image.
        quarantine_report: ``quarantine.json`` of the cycle, None when nothing was ever quarantined.
        data_docs: GX data docs index, None when not built.
    """

    cycle: str
    checked: int
    passed: int
    quarantined: int
    share: float
    reasons: dict[str, int]
    report: Path
    gx_results: dict[str, Path]
    images_report: Path
    quarantine_report: Path | None = None
    data_docs: Path | None = None


@dataclass(frozen=True)
class LabelLine:
    """One non-blank line of a YOLO label file.

    Attributes:
        line: 1-based line number.
        class_id: class index, None when the line does not parse.
        xywhn: ``(cx, cy, w, h)`` normalised centre box (NaN allowed: it fails the null check), None when the line
            does not parse.
        error: why the line does not parse, else None.
    """

    line: int
    class_id: int | None
    xywhn: tuple[float, float, float, float] | None
    error: str | None = None


@dataclass(frozen=True)
class FrozenImageIndex:
    """Hashes of the frozen test images (golden + holdouts) that new training images must not duplicate.

    Attributes:
        names: test image paths as strings, ``(M,)``.
        sha256: lowercase hex SHA-256 of each file's bytes -> its path.
        phash_bits: ``(M, phash_size**2 / 8)`` uint8 packed perceptual-hash bits (undecodable images are left out).
        phash_names: the path of each ``phash_bits`` row.
    """

    names: list[str]
    sha256: dict[str, str]
    phash_bits: npt.NDArray[np.uint8]
    phash_names: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- reading


def parse_label_text(text: str) -> list[LabelLine]:
    """Parse YOLO label text leniently: a bad line becomes a :class:`LabelLine` with ``error``, never an exception.

    Args:
        text: the label file's content; blank lines are skipped.

    Returns:
        One entry per non-blank line, in file order.
    """
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 5:
            out.append(LabelLine(lineno, None, None, f"expected 'class cx cy w h', got {len(fields)} field(s)"))
            continue
        try:
            class_id = int(fields[0])
        except ValueError:
            out.append(LabelLine(lineno, None, None, f"class {fields[0]!r} is not an integer"))
            continue
        try:
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            out.append(LabelLine(lineno, None, None, f"box {' '.join(fields[1:])!r} is not four numbers"))
            continue
        out.append(LabelLine(lineno, class_id, (cx, cy, w, h)))
    return out


def read_label_lines(path: Path) -> list[LabelLine]:
    """Read one label file with :func:`parse_label_text`; undecodable bytes become one unparsed line 1."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [LabelLine(1, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
    return parse_label_text(text)


def decode_image(path: Path, *, phash_size: int) -> tuple[tuple[int, int] | None, npt.NDArray[np.bool_] | None, str]:
    """Fully decode an image (truncated files fail) and compute its perceptual hash.

    Args:
        path: image file.
        phash_size: ``imagehash.phash`` ``hash_size`` (the hash has ``phash_size**2`` bits).

    Returns:
        ``((width, height), hash bits (phash_size, phash_size) bool, "")`` or ``(None, None, error message)``.
    """
    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
            bits = np.asarray(imagehash.phash(img, hash_size=phash_size).hash, dtype=bool)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    return size, bits, ""


def index_test_images(folders: Sequence[Path], *, phash_size: int) -> FrozenImageIndex:
    """Hash every image of the frozen test sets.

    Args:
        folders: image folders (those that do not exist are skipped).
        phash_size: perceptual hash size, as for the new images.

    Returns:
        The :class:`FrozenImageIndex`; an undecodable test image is kept by SHA-256 only (with a warning).
    """
    names: list[str] = []
    sha: dict[str, str] = {}
    bits: list[npt.NDArray[np.uint8]] = []
    phash_names: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in list_images(folder):
            names.append(str(path))
            sha.setdefault(prediction_log.sha256_file(path), str(path))
            _, hash_bits, error = decode_image(path, phash_size=phash_size)
            if hash_bits is None:
                log.warning("test image %s is unreadable (%s): compared by SHA-256 only", path, error)
                continue
            bits.append(np.packbits(hash_bits.ravel()))
            phash_names.append(str(path))
    width = (phash_size * phash_size + 7) // 8
    packed = np.stack(bits) if bits else np.zeros((0, width), dtype=np.uint8)
    return FrozenImageIndex(names=names, sha256=sha, phash_bits=packed, phash_names=phash_names)


def nearest_test_images(
    bits: npt.NDArray[np.uint8], index: FrozenImageIndex
) -> tuple[npt.NDArray[np.int64], list[str | None]]:
    """Hamming distance from each new image's hash to its nearest test image.

    Args:
        bits: ``(N, B)`` uint8 packed hashes of the new images (same size as the index's).
        index: the test images.

    Returns:
        ``(N,)`` distances (-1 where there is no test image) and the nearest test image per row (None likewise).
    """
    n = bits.shape[0]
    if n == 0 or index.phash_bits.shape[0] == 0:
        return np.full(n, -1, dtype=np.int64), [None] * n
    test = index.phash_bits
    step = max(1, _PAIRS_PER_BLOCK // test.shape[0])
    best = np.empty(n, dtype=np.int64)
    arg = np.empty(n, dtype=np.int64)
    for start in range(0, n, step):
        block = np.bitwise_count(bits[start : start + step, None, :] ^ test[None, :, :]).sum(axis=2, dtype=np.int64)
        arg[start : start + step] = block.argmin(axis=1)
        best[start : start + step] = block.min(axis=1)
    return best, [index.phash_names[i] for i in arg]


def read_manifest(path: Path) -> dict[str, tuple[int, int]]:
    """Declared image sizes from a manifest (JSON, CSV or Parquet by suffix), keyed by image id (file stem).

    A manifest has one record per image with ``image_id`` (or ``image``, a file name) and ``width``/``height``
    (or ``image_width``/``image_height``, as in the prediction log). JSON may be a list of records or
    ``{"images": [...]}``. A missing file declares nothing.

    Raises:
        ValidateError: the manifest exists but is unreadable or has no id or size columns.
    """
    if not path.is_file():
        return {}
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            raw = json.loads(path.read_text())
            frame = pd.DataFrame(raw["images"] if isinstance(raw, dict) else raw)
    except (ValueError, OSError, KeyError, TypeError, pa.ArrowException) as exc:
        raise ValidateError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from exc
    ids = None
    if "image_id" in frame:
        ids = frame["image_id"].astype(str)
    elif "image" in frame:
        ids = frame["image"].map(lambda name: Path(str(name)).stem)
    width = next((frame[c] for c in ("width", "image_width") if c in frame), None)
    height = next((frame[c] for c in ("height", "image_height") if c in frame), None)
    if ids is None or width is None or height is None:
        raise ValidateError(
            f"{path}: a manifest needs columns image_id (or image) and width/height (or image_width/image_height), "
            f"got {list(frame.columns)}"
        )
    return {str(i): (int(w), int(h)) for i, w, h in zip(ids, width, height, strict=True) if pd.notna(w) and pd.notna(h)}


# --------------------------------------------------------------------------------------------------- frames

_IMAGE_COLUMNS = [
    "image",
    "image_id",
    "label",
    "decode_error",
    "width",
    "height",
    "declared_width",
    "declared_height",
    "sha256",
    "phash",
    "exact_test",
    "phash_distance",
    "nearest_test",
]


_LABEL_COLUMNS = [
    "image",
    "line",
    "image_id",
    "box",
    "kind",
    "parse_error",
    "class_id",
    "cx",
    "cy",
    "w",
    "h",
    "x1n",
    "y1n",
    "x2n",
    "y2n",
    "w_px",
    "h_px",
    "n_boxes",
]


def image_frame(
    images: Sequence[Path],
    *,
    labels_dir: Path,
    declared: dict[str, tuple[int, int]],
    test_index: FrozenImageIndex,
    phash_size: int,
) -> pd.DataFrame:
    """One row per image: decodability, label presence, sizes, hashes and the nearest test image.

    Columns: ``image`` (file name), ``image_id`` (stem), ``label`` (label file name or None), ``decode_error``
    (None when decodable), ``width``/``height`` and ``declared_width``/``declared_height`` (nullable ints),
    ``sha256``, ``phash`` (hex), ``exact_test`` (test image with the same bytes), ``phash_distance`` (nullable
    int: Hamming distance to ``nearest_test``; null without test images or when undecodable), ``nearest_test``.
    """
    rows: list[dict[str, Any]] = []
    packed: list[npt.NDArray[np.uint8]] = []
    has_hash: list[int] = []
    for path in images:
        label = label_path_for(path, labels_dir)
        size, bits, error = decode_image(path, phash_size=phash_size)
        sha = prediction_log.sha256_file(path)
        want = declared.get(path.stem)
        rows.append(
            {
                "image": path.name,
                "image_id": path.stem,
                "label": label.name if label.is_file() else None,
                "decode_error": error or None,
                "width": size[0] if size else None,
                "height": size[1] if size else None,
                "declared_width": want[0] if want else None,
                "declared_height": want[1] if want else None,
                "sha256": sha,
                "phash": str(imagehash.ImageHash(bits)) if bits is not None else None,
                "exact_test": test_index.sha256.get(sha),
            }
        )
        if bits is not None:
            packed.append(np.packbits(bits.ravel()))
            has_hash.append(len(rows) - 1)
    if packed:
        distances, nearest = nearest_test_images(np.stack(packed), test_index)
        for row, distance, name in zip(has_hash, distances, nearest, strict=True):
            if distance >= 0:
                rows[row].update(phash_distance=int(distance), nearest_test=name)
    frame = pd.DataFrame(rows, columns=_IMAGE_COLUMNS)
    for column in ("width", "height", "declared_width", "declared_height", "phash_distance"):
        frame[column] = frame[column].astype("Int64")
    return frame


def label_frame(images: Sequence[Path], *, labels_dir: Path, sizes: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """One row per box of every image's label file, plus one row for an image whose label file has no boxes.

    Images without a label file have no row (the ``images`` suite reports them).

    Columns: ``image`` (image file name), ``line`` (1-based; 0 on a no-box row), ``image_id`` (stem), ``box``
    (0-based index among the file's non-blank lines; -1 on a no-box row), ``kind`` (``box``, ``unparsed`` or
    ``none``), ``parse_error``, ``class_id`` (nullable int), ``cx, cy, w, h`` (normalised centre box),
    ``x1n, y1n, x2n, y2n`` (normalised corners), ``w_px, h_px`` (box size in pixels; NaN when the image size is
    unknown), ``n_boxes`` (non-blank lines of the file).

    Args:
        images: image files.
        labels_dir: the ``labels/`` folder beside ``images/``.
        sizes: ``(width, height)`` of each decodable image, by file name.
    """
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    for path in images:
        label = label_path_for(path, labels_dir)
        if not label.is_file():
            continue
        lines = read_label_lines(label)
        width, height = sizes.get(path.name, (nan, nan))
        base = {"image": path.name, "image_id": path.stem, "n_boxes": len(lines)}
        if not lines:
            rows.append(base | {"line": 0, "box": -1, "kind": "none", "parse_error": None})
        for box, item in enumerate(lines):
            row = base | {"line": item.line, "box": box, "parse_error": item.error}
            if item.xywhn is None:
                rows.append(row | {"kind": "unparsed"})
                continue
            cx, cy, w, h = item.xywhn
            rows.append(
                row
                | {
                    "kind": "box",
                    "class_id": item.class_id,
                    "cx": cx,
                    "cy": cy,
                    "w": w,
                    "h": h,
                    "x1n": cx - w / 2,
                    "y1n": cy - h / 2,
                    "x2n": cx + w / 2,
                    "y2n": cy + h / 2,
                    "w_px": w * width,
                    "h_px": h * height,
                }
            )
    frame = pd.DataFrame(rows, columns=_LABEL_COLUMNS)
    frame["class_id"] = frame["class_id"].astype("Int64")
    for column in ("line", "box", "n_boxes"):
        frame[column] = frame[column].astype("int64")
    for column in ("cx", "cy", "w", "h", "x1n", "y1n", "x2n", "y2n", "w_px", "h_px"):
        frame[column] = frame[column].astype("float64")
    return frame


def log_files(root: Path) -> list[Path]:
    """The prediction log's ``*.parquet`` files (what every reader of the log picks up), sorted."""
    return sorted(p for p in root.rglob(f"*{prediction_log.PART_SUFFIX}") if p.is_file()) if root.is_dir() else []


def log_schema_frame(files: Sequence[Path]) -> pd.DataFrame:
    """One row per (file, column) over the union of :data:`prediction_log.SCHEMA` and each file's Arrow schema.

    Columns: ``file``, ``column``, ``expected_type`` / ``actual_type`` (Arrow type strings, :data:`ABSENT` where
    the column is missing from ``SCHEMA`` or from the file), ``read_error`` (None when the schema is readable;
    an unreadable file gets one row with ``column`` ``<file>``).
    """
    rows: list[dict[str, Any]] = []
    expected = {f.name: str(f.type) for f in prediction_log.SCHEMA}
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            rows.append(
                {"file": str(path), "column": "<file>", "expected_type": "parquet", "actual_type": ABSENT}
                | {"read_error": f"not a readable Parquet file ({exc})"}
            )
            continue
        for name in dict.fromkeys([*expected, *schema.names]):
            actual = [str(f.type) for f in schema if f.name == name]
            # A repeated column gives one row per occurrence, so the (file, column) uniqueness check sees it.
            for actual_type in actual or [ABSENT]:
                rows.append(
                    {
                        "file": str(path),
                        "column": name,
                        "expected_type": expected.get(name, ABSENT),
                        "actual_type": actual_type,
                        "read_error": None,
                    }
                )
    return pd.DataFrame(rows, columns=["file", "column", "expected_type", "actual_type", "read_error"])


def log_rows_frame(files: Sequence[Path], *, rows_per_file: int) -> pd.DataFrame:
    """The first ``rows_per_file`` rows of each (schema-valid) file, with a ``file`` column first.

    Raises:
        PredictionLogSchemaError: a file's schema reads but its rows do not (names the file).
    """
    parts = []
    for path in files:
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=rows_per_file, columns=prediction_log.SCHEMA.names)
            first = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise PredictionLogSchemaError(f"{path}: prediction log rows are not readable ({exc})") from exc
        if first is None:
            continue
        part = first.to_pandas()
        part.insert(0, "file", str(path))
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["file", *prediction_log.SCHEMA.names])
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------------------------------- suites


def _gx() -> Any:
    """Import GX with its usage statistics off (``visionloop.env`` sets this too; a user's setting wins)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def build_suites(params: Params) -> dict[str, list[Expectation]]:
    """The expectations of each suite, from ``base.classes`` and ``validate`` params.

    Every expectation carries ``meta={"check": <name>, "rule": <text>}``; ``check`` names the reason in reports.
    """
    gx = _gx()
    from great_expectations.expectations.row_conditions import Column

    e = gx.expectations
    v = params.validate
    n_classes = len(params.base.classes)

    def meta(check: str, rule: str) -> dict[str, str]:
        return {"check": check, "rule": rule}

    boxes = Column("kind") == "box"
    labels: list[Expectation] = [
        e.ExpectColumnValuesToBeNull(column="parse_error", meta=meta("parse", "a line is 'class cx cy w h'")),
        *[
            e.ExpectColumnValuesToNotBeNull(column=c, row_condition=boxes, meta=meta("not_null", f"{c} is a number"))
            for c in ("class_id", "cx", "cy", "w", "h")
        ],
        e.ExpectColumnValuesToBeInSet(
            column="class_id",
            value_set=list(range(n_classes)),
            meta=meta("class_in_set", f"class in [0..{n_classes - 1}] (base.classes)"),
        ),
        *[
            e.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=-COORD_TOL,
                max_value=1 + COORD_TOL,
                meta=meta("inside_image", "box corners within [0, 1]"),
            )
            for c in ("x1n", "y1n", "x2n", "y2n")
        ],
        *[
            e.ExpectColumnValuesToBeBetween(
                column=c,
                min_value=v.min_box_px,
                strict_min=True,
                meta=meta("min_size", f"box {side} > validate.min_box_px = {v.min_box_px} px"),
            )
            for c, side in (("w_px", "width"), ("h_px", "height"))
        ],
        e.ExpectCompoundColumnsToBeUnique(
            column_list=["image_id", "box"], meta=meta("unique_id", "(image_id, box) identifies one box")
        ),
        e.ExpectColumnValuesToBeBetween(
            column="n_boxes",
            min_value=v.boxes_per_image[0],
            max_value=v.boxes_per_image[1],
            meta=meta("boxes_per_image", f"boxes per image in validate.boxes_per_image {list(v.boxes_per_image)}"),
        ),
    ]
    images: list[Expectation] = [
        e.ExpectColumnValuesToBeNull(column="decode_error", meta=meta("readable", "the image decodes fully")),
        e.ExpectColumnValuesToNotBeNull(column="label", meta=meta("has_label", "the image has a label file")),
        *[
            e.ExpectColumnPairValuesToBeEqual(
                column_A=c,
                column_B=f"declared_{c}",
                ignore_row_if="either_value_is_missing",
                meta=meta("declared_size", f"{c} as the manifest declares"),
            )
            for c in ("width", "height")
        ],
        e.ExpectColumnValuesToBeNull(
            column="exact_test", meta=meta("leak_exact", "not a byte copy (SHA-256) of a golden/holdout image")
        ),
        e.ExpectColumnValuesToBeBetween(
            column="phash_distance",
            min_value=v.leak_max_distance,
            strict_min=True,
            meta=meta(
                "leak_near",
                f"perceptual hash farther than validate.leak_max_distance = {v.leak_max_distance} "
                "from every golden/holdout image",
            ),
        ),
    ]
    schema: list[Expectation] = [
        e.ExpectColumnValuesToBeNull(column="read_error", meta=meta("log_readable", "a readable Parquet file")),
        e.ExpectColumnPairValuesToBeEqual(
            column_A="actual_type",
            column_B="expected_type",
            meta=meta("log_schema", "each column present with its SCHEMA type, no other column"),
        ),
        e.ExpectCompoundColumnsToBeUnique(
            column_list=["file", "column"], meta=meta("log_schema", "no repeated column")
        ),
    ]
    not_nullable = [f.name for f in prediction_log.SCHEMA if not f.nullable]
    rows: list[Expectation] = [
        *[e.ExpectColumnValuesToNotBeNull(column=c, meta=meta("log_not_null", f"{c} not null")) for c in not_nullable],
        e.ExpectColumnValuesToBeInSet(
            column="class_id", value_set=list(range(n_classes)), meta=meta("log_values", "class_id in base.classes")
        ),
        e.ExpectColumnValuesToBeBetween(
            column="confidence", min_value=0, max_value=1, meta=meta("log_values", "confidence in [0, 1]")
        ),
        *[
            e.ExpectColumnValuesToBeBetween(
                column=c, min_value=0, max_value=1, meta=meta("log_values", f"{c} in [0, 1]")
            )
            for c in ("x1n", "y1n", "x2n", "y2n")
        ],
        *[
            e.ExpectColumnValuesToBeBetween(column=c, min_value=1, meta=meta("log_values", f"{c} >= 1"))
            for c in ("image_width", "image_height")
        ],
        e.ExpectColumnValuesToBeBetween(
            column="n_detections", min_value=0, meta=meta("log_values", "n_detections >= 0")
        ),
        e.ExpectColumnValuesToMatchRegex(
            column="image_sha256", regex=r"^[0-9a-f]{64}$", meta=meta("log_values", "image_sha256 is 64 hex digits")
        ),
    ]
    return {LABELS: labels, IMAGES: images, LOG_SCHEMA: schema, LOG_ROWS: rows}


def run_suites(
    frames: dict[str, pd.DataFrame], suites: dict[str, list[Expectation]], *, docs_dir: Path | None
) -> dict[str, ExpectationSuiteValidationResult]:
    """Validate each frame against its suite in one in-memory (ephemeral) GX context.

    The context keeps suites and results in memory and writes nothing but the data docs, and those only under
    ``docs_dir``. Frames without rows are not validated (they have nothing to fail).

    Args:
        frames: DataFrame per suite name.
        suites: expectations per suite name (from :func:`build_suites`).
        docs_dir: where to build the HTML data docs; None builds none.

    Returns:
        The GX validation result per suite that ran, with every failing row named by :data:`INDEX_COLUMNS`.
    """
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[STAGE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    source = context.data_sources.add_pandas(STAGE)
    results = {}
    for name, frame in frames.items():
        if frame.empty:
            continue
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=suites[name]))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        results[name] = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": INDEX_COLUMNS[name]},
        )
    if docs_dir is not None and results:
        context.build_data_docs()
    return results


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
        ValidateError: GX could not evaluate an expectation, or a failure names no row (a check must never pass
            silently, nor fail without saying where).
    """
    out: list[Failure] = []
    for item in result.results:
        config = item.expectation_config
        if config is None:  # GX attaches the configuration to every result it returns
            raise ValidateError(f"suite {suite}: a result without its expectation: {item}")
        kwargs = config.kwargs
        columns = kwargs.get("column_list") or [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
        column = ",".join(str(c) for c in columns)
        error = _raised(item.exception_info)
        if error:
            raise ValidateError(f"suite {suite}: GX could not evaluate {config.type} on {column}: {error}")
        if item.success:
            continue
        index_rows = (item.result or {}).get("unexpected_index_list") or []
        if not index_rows:
            raise ValidateError(f"suite {suite}: {config.type} on {column} failed without naming rows: {item.result}")
        meta = config.meta or {}
        out.extend(
            Failure(row, str(meta.get("check", config.type)), str(meta.get("rule", "")), str(config.type), column)
            for row in index_rows
        )
    return out


# --------------------------------------------------------------------------------------------------- reasons


def _message(check: str, column: str, row: dict[str, Any], params: Params) -> str:
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


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
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
        rows = {tuple(r[k] for k in keys): r for r in _records(frames[suite])}
        for failure in failed_rows(results[suite], suite):
            row = rows[tuple(failure.where[k] for k in keys)]
            reason = Reason(
                suite=suite,
                check=failure.check,
                expectation=failure.expectation,
                column=failure.column,
                line=int(row.get("line") or 0),
                message=_message(failure.check, failure.column, row, params),
            )
            found = reasons.setdefault(str(row["image"]), [])
            if reason not in found:
                found.append(reason)
    return reasons


def log_problems(results: dict[str, ExpectationSuiteValidationResult], frames: dict[str, pd.DataFrame]) -> list[str]:
    """Readable problems found by the prediction log suites, one line per (file, problem)."""
    problems: list[str] = []
    if LOG_SCHEMA in results:
        rows = {(r["file"], r["column"]): r for r in _records(frames[LOG_SCHEMA])}
        for failure in failed_rows(results[LOG_SCHEMA], LOG_SCHEMA):
            file, column = str(failure.where["file"]), str(failure.where["column"])
            row = rows[(file, column)]
            if row["read_error"]:
                text = f"{file}: {row['read_error']}"
            elif row["actual_type"] == ABSENT:
                text = f"{file}: missing column {column} ({row['expected_type']})"
            elif row["expected_type"] == ABSENT:
                text = f"{file}: unexpected column {column} ({row['actual_type']})"
            elif row["actual_type"] != row["expected_type"]:
                text = f"{file}: column {column} has type {row['actual_type']}, expected {row['expected_type']}"
            else:
                text = f"{file}: column {column} appears more than once"
            if text not in problems:
                problems.append(text)
    if LOG_ROWS in results:
        counts: Counter[tuple[str, str]] = Counter()
        for failure in failed_rows(results[LOG_ROWS], LOG_ROWS):
            counts[(str(failure.where["file"]), failure.rule)] += 1
        problems += [f"{file}: {n} sampled row(s) break '{rule}'" for (file, rule), n in counts.items()]
    return problems


def reader_problems(root: Path) -> list[str]:
    """What the prediction log's own reader refuses beyond the suites (e.g. hidden ``.``/``_`` names), as problems.

    :func:`tasks.contracts.prediction_log.logged_batches` lists the files as every reader does and checks each
    schema while reading three columns, so it is cheap; a file it refuses would stop the sample stage later.
    """
    try:
        prediction_log.logged_batches(root)
    except prediction_log.PredictionLogError as exc:
        return [str(exc)]
    return []


def schema_failures(frame: pd.DataFrame) -> set[str]:
    """Files of :func:`log_schema_frame` whose schema is unreadable, mistyped, incomplete or has repeated columns."""
    bad = frame["actual_type"] != frame["expected_type"]
    repeated = frame.duplicated(["file", "column"], keep=False)
    return set(frame.loc[bad | repeated, "file"])


# --------------------------------------------------------------------------------------------------- quarantine


def _free_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``<stem>.<k>`` with the smallest ``k`` not in ``used``."""
    candidate, k = stem, 0
    while candidate in used:
        k += 1
        candidate = f"{stem}.{k}"
    return candidate


def move_file(source: Path, target: Path) -> None:
    """Move a file without ever overwriting ``target``: ``os.replace`` (atomic), or copy + rename across devices.

    Raises:
        FileExistsError: ``target`` exists (callers pick a free name first).
    """
    if target.exists():
        raise FileExistsError(f"{target}: already in quarantine, refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(source, temp)
        os.replace(temp, target)
        source.unlink()


def quarantine(
    reasons: dict[str, list[Reason]], *, cycle_dir: Path, quarantine_dir: Path, cycle: str, run_at: str
) -> Path:
    """Move each failing image and its label file to quarantine and record why in ``quarantine.json``.

    A quarantined pair keeps its names unless an earlier run already quarantined that stem; then it becomes
    ``<stem>.<k>`` (nothing in quarantine is ever overwritten). The report is written first (merged over earlier
    runs' entries), then the files are moved, image first: an interrupted run leaves each image either still in
    place (a re-run finds it again, under the same name) or out of the downstream set.

    Args:
        reasons: reasons per image file name (from :func:`collect_reasons`).
        cycle_dir: ``<labels>/<cycle>`` (with ``images/`` and ``labels/``).
        quarantine_dir: ``<quarantine>/<cycle>``.
        cycle: the cycle name (recorded).
        run_at: ISO time of this run (recorded).

    Returns:
        The ``quarantine.json`` path.
    """
    images_out, labels_out = quarantine_dir / "images", quarantine_dir / "labels"
    report_path = quarantine_dir / QUARANTINE_REPORT
    report: dict[str, Any] = (
        json.loads(report_path.read_text()) if report_path.is_file() else {"cycle": cycle, "images": {}}
    )
    used = {p.stem for folder in (images_out, labels_out) if folder.is_dir() for p in folder.iterdir()}
    moves: list[tuple[Path, Path]] = []
    for name, items in sorted(reasons.items()):
        image = cycle_dir / "images" / name
        label = label_path_for(image, cycle_dir / "labels")
        stem = _free_stem(image.stem, used)
        used.add(stem)
        image_target = images_out / f"{stem}{image.suffix}"
        moves.append((image, image_target))
        # No label file, or one shared with an image of the same stem quarantined just before: nothing to move.
        label_target = None
        if label.is_file() and all(source != label for source, _ in moves):
            label_target = labels_out / f"{stem}.txt"
            moves.append((label, label_target))
        report["images"][image_target.name] = {
            "source_image": str(image),
            "image": str(image_target),
            "source_label": str(label) if label.is_file() else None,
            "label": str(label_target) if label_target else None,
            "quarantined_at": run_at,
            "reasons": [asdict(r) for r in items],
        }
    report["updated"] = run_at
    write_json_atomic(report_path, report)
    for source, target in moves:
        move_file(source, target)
        log.info("quarantined %s -> %s", source, target)
    return report_path


# --------------------------------------------------------------------------------------------------- stage


def frozen_image_folders(params: Params, *, cycle: str) -> list[Path]:
    """Golden images plus the holdout images of every *other* cycle: the test sets a training image must not copy.

    The cycle's own holdout (``<holdouts>/<cycle>``) is left out: merge carves it from this very cycle's validated
    labels, so after a merge each of its images is a byte copy of its source here, and re-validating the cycle
    would otherwise quarantine them all.

    Raises:
        FileNotFoundError: no golden image folder (leakage could not be checked).
    """
    golden = params.base.paths.golden / "images"
    if not golden.is_dir():
        raise FileNotFoundError(
            f"{golden}: golden test images not found (base.paths.golden); leakage cannot be checked without them. "
            "Run `python -m tasks.world` or point base.paths.golden at your test set"
        )
    holdouts = params.base.paths.holdouts
    found = (
        sorted(p / "images" for p in holdouts.iterdir() if p.name != cycle and (p / "images").is_dir())
        if holdouts.is_dir()
        else []
    )
    return [golden, *found]


def build_frames(
    params: Params, *, cycle_dir: Path, images: Sequence[Path], test_index: FrozenImageIndex
) -> dict[str, pd.DataFrame]:
    """The four DataFrames the suites validate, keyed by suite name (see the module docstring)."""
    v = params.validate
    labels_dir = cycle_dir / "labels"
    declared = read_manifest(cycle_dir / v.manifest)
    frames = {
        IMAGES: image_frame(
            images, labels_dir=labels_dir, declared=declared, test_index=test_index, phash_size=v.phash_size
        )
    }
    sizes = {
        row["image"]: (int(row["width"]), int(row["height"]))
        for row in _records(frames[IMAGES])
        if row["width"] is not None
    }
    frames[LABELS] = label_frame(images, labels_dir=labels_dir, sizes=sizes)
    files = log_files(params.base.paths.predictions)
    frames[LOG_SCHEMA] = log_schema_frame(files)
    bad = schema_failures(frames[LOG_SCHEMA])
    frames[LOG_ROWS] = log_rows_frame([f for f in files if str(f) not in bad], rows_per_file=v.log_sample_rows)
    return frames


def _top(counts: Counter[str]) -> str:
    return ", ".join(f"{check} ({n})" for check, n in counts.most_common(_TOP_REASONS)) or "none"


def run(params: Params, *, cycle: str) -> ValidateResult:
    """Validate a cycle's new labels, their images and the prediction log; quarantine the images that fail.

    Args:
        params: the effective configuration.
        cycle: the cycle name, a folder under ``base.paths.labels``.

    Returns:
        The :class:`ValidateResult` (also written to ``<reports>/validate.json``).

    Raises:
        FileNotFoundError: the cycle's ``images/`` folder or the golden images are missing.
        PredictionLogSchemaError: a prediction log file does not match the schema (nothing moved).
        QuarantineShareError: the failing share exceeds ``validate.max_quarantine_share`` (nothing moved).
        ValidateError: GX could not evaluate an expectation, or the manifest is malformed.
    """
    start = time.perf_counter()
    v, paths = params.validate, params.base.paths
    cycle_dir = paths.labels / cycle
    images_dir = cycle_dir / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no labeled images for cycle {cycle!r}; run the label stage first")
    report_dir = paths.reports / STAGE / cycle
    docs_dir = paths.reports / STAGE / "data_docs" if v.data_docs else None
    summary_path = paths.reports / f"{STAGE}.json"
    run_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    images = list_images(images_dir)
    test_index = index_test_images(frozen_image_folders(params, cycle=cycle), phash_size=v.phash_size)
    frames = build_frames(params, cycle_dir=cycle_dir, images=images, test_index=test_index)
    log.info(
        "cycle %s: %d images, %d label rows, %d test images, %d prediction log files",
        cycle,
        len(images),
        len(frames[LABELS]),
        len(test_index.names),
        frames[LOG_SCHEMA]["file"].nunique(),
    )
    results = run_suites(frames, build_suites(params), docs_dir=docs_dir)
    gx_results = {
        name: write_json_atomic(report_dir / f"{name}.json", result.to_json_dict()) for name, result in results.items()
    }
    images_report = write_json_atomic(report_dir / "images.json", _records(frames[IMAGES]))
    docs_index = docs_dir / "index.html" if docs_dir is not None and results else None

    reasons = collect_reasons(results, frames, params)
    counts: Counter[str] = Counter(
        check for items in reasons.values() for check in dict.fromkeys(r.check for r in items)
    )
    checked, quarantined = len(images), len(reasons)
    share = quarantined / checked if checked else 0.0
    stems = {p.stem for p in images}
    orphans = sorted(p.name for p in (cycle_dir / "labels").glob("*.txt") if p.stem not in stems)
    if orphans:
        log.warning("cycle %s: %d label file(s) without an image, ignored: %s", cycle, len(orphans), orphans[:5])
    summary: dict[str, Any] = {
        "stage": STAGE,
        "cycle": cycle,
        "run_at": run_at,
        "status": "passed",
        "error": None,
        "checked": checked,
        "passed": checked - quarantined,
        "quarantined": quarantined,
        "share": round(share, 4),
        "max_quarantine_share": v.max_quarantine_share,
        "reasons": dict(counts.most_common()),
        "quarantined_images": {name: [r.message for r in items] for name, items in sorted(reasons.items())},
        "orphan_labels": orphans,
        "suites": {
            name: {"success": results[name].success, "statistics": results[name].statistics, "result": str(path)}
            for name, path in gx_results.items()
        }
        | {name: {"skipped": "no rows"} for name in frames if name not in results},
        "prediction_log": {"files": frames[LOG_SCHEMA]["file"].nunique(), "rows_sampled": len(frames[LOG_ROWS])},
        "test_images": len(test_index.names),
        "images_report": str(images_report),
        "data_docs": str(docs_index) if docs_index else None,
        "params": {"classes": list(params.base.classes), STAGE: v.model_dump(mode="json")},
    }

    def fail(error: ValidateError) -> ValidateError:
        summary.update(status="failed", error=str(error), wall_s=round(time.perf_counter() - start, 2))
        write_json_atomic(summary_path, summary)
        return error

    problems = log_problems(results, frames) or reader_problems(paths.predictions)
    if problems:
        raise fail(
            PredictionLogSchemaError(
                f"prediction log {paths.predictions} does not match tasks.contracts.prediction_log.SCHEMA "
                f"({len(problems)} problem(s)); nothing was moved:\n  " + "\n  ".join(problems)
            )
        )
    if share > v.max_quarantine_share:
        raise fail(
            QuarantineShareError(
                f"cycle {cycle}: {quarantined} of {checked} images ({share:.1%}) fail validation, above "
                f"validate.max_quarantine_share = {v.max_quarantine_share:.1%}; top reasons: {_top(counts)}. "
                f"Nothing was moved; details in {summary_path} and {report_dir}"
            )
        )
    quarantine_dir = paths.quarantine / cycle
    if reasons:
        quarantine(reasons, cycle_dir=cycle_dir, quarantine_dir=quarantine_dir, cycle=cycle, run_at=run_at)
    quarantine_report = quarantine_dir / QUARANTINE_REPORT
    quarantine_report_or_none = quarantine_report if quarantine_report.is_file() else None
    summary.update(quarantine_report=quarantine_report_or_none, wall_s=round(time.perf_counter() - start, 2))
    write_json_atomic(summary_path, summary)
    log.info(
        "cycle %s: %d checked, %d passed, %d quarantined (%.1f%%); reasons: %s",
        cycle,
        checked,
        checked - quarantined,
        quarantined,
        100 * share,
        _top(counts),
    )
    return ValidateResult(
        cycle=cycle,
        checked=checked,
        passed=checked - quarantined,
        quarantined=quarantined,
        share=share,
        reasons=dict(counts),
        report=summary_path,
        gx_results=gx_results,
        images_report=images_report,
        quarantine_report=quarantine_report_or_none,
        data_docs=docs_index,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.validate --params P --cycle C``."""
    from tasks.env import apply_env

    parser = stage_argparser(STAGE, __doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycle", required=True, help="cycle name: a folder under base.paths.labels")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(load_params(args.params), cycle=args.cycle)
    except (ConfigError, ValidateError, FileNotFoundError) as exc:
        raise SystemExit(f"{STAGE}: {exc}") from None
    print(json.dumps({"cycle": result.cycle, "checked": result.checked, "quarantined": result.quarantined}))


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
