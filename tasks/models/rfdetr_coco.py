"""RF-DETR's view of the project's data: COCO files beside links to the YOLO images (no image copies).

rfdetr reads COCO (``<root>/{train,valid,test}/_annotations.coco.json`` with the images in the same folder); the
train stage hands every family YOLO layout (:class:`~tasks.models.base.TrainData`: folders, or list files whose
repeats weight recent images). :func:`write_coco_view` turns one into the other with a symbolic link per listed
entry, boxes converted from the YOLO labels.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from tasks.contracts.yolo_labels import IMAGE_SUFFIXES, DatasetError, read_label_file
from tasks.core.pixels import upright_size
from tasks.io import write_json_atomic
from tasks.models.base import TrainData

log = logging.getLogger(__name__)

ANNOTATIONS = "_annotations.coco.json"


def _list_entries(entry: Path) -> list[Path]:
    """The images of a folder (sorted), or of a list file (one path a line, in order, repeats kept)."""
    if entry.is_dir():
        return sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not entry.is_file():
        raise DatasetError(f"{entry}: training images not found (a folder or a list file)")
    return [Path(line.strip()) for line in entry.read_text().splitlines() if line.strip()]


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    head, sep, tail = str(image).rpartition(f"{os.sep}images{os.sep}")
    if not sep:
        raise DatasetError(f"{image}: not inside an images/ folder, so it has no labels/ folder beside it")
    return Path(f"{head}{os.sep}labels{os.sep}{tail}").with_suffix(".txt")


def write_coco_split(images: Sequence[Path], folder: Path, *, classes: Sequence[str]) -> dict[str, int]:
    """One split of the COCO view: a symbolic link per entry (repeats get their own) and ``_annotations.coco.json``.

    Boxes come from the YOLO label beside each image (normalised ``cx, cy, w, h`` -> COCO ``x, y, w, h`` pixels of
    the image as shown); sizes are read from the image header, without decoding it. Link names are
    ``<entry index>_<file name>``, so an image listed ``n`` times is ``n`` images to the trainer (recency weighting).

    Returns:
        The counts written: ``images`` (entries) and ``boxes``.

    Raises:
        DatasetError: an image or its label file is missing or invalid (the message names it).
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    boxes: list[dict[str, Any]] = []
    for index, image in enumerate(images):
        source = image.absolute()
        try:
            with Image.open(source) as img:
                width, height = upright_size(img)
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{source}: unreadable image ({exc})") from None
        class_id, xywhn = read_label_file(label_path(source), num_classes=len(classes))
        name = f"{index:07d}_{source.name}"
        (folder / name).symlink_to(source)
        entries.append({"id": index, "file_name": name, "width": width, "height": height})
        for cls, (cx, cy, w, h) in zip(class_id.tolist(), xywhn.tolist(), strict=True):
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            boxes.append(
                {
                    "id": len(boxes) + 1,
                    "image_id": index,
                    "category_id": int(cls),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    # flat categories, ids = class ids: rfdetr's label remapping (sorted ids -> 0..n-1) is then the identity
    categories = [{"id": i, "name": name, "supercategory": "none"} for i, name in enumerate(classes)]
    write_json_atomic(folder / ANNOTATIONS, {"images": entries, "annotations": boxes, "categories": categories})
    return {"images": len(entries), "boxes": len(boxes)}


def write_coco_view(data: TrainData, root: Path) -> Path:
    """RF-DETR's dataset folder: ``root/{train,valid}`` (:func:`write_coco_split`), ``root/test`` -> ``valid``.

    Returns:
        ``root`` (rfdetr's ``dataset_dir``).
    """
    root.mkdir(parents=True, exist_ok=True)
    counts = {
        split: write_coco_split(_list_entries(entry), root / split, classes=data.classes)
        for split, entry in (("train", data.train), ("valid", data.val))
    }
    test = root / "test"
    if test.is_symlink() or test.is_file():
        test.unlink()
    elif test.is_dir():
        shutil.rmtree(test)
    test.symlink_to("valid", target_is_directory=True)  # rfdetr looks for it; the stage never tests on it
    log.info("rfdetr COCO view in %s: %s", root, counts)
    return root
