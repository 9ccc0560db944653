"""Tabular views of the files the validate stage checks: one DataFrame per suite, one row per thing checked.

Each frame reads a contract's files (YOLO labels through :mod:`tasks.contracts.yolo_labels`' lenient parser, the
images with the frozen-image index of :mod:`tasks.contracts.frozen_images`, the prediction log's Parquet files) and
records what it found, problems included, without judging: the expectations
(:mod:`tasks.decisions.expectations`) judge. Also the optional size declaration of a cycle
(:func:`read_declared_sizes`, ``<labels>/<cycle>/<validate.manifest>``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import VisionloopError
from tasks.contracts import prediction_log
from tasks.contracts.frozen_images import FrozenImageIndex, decode_image, nearest_test_images
from tasks.contracts.yolo_labels import label_path_for, read_label_lines
from tasks.core import phash
from tasks.core.hashing import file_sha256

ABSENT = "<absent>"


class FrameError(VisionloopError, ValueError):
    """A file the frames read is malformed beyond what a check can report (names the file)."""


def read_declared_sizes(path: Path) -> dict[str, tuple[int, int]]:
    """Declared image sizes from a manifest (JSON, CSV or Parquet by suffix), keyed by image id (file stem).

    A manifest has one record per image with ``image_id`` (or ``image``, a file name) and ``width``/``height``
    (or ``image_width``/``image_height``, as in the prediction log). JSON may be a list of records or
    ``{"images": [...]}``. A missing file declares nothing.

    Raises:
        FrameError: the manifest exists but is unreadable or has no id or size columns.
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
        raise FrameError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from exc
    ids = None
    if "image_id" in frame:
        ids = frame["image_id"].astype(str)
    elif "image" in frame:
        ids = frame["image"].map(lambda name: Path(str(name)).stem)
    width = next((frame[c] for c in ("width", "image_width") if c in frame), None)
    height = next((frame[c] for c in ("height", "image_height") if c in frame), None)
    if ids is None or width is None or height is None:
        raise FrameError(
            f"{path}: a manifest needs columns image_id (or image) and width/height (or image_width/image_height), "
            f"got {list(frame.columns)}"
        )
    return {str(i): (int(w), int(h)) for i, w, h in zip(ids, width, height, strict=True) if pd.notna(w) and pd.notna(h)}


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
        sha = file_sha256(path)
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
                "phash": phash.to_hex(bits, size=phash_size) if bits is not None else None,
                "exact_test": test_index.sha256.get(sha),
            }
        )
        if bits is not None:
            packed.append(bits)
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
        FrameError: a file's schema reads but its rows do not (names the file).
    """
    parts = []
    for path in files:
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=rows_per_file, columns=prediction_log.SCHEMA.names)
            first = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise FrameError(f"{path}: prediction log rows are not readable ({exc})") from exc
        if first is None:
            continue
        part = first.to_pandas()
        part.insert(0, "file", str(path))
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["file", *prediction_log.SCHEMA.names])
    return pd.concat(parts, ignore_index=True)


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
