"""YOLO-format labeled image sets: listing, strict reading and validation.

A set is a folder with ``images/`` and ``labels/`` side by side (Ultralytics' layout); the label of
``images/x.png`` is ``labels/x.txt`` with lines ``class cx cy w h`` (normalised). An *empty* label
file means "no objects"; a *missing* label file is an error (an unlabeled image must not silently
count as background). Every error names the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
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
    """Return ``(width, height)`` after fully decoding the image (catches truncation)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated image ({exc})") from None


def load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """Decode an image to an ``(H, W, 3)`` uint8 RGB array; errors name the file."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated image ({exc})") from None


def read_label_file(path: Path, *, num_classes: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Read and validate one YOLO label file.

    Returns:
        ``class_id (N,)`` and ``boxes_xywhn (N, 4)``.

    Raises:
        DatasetError: missing file, bad line, class out of ``[0, num_classes)``, box outside [0, 1] or zero area.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: label file missing (an image without objects needs an empty file)")
    classes: list[int] = []
    boxes: list[list[float]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path} line {lineno}"
        if len(fields) != 5:
            raise DatasetError(f"{where}: expected 'class cx cy w h', got {len(fields)} fields")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DatasetError(f"{where}: not numbers: {line.strip()!r}") from None
        if not 0 <= cls < num_classes:
            raise DatasetError(f"{where}: class {cls} not in classes [0..{num_classes - 1}]")
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: zero-area box (w={w}, h={h})")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        tol = 1e-6
        if min(x1, y1) < -tol or max(x2, y2) > 1 + tol:
            raise DatasetError(f"{where}: box {fields[1:]} lies outside [0, 1] (normalised xywh expected)")
        classes.append(cls)
        boxes.append([cx, cy, w, h])
    return np.asarray(classes, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


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
