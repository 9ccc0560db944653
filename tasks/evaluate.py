"""Stage ``evaluate``: COCO mAP of any model artifact on labeled image sets.

Contract:
    inputs: a model artifact (``.pt``, ``.onnx`` or OpenVINO; default ``<models>/train/best.pt``) and the
        YOLO-format sets named in ``evaluate.sets`` (``base.paths`` entries);
    params: ``base`` (classes, imgsz, device, paths), ``evaluate``, ``base.threads``;
    outputs: ``<reports>/evaluate.json`` (:class:`~tasks.contracts.reports.evaluate.EvaluateReport`) with
        mAP50-95, mAP50, the 12 COCO stats and per-class AP per set, and how many sets the detection cache held;
    side effects: the detection cache (``evaluate.cache``: ``<models>/../.cache/detections``; read and written
        per set, sharded or not).

Metrics come from faster-coco-eval (identical to pycocotools, :mod:`tasks.core.cocoeval`); detections from
:mod:`tasks.runtimes.detectors` through :func:`tasks.targets.scoring.evaluate_set`, so every artifact format is
scored by the same code.

Shards (``evaluate.shards`` > 1): :func:`plan` reads the sets once and cuts their images into at most that many
shards of whole ``evaluate.batch`` chunks (:mod:`tasks.core.shards`), leaving out the sets the detection cache
holds; :func:`run_shard` detects one shard, opening the model once; :func:`combine` scores each set from its
detections in image order with the same COCO code, so the numbers equal the single-process run's, and stores the
sets the shards detected. A shard's session runs ``threads`` intra-op threads, part of the cache key: a sharded
run and a single-process one with other thread counts do not share entries. :func:`run` does the three in this
process; ``flows/fanout.py`` maps :func:`run_shard` over Dask workers (``base.dask``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts.reports import write_report
from tasks.contracts.reports.evaluate import EvaluateReport, SetEvaluation
from tasks.contracts.yolo_labels import LabeledImage, load_rgb, read_labeled_set
from tasks.core import shards
from tasks.runtimes.detectors import Detections, load_detector, predict_images
from tasks.targets.scoring import (
    DetectionCache,
    cache_keys,
    cached_detections,
    default_model_path,
    detection_cache_of,
    evaluate_set,
    inference_settings,
    score_detections,
    store_detections,
)

log = logging.getLogger(__name__)

STAGE = "evaluate"


@dataclass(frozen=True)
class EvaluateShard:
    """A contiguous run of whole chunks of ``evaluate.batch`` images: ``(set name, images)`` per chunk, in order."""

    index: int
    chunks: tuple[tuple[str, tuple[LabeledImage, ...]], ...]


@dataclass(frozen=True)
class EvaluatePlan:
    """What the shards of one evaluation need (picklable, no model): the artifact, the sets read once, the shards.

    ``keys``: each set's detection-cache key (``None``: cache off); ``cached``: the sets the cache held, as
    ``(detections, ms per image)``, cut out of the shards.
    """

    model_path: Path
    threads: int
    sets: dict[str, tuple[Path, tuple[LabeledImage, ...]]]
    shards: tuple[EvaluateShard, ...]
    started: float
    keys: dict[str, str | None] = dataclasses.field(default_factory=dict)
    cached: dict[str, tuple[list[Detections], float]] = dataclasses.field(default_factory=dict)

    def for_shards(self) -> EvaluatePlan:
        """What each shard gets: the artifact and its threads (not every shard's images, sets or cached sets)."""
        return dataclasses.replace(self, sets={}, shards=(), keys={}, cached={})


@dataclass(frozen=True)
class ShardDetections:
    """One shard's detections: per chunk, ``(set name, detections in image order, model ms for the chunk)``."""

    index: int
    chunks: tuple[tuple[str, tuple[Detections, ...], float], ...]


def plan(params: Params, *, model_path: Path | None = None, threads: int | None = None) -> EvaluatePlan:
    """Read every set in ``evaluate.sets`` once and cut their images into at most ``evaluate.shards`` shards.

    ``threads``: intra-op threads of each shard's session (default ``base.threads``; ``base.dask.threads`` when
    a flow fans out).
    """
    started = time.time()
    threads = threads or params.base.threads
    model_path = model_path or default_model_path(params)
    sets = {}
    for name in params.evaluate.sets:
        root = getattr(params.base.paths, name)
        sets[name] = (root, tuple(read_labeled_set(root, num_classes=len(params.base.classes))))
    cache = detection_cache_of(params)
    settings = dataclasses.replace(inference_settings(params), threads=threads)
    groups = [images for _, images in sets.values()]
    keys = dict(
        zip(sets, cache_keys(model_path, groups, settings, batch=params.evaluate.batch, cache=cache), strict=True)
    )
    cached = {name: found for name in sets if (found := cached_detections(cache, keys[name], len(sets[name][1])))}
    planned = shards.plan_shards(
        [(name, len(images)) for name, (_, images) in sets.items() if name not in cached],
        chunk=params.evaluate.batch,
        shards=params.evaluate.shards,
    )
    return EvaluatePlan(
        model_path=model_path,
        threads=threads,
        sets=sets,
        shards=tuple(
            EvaluateShard(i, tuple((c.group, sets[c.group][1][c.start : c.stop]) for c in chunks))
            for i, chunks in enumerate(planned)
        ),
        started=started,
        keys=keys,
        cached=cached,
    )


def run_shard(params: Params, plan: EvaluatePlan, shard: EvaluateShard) -> ShardDetections:
    """Detect one shard's images, chunk by chunk as the single-process run does, with the model opened once."""
    settings = dataclasses.replace(inference_settings(params), threads=plan.threads)
    detector = load_detector(plan.model_path, settings)
    chunks = []
    for name, images in shard.chunks:
        detections, ms = predict_images(detector, [load_rgb(item.path) for item in images])
        chunks.append((name, tuple(detections), ms))
    log.info("shard %d: %d images", shard.index, sum(len(images) for _, images in shard.chunks))
    return ShardDetections(shard.index, tuple(chunks))


def combine(
    params: Params, plan: EvaluatePlan, results: list[ShardDetections], *, report_path: Path | None = None
) -> EvaluateReport:
    """Score every set from its shards' detections (in image order, whatever order the shards finished in).

    Raises:
        ValueError: the results are not exactly the plan's shards.
    """
    indices = sorted(r.index for r in results)
    if indices != [s.index for s in plan.shards]:
        raise ValueError(f"evaluate: shard results {indices} do not match the plan's {len(plan.shards)} shards")
    found: dict[str, list[Detections]] = {name: [] for name in plan.sets}
    total_ms = dict.fromkeys(plan.sets, 0.0)
    for result in sorted(results, key=lambda r: r.index):
        for name, detections, ms in result.chunks:
            found[name] += detections
            total_ms[name] += ms
    cache = dataclasses.replace(detection_cache_of(params), hits=len(plan.cached))
    sets = {}
    for name, (root, images) in plan.sets.items():
        if name in plan.cached:
            dets, ms = plan.cached[name]
        else:
            dets, ms = found[name], total_ms[name] / max(len(images), 1)
            store_detections(cache, plan.keys.get(name), (dets, ms))
        sets[name] = score_detections(images, dets, ms, classes=params.base.classes, set_root=root, set_name=name)
        _log_set(plan.model_path, sets[name])
    wall_s = time.time() - plan.started
    return _report(params, plan.model_path, sets, wall_s=wall_s, report_path=report_path, cache=cache)


def run(params: Params, *, model_path: Path | None = None, report_path: Path | None = None) -> EvaluateReport:
    """Evaluate a model artifact on every set in ``evaluate.sets`` and write the report.

    Args:
        params: validated config.
        model_path: artifact to score (default: the ``train`` stage's ``best.pt``).
        report_path: where to write JSON (default ``<reports>/evaluate.json``; ``None`` keeps the default).
    """
    if params.evaluate.shards > 1:  # the fan-out's plan → shards → combine, here one shard after another
        planned = plan(params, model_path=model_path)
        results = [run_shard(params, planned, shard) for shard in planned.shards]
        return combine(params, planned, results, report_path=report_path)
    model_path = model_path or default_model_path(params)
    settings = inference_settings(params)
    start = time.perf_counter()
    cache = detection_cache_of(params)
    sets = {}
    for name in params.evaluate.sets:
        root = getattr(params.base.paths, name)
        sets[name] = evaluate_set(
            model_path,
            root,
            classes=params.base.classes,
            settings=settings,
            batch=params.evaluate.batch,
            set_name=name,
            cache=cache,
        )
        _log_set(model_path, sets[name])
    wall_s = time.perf_counter() - start
    return _report(params, model_path, sets, wall_s=wall_s, report_path=report_path, cache=cache)


def _log_set(model_path: Path, scored: SetEvaluation) -> None:
    log.info(
        "%s on %s: mAP50-95 %.4f  mAP50 %.4f  (%d images)",
        model_path.name,
        scored.set_name,
        scored.map50_95,
        scored.map50,
        scored.images,
    )


def _report(
    params: Params,
    model_path: Path,
    sets: dict[str, SetEvaluation],
    *,
    wall_s: float,
    report_path: Path | None,
    cache: DetectionCache | None = None,
) -> EvaluateReport:
    report = EvaluateReport(
        model=str(model_path),
        sets=sets,
        params_digest=params.digest(),
        wall_s=round(wall_s, 2),
        cache_hits=cache.hits if cache else 0,
        cache_misses=cache.misses if cache else 0,
    )
    write_report(params.base.paths.reports, STAGE, report, params, path=report_path)
    return report


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="artifact to score (default: train/best.pt)")


def main(argv: list[str] | None = None) -> EvaluateReport:
    """``python -m tasks.evaluate [--params P ...] [--model PATH]``."""
    report: EvaluateReport = stage_main(
        STAGE,
        __doc__,
        run=lambda params, args: run(params, model_path=args.model),
        arguments=_arguments,
        summary=lambda report: json.dumps({name: round(s.map50_95, 4) for name, s in report.sets.items()}),
        argv=argv,
    )
    return report


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
