"""``reports/evaluate.json``: COCO mAP of one model artifact on every set in ``evaluate.sets``.

The evaluate stage writes an :class:`EvaluateReport` with :func:`tasks.contracts.reports.write_report`; the export
stage reads it back with ``load_report(reports, "evaluate")`` (the PyTorch reference mAP of its checks).
:class:`SetEvaluation` is also what :func:`tasks.targets.scoring.evaluate_set` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SetEvaluation:
    """Metrics of one model on one labeled set.

    Attributes:
        set_name: the set's name (a ``base.paths`` entry) or its folder's name.
        path: the YOLO set folder.
        images, boxes: images and ground-truth boxes scored.
        map50_95, map50: COCO mAP (area "all", 100 dets).
        stats: the 12 COCOeval stats by name (``tasks.core.cocoeval.STAT_NAMES``).
        per_class_ap: AP50-95 per class name (-1 where the set has no ground truth of that class).
        ms_per_image: mean wall time per image (pre-processing + network + decoding, in batches).
    """

    set_name: str
    path: str
    images: int
    boxes: int
    map50_95: float
    map50: float
    stats: dict[str, float]
    per_class_ap: dict[str, float]
    ms_per_image: float


@dataclass(frozen=True)
class EvaluateReport:
    """What ``reports/evaluate.json`` holds.

    Attributes:
        model: the artifact scored.
        sets: by set name.
        params_digest: ``Params.digest()`` of the run (the top-level ``params`` stamp repeats it).
        wall_s: seconds the stage took.
        cache_hits, cache_misses: sets whose detections came from the detection cache, sets detected (and
            stored); both 0 with the cache off, in a sharded run, and in reports written before they were recorded.
    """

    model: str
    sets: dict[str, SetEvaluation] = field(default_factory=dict)
    params_digest: str = ""
    wall_s: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0

    def map50_95(self, set_name: str) -> float:
        return self.sets[set_name].map50_95
