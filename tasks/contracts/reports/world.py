"""``reports/world.json``: what the world stage rendered (a DVC metrics file).

The world stage writes a :class:`WorldReport` with :func:`tasks.contracts.reports.write_report`; readers use
``load_report(reports, "world")``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldReport:
    """Counts of the rendered world, per set (``train``, ``val``, ``golden``) and per production batch id.

    Attributes:
        stage: always ``"world"``.
        params_digest: ``Params.digest()`` of the run (the top-level ``params`` stamp repeats it).
        seed: ``base.seed``.
        counts: images per set / batch.
        boxes: labeled boxes per set / batch.
        boxes_per_class: class name -> labeled boxes, per set / batch (every class present, zeros included).
        empty_images: images with an empty label file, per set / batch.
        dropped_objects: objects drawn but unlabeled (hidden or too small), per set / batch.
        severity: drift severity per production batch id.
        wall_time_s: seconds the whole render took.
    """

    stage: str
    params_digest: str
    seed: int
    counts: dict[str, int]
    boxes: dict[str, int]
    boxes_per_class: dict[str, dict[str, int]]
    empty_images: dict[str, int]
    dropped_objects: dict[str, int]
    severity: dict[str, float]
    wall_time_s: float
