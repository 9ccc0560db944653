"""YOLO-format labeled image sets: listing, the one label parser and writer, strict reading and validation.

A set is a folder with ``images/`` and ``labels/`` side by side (Ultralytics' layout); the label of
``images/x.png`` is ``labels/x.txt`` with lines ``class cx cy w h`` (normalised). An *empty* label
file means "no objects"; a *missing* label file is an error (an unlabeled image must not silently
count as background). Every error names the file and line.

One parser, two modes: :func:`parse_label_text` / :func:`read_label_lines` are lenient (every line comes back,
a bad one with its ``error``; the validate stage reports them all), :func:`read_label_file` is strict (the first
bad line raises :class:`DatasetError`). :func:`format_label_text` is the one writer (the world renderer and the
label stage write through it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from tasks.config import VisionloopError
from tasks.core.pixels import to_rgb, upright_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Normalised corners may miss 0 or 1 by float rounding (cx - w/2 with cx = w/2).
COORD_TOL = 1e-6


class DatasetError(VisionloopError, ValueError):
    """A labeled set is malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class LabeledImage:
    """One image and its ground truth.

    Attributes:
        image_id: file stem, unique within a set.
        path: image file.
        width, height: pixels.
        class_id: ``(N,)`` int class ids.
        boxes_xywhn: ``(N, 4)`` YOLO normalised centre boxes.
    """

    image_id: str
    path: Path
    width: int
    height: int
    class_id: npt.NDArray[np.int64]
    boxes_xywhn: npt.NDArray[np.float64]


def list_images(images_dir: Path) -> list[Path]:
    """Return the image files of a folder, sorted by name."""
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: image folder not found")
    return sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def image_size(path: Path) -> tuple[int, int]:
    """Return ``(width, height)`` as shown (EXIF orientation applied, :func:`tasks.core.pixels.upright_size`) after
    fully decoding the image (catches truncation)."""
    try:
        with Image.open(path) as img:
            img.load()
            return upright_size(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated image ({exc})") from None


def load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """Decode an image to an ``(H, W, 3)`` uint8 RGB array (:func:`tasks.core.pixels.to_rgb`); errors name the file."""
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated image ({exc})") from None


@dataclass(frozen=True)
class LabelLine:
    """One non-blank line of a YOLO label file, as :func:`parse_label_text` read it.

    Attributes:
        line: 1-based line number.
        class_id: class index, None when the line does not parse.
        xywhn: ``(cx, cy, w, h)`` normalised centre box (NaN kept: the caller's checks see it), None when the line
            does not parse.
        error: why the line does not parse, else None.
    """

    line: int
    class_id: int | None
    xywhn: tuple[float, float, float, float] | None
    error: str | None = None


def parse_label_text(text: str) -> list[LabelLine]:
    """Parse YOLO label text leniently: a bad line becomes a :class:`LabelLine` with ``error``, never an exception.

    This is the one parser: :func:`read_label_file` (strict) and the validate stage (which reports every problem
    of every file) both read through it.

    Args:
        text: the label file's content; blank lines are skipped (their numbers still count).

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
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is not part of line 1
    except UnicodeDecodeError as exc:
        return [LabelLine(1, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
    return parse_label_text(text)


def line_problem(item: LabelLine, *, num_classes: int) -> str | None:
    """What is wrong with one parsed line for a set of ``num_classes`` classes (None: a valid box).

    A valid box has a class in ``[0, num_classes)``, finite coordinates, positive width and height, and corners
    inside [0, 1] (within :data:`COORD_TOL`).
    """
    if item.error is not None or item.class_id is None or item.xywhn is None:
        return item.error or "does not parse"
    if not 0 <= item.class_id < num_classes:
        return f"class {item.class_id} not in classes [0..{num_classes - 1}]"
    cx, cy, w, h = item.xywhn
    if not all(math.isfinite(v) for v in item.xywhn):
        return f"box {list(item.xywhn)} is not finite"
    if w <= 0 or h <= 0:
        return f"zero-area box (w={w}, h={h})"
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if min(x1, y1) < -COORD_TOL or max(x2, y2) > 1 + COORD_TOL:
        return f"box {list(item.xywhn)} lies outside [0, 1] (normalised xywh expected)"
    return None


def read_label_file(path: Path, *, num_classes: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Read and validate one YOLO label file strictly (the first bad line is an error).

    Returns:
        ``class_id (N,)`` and ``boxes_xywhn (N, 4)``.

    Raises:
        DatasetError: missing file, bad line, class out of ``[0, num_classes)``, box outside [0, 1] or zero area;
            the message names the file and line.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: label file missing (an image without objects needs an empty file)")
    classes: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    for item in read_label_lines(path):
        problem = line_problem(item, num_classes=num_classes)
        if problem is not None or item.class_id is None or item.xywhn is None:
            raise DatasetError(f"{path} line {item.line}: {problem}")
        classes.append(item.class_id)
        boxes.append(item.xywhn)
    return np.asarray(classes, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def format_label_text(class_id: npt.ArrayLike, boxes_xywhn: npt.ArrayLike) -> str:
    """The one YOLO label writer: one ``class cx cy w h`` line per box, 6 decimals; ``""`` for no objects.

    Args:
        class_id: ``(N,)`` class indices.
        boxes_xywhn: ``(N, 4)`` normalised centre boxes.
    """
    classes = np.asarray(class_id).reshape(-1)
    boxes = np.asarray(boxes_xywhn, dtype=np.float64).reshape(-1, 4)
    return "".join(
        f"{int(c)} {b[0]:.6f} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f}\n" for c, b in zip(classes, boxes, strict=True)
    )


def label_path_for(image_path: Path, labels_dir: Path) -> Path:
    """Return the label file that belongs to an image."""
    return labels_dir / f"{image_path.stem}.txt"


def read_labeled_set(root: Path, *, num_classes: int) -> list[LabeledImage]:
    """Read and validate a whole YOLO set (``root/images`` + ``root/labels``).

    Raises:
        DatasetError: on the first bad image or label, naming it.
    """
    images = list_images(root / "images")
    if not images:
        raise DatasetError(f"{root / 'images'}: no images found")
    out = []
    seen: dict[str, Path] = {}
    for path in images:
        if path.stem in seen:
            raise DatasetError(f"{path}: image id {path.stem!r} also used by {seen[path.stem]}")
        seen[path.stem] = path
        width, height = image_size(path)
        cls, boxes = read_label_file(label_path_for(path, root / "labels"), num_classes=num_classes)
        out.append(LabeledImage(path.stem, path, width, height, cls, boxes))
    return out
