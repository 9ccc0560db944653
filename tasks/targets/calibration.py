"""The INT8 calibration sample: seeded training images, letterboxed like inference.

:func:`load_calibration` draws it from ``base.paths.train/images`` per ``export.calibration``; the INT8 builders
(:mod:`tasks.targets.builders`) feed its pixels to the quantizers and the export report records its lineage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tasks.config import Params, VisionloopError
from tasks.contracts.yolo_labels import list_images, load_rgb
from tasks.runtimes.detectors import letterbox

log = logging.getLogger(__name__)


class CalibrationError(VisionloopError, ValueError):
    """The INT8 calibration set is missing, empty or smaller than ``export.calibration.min_images``."""


@dataclass(frozen=True)
class Calibration:
    """The INT8 calibration sample.

    Attributes:
        source: the image folder sampled.
        seed: the sampling seed.
        image_ids: file names relative to ``source``, in the order fed.
        images: ``(N, 3, S, S)`` float32 in [0, 1], letterboxed like inference (not written to reports).
    """

    source: str
    seed: int
    image_ids: list[str]
    images: npt.NDArray[np.float32] = field(repr=False)

    def lineage(self) -> dict[str, Any]:
        """What the report records about the sample (everything but the pixels)."""
        return {"source": self.source, "seed": self.seed, "count": len(self.image_ids), "image_ids": self.image_ids}


def load_calibration(params: Params) -> Calibration:
    """Draw the seeded calibration sample from ``base.paths.train/images`` and letterbox it to ``base.imgsz``.

    Raises:
        CalibrationError: the folder is missing, empty, or holds fewer than ``export.calibration.min_images``.
    """
    cfg = params.export.calibration
    root = params.base.paths.train / "images"
    paths = list_images(root) if root.is_dir() else []
    if len(paths) < cfg.min_images:
        found = "folder not found" if not root.is_dir() else f"{len(paths)} image(s)"
        raise CalibrationError(
            f"{root}: {found} for INT8 calibration, export.calibration.min_images is {cfg.min_images}; "
            "add training images (base.paths.train) or lower export.calibration.min_images"
        )
    seed = params.base.seed if cfg.seed is None else cfg.seed
    picked = sorted(np.random.default_rng(seed).choice(len(paths), size=min(cfg.images, len(paths)), replace=False))
    if len(picked) < cfg.images:
        log.warning("calibration: only %d training images, export.calibration.images is %d", len(picked), cfg.images)
    chosen = [paths[int(i)] for i in picked]
    images = np.stack([letterbox(load_rgb(p), params.base.imgsz)[0] for p in chosen])
    return Calibration(
        source=str(root), seed=seed, image_ids=[p.relative_to(root).as_posix() for p in chosen], images=images
    )
