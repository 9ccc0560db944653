"""Synthetic YOLO sets: render ``n`` scenes of :mod:`tasks.sim.world` and write them as PNGs + label files.

A demo and test fixture, as the renderer. Every image draws from its own ``numpy`` generator seeded by
``(set seed, image index)`` (:func:`image_seed`, :func:`set_seed`), so the same settings give byte-identical files.
A production batch whose images come from several sources (:func:`render_batch`) renders each source's index range
with its own settings and names every image's source in a ``sources.csv`` sidecar.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tasks.config import RenderSettings
from tasks.contracts.yolo_labels import format_label_text
from tasks.io import write_bytes_atomic
from tasks.sim.drift import SourcePlan
from tasks.sim.world import Scene, check_backgrounds, check_classes, render_scene

SOURCES_CSV = "sources.csv"
"""Sidecar of a production batch folder: ``image_id,source`` per image (the image id is the file stem)."""


def format_yolo_labels(scene: Scene, *, image_size: tuple[int, int]) -> str:
    """Return the YOLO label text of a scene (:func:`tasks.contracts.yolo_labels.format_label_text`)."""
    width, height = image_size
    b = scene.boxes_xyxy.reshape(-1, 4)
    boxes_xywhn = np.stack(
        [(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height, (b[:, 2] - b[:, 0]) / width,
         (b[:, 3] - b[:, 1]) / height],
        axis=1,
    )  # fmt: skip
    return format_label_text(scene.class_id, boxes_xywhn)


@dataclass(frozen=True)
class SetSummary:
    """What :func:`render_set` wrote.

    Attributes:
        images: number of images (and label files).
        boxes: number of labeled boxes.
        boxes_per_class: class name -> labeled boxes (every class present, zeros included).
        empty_images: images with an empty label file.
        dropped_objects: objects drawn but unlabeled (mostly hidden or too small).
    """

    images: int
    boxes: int
    boxes_per_class: dict[str, int]
    empty_images: int
    dropped_objects: int


def image_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed of image ``index`` of a set whose seed is ``seed`` (independent of the set size)."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(index,))


def set_seed(base_seed: int, set_name: str) -> int:
    """Seed of a named set (``train``, ``golden``, a batch date): stable and independent between sets."""
    digest = hashlib.sha256(f"{base_seed}/{set_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def render_set(
    settings: RenderSettings,
    *,
    n: int,
    classes: Sequence[str],
    image_size: tuple[int, int],
    seed: int,
    prefix: str,
    images_dir: Path,
    labels_dir: Path,
    first_index: int = 0,
) -> SetSummary:
    """Render ``n`` images with their YOLO labels (``<prefix>_<index:06d>.png`` / ``.txt``).

    Args:
        settings: render settings for every image of the set.
        n: number of images (0 writes empty folders).
        classes: class names (shape per name from :data:`SHAPES`).
        image_size: ``(width, height)`` in pixels.
        seed: the set's seed; image ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``.
        prefix: file-name prefix, unique across the world (file stems are image ids downstream).
        images_dir: folder for the PNGs (created).
        labels_dir: folder for the label files (created; may be far from ``images_dir``).
        first_index: index of the first image: images ``first_index .. first_index + n - 1`` are rendered, so
            parts of one set rendered with different settings keep their names and seeds.

    Returns:
        A :class:`SetSummary`.

    Raises:
        WorldError: unknown class shape or background kind.
    """
    check_classes(classes)
    check_backgrounds(settings.backgrounds, where=f"{prefix}: backgrounds")
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    per_class = dict.fromkeys(classes, 0)
    empty = dropped = 0
    for index in tqdm(range(first_index, first_index + n), desc=prefix, unit="img", leave=False, disable=None):
        rng = np.random.default_rng(image_seed(seed, index))
        scene = render_scene(settings, classes=classes, image_size=image_size, rng=rng)
        stem = f"{prefix}_{index:06d}"
        # Level 1: sensor noise makes PNGs nearly incompressible; higher levels double the time for ~10% smaller files.
        Image.fromarray(scene.image).save(images_dir / f"{stem}.png", format="PNG", compress_level=1)
        (labels_dir / f"{stem}.txt").write_text(format_yolo_labels(scene, image_size=image_size))
        for cls in scene.class_id:
            per_class[classes[int(cls)]] += 1
        empty += int(scene.class_id.size == 0)
        dropped += scene.dropped
    return SetSummary(
        images=n,
        boxes=sum(per_class.values()),
        boxes_per_class=per_class,
        empty_images=empty,
        dropped_objects=dropped,
    )


def merge_summaries(parts: Iterable[SetSummary]) -> SetSummary:
    """One :class:`SetSummary` for the parts of a set (counts added; every class of the parts present)."""
    parts = list(parts)
    per_class: dict[str, int] = {}
    for part in parts:
        for name, count in part.boxes_per_class.items():
            per_class[name] = per_class.get(name, 0) + count
    return SetSummary(
        images=sum(p.images for p in parts),
        boxes=sum(p.boxes for p in parts),
        boxes_per_class=per_class,
        empty_images=sum(p.empty_images for p in parts),
        dropped_objects=sum(p.dropped_objects for p in parts),
    )


def sources_csv_text(prefix: str, plans: Sequence[SourcePlan]) -> str:
    """The ``sources.csv`` text of a batch: header ``image_id,source``, one row per image in index order."""
    rows = ["image_id,source"]
    for plan in plans:
        rows += [f"{prefix}_{index:06d},{plan.name}" for index in range(plan.first, plan.first + plan.images)]
    return "\n".join(rows) + "\n"


def render_batch(
    plans: Sequence[SourcePlan],
    *,
    classes: Sequence[str],
    image_size: tuple[int, int],
    seed: int,
    prefix: str,
    images_dir: Path,
    labels_dir: Path,
    sources_csv: Path,
) -> SetSummary:
    """Render one production batch whose images come from several sources, and its ``sources.csv``.

    Image ``i`` is named and seeded as in :func:`render_set` (``<prefix>_<i:06d>``, ``image_seed(seed, i)``) and
    drawn with the settings of the source whose index range holds it, so a batch of one source is byte-identical
    to ``render_set`` of the whole batch.

    Args:
        plans: the sources' parts, contiguous and in index order (:func:`tasks.sim.drift.plan_sources`).
        sources_csv: where the ``image_id,source`` sidecar goes (written atomically).
        classes, image_size, seed, prefix, images_dir, labels_dir: as :func:`render_set`.

    Returns:
        The batch's :class:`SetSummary` (all sources together).

    Raises:
        WorldError: unknown class shape or background kind.
    """
    summaries = [
        render_set(
            plan.settings,
            n=plan.images,
            classes=classes,
            image_size=image_size,
            seed=seed,
            prefix=prefix,
            images_dir=images_dir,
            labels_dir=labels_dir,
            first_index=plan.first,
        )
        for plan in plans
    ]
    write_bytes_atomic(sources_csv, sources_csv_text(prefix, plans).encode())
    return merge_summaries(summaries)
