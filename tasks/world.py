"""Stage ``world``: a deterministic synthetic detection world with drifting production batches.

Contract:
    Inputs: ``params.base`` (``seed``, ``classes``, ``paths``) and ``params.world`` (image size, set sizes,
        source :class:`~tasks.config.RenderSettings`, drift scenarios, production stream). No files are read.
    Outputs (YOLO layout, one PNG + one ``.txt`` per image; lines ``class_id cx cy w h`` normalised, 6 decimals;
    an image without visible objects has an *empty* label file):
        - ``paths.train/{images,labels}`` and ``paths.val/{images,labels}``: historical source-domain sets;
        - ``paths.golden/{images,labels}``: frozen source-domain test set (its own seed stream, so changing
          ``train_images`` never changes it);
        - ``paths.production/<YYYY-MM-DD>/images``: dated production batches, source domain before
          ``production.drift_start``, then drifting by severity; each batch's images are split between
          ``production.sources`` (cameras / lines with their own scenario and severity scale), named in
          ``paths.production/<YYYY-MM-DD>/sources.csv`` (``image_id,source``, one row per image);
        - with ``base.storage.production`` set (``s3://bucket/prefix``): ``paths.production`` is only the local
          staging folder; each batch folder (images + ``sources.csv``) is then uploaded to
          ``<storage.production>/<YYYY-MM-DD>/`` (:func:`tasks.adapters.image_store.upload_batch`: files already
          there with the same size and content are skipped, so a re-run costs one listing per batch);
        - ``paths.oracle/<YYYY-MM-DD>/labels``: their ground truth, never next to the production images;
        - ``paths.world/manifest.json``: seed, classes, counts, and per batch the scenario, severity and the
          effective render settings, plus per source (``sources``) its images, scenario, severity and settings
          (deterministic: no paths, no timestamps);
        - ``paths.reports/world.json``: :class:`~tasks.contracts.reports.world.WorldReport` (counts, boxes per
          class per set, wall time) with the params stamp.
    Side effects: each set is rendered into a temporary sibling folder and swapped into place when complete,
        replacing the previous output; a crash leaves the previous output untouched.

Image file names are unique across the whole world (``train_000123.png``, ``golden_000007.png``,
``2026-11-02_000042.png``) because downstream stages use file stems as image ids. Same params give
byte-identical PNGs and labels (see :mod:`tasks.sim.sets`).

This is the one stage that imports ``tasks.sim``: it *generates* the demo's data, so the renderer
(:mod:`tasks.sim.world`, :mod:`tasks.sim.sets`) and the drift rules (:mod:`tasks.sim.drift`) are its own
domain code. Every other stage reads the folders it writes and never the simulator.

With ``world.enabled: false`` nothing is rendered; the stage checks that the configured folders exist
(the user brings their own YOLO data).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.adapters import image_store
from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts.reports import write_report
from tasks.contracts.reports.world import WorldReport
from tasks.io import replace_dir, write_json_atomic
from tasks.sim.drift import effective_settings, merge_scenarios, plan_sources, stream_severities
from tasks.sim.sets import SOURCES_CSV, SetSummary, render_batch, render_set, set_seed
from tasks.sim.world import WorldError, check_backgrounds, check_classes

__all__ = ["STAGE", "WorldError", "WorldResult", "main", "run"]

logger = logging.getLogger(__name__)

STAGE = "world"
_SETS = ("train", "val", "golden", "production", "oracle")


@contextmanager
def _staging_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging sibling of ``target``; on success it replaces ``target``, on error it is deleted."""
    staging = target.with_name(f".{target.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)  # left by a crashed run
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, target)


@dataclass(frozen=True)
class WorldResult:
    """What the stage produced (or, with ``world.enabled: false``, found).

    Attributes:
        rendered: False when the world was disabled and existing folders were only checked.
        sets: set name (``train``, ``val``, ``golden``, ``production``, ``oracle``) -> folder.
        counts: set name (``train``, ``val``, ``golden``, each batch id) -> images.
        batch_ids: production batch ids (ISO dates), oldest first.
        manifest: ``paths.world/manifest.json`` (None when not rendered).
        report: ``paths.reports/world.json`` (None when not rendered).
        summaries: set name / batch id -> :class:`~tasks.sim.sets.SetSummary` (empty when not rendered).
    """

    rendered: bool
    sets: dict[str, Path]
    counts: dict[str, int]
    batch_ids: tuple[str, ...]
    manifest: Path | None = None
    report: Path | None = None
    summaries: dict[str, SetSummary] = field(default_factory=dict)


def _check_world(params: Params) -> None:
    world = params.world
    check_classes(params.base.classes)
    check_backgrounds(world.source.backgrounds, where="world.source.backgrounds")
    for name, scenario in world.scenarios.items():
        check_backgrounds(scenario.backgrounds or [], where=f"world.scenarios.{name}.backgrounds")
    merge_scenarios(world.source, world.scenarios, world.production.scenario)
    for spec in world.production.sources.values():
        if spec.scenario is not None:
            merge_scenarios(world.source, world.scenarios, spec.scenario)


def _check_existing(params: Params) -> WorldResult:
    """``world.enabled: false``: the user's YOLO folders must exist; count what is there."""
    paths = params.base.paths
    counts: dict[str, int] = {}
    for name in ("train", "val", "golden"):
        root = getattr(paths, name)
        for sub in ("images", "labels"):
            if not (root / sub).is_dir():
                raise WorldError(
                    f"world.enabled is false but {root / sub} does not exist: put your YOLO set there "
                    f"(base.paths.{name}) or set world.enabled: true to render the synthetic world"
                )
        counts[name] = sum(1 for p in (root / "images").iterdir() if p.is_file())
    batch_ids = []
    location = params.base.storage.production
    if location is not None:  # the user's batches live on S3: count what is there
        for batch in image_store.list_batches(location):
            batch_ids.append(batch)
            counts[batch] = len(image_store.list_batch_images(location, batch))
    elif paths.production.is_dir():
        for folder in sorted(paths.production.iterdir()):
            try:
                dt.date.fromisoformat(folder.name)
            except ValueError:
                continue
            batch_ids.append(folder.name)
            counts[folder.name] = sum(1 for p in (folder / "images").glob("*") if p.is_file())
    logger.info("world disabled: found %s", counts)
    sets = {name: getattr(paths, name) for name in _SETS}
    return WorldResult(rendered=False, sets=sets, counts=counts, batch_ids=tuple(batch_ids))


def _log_set(name: str, summary: SetSummary, seconds: float) -> None:
    logger.info(
        "%s: %d images, %d boxes, %d empty, %d dropped in %.1f s",
        name,
        summary.images,
        summary.boxes,
        summary.empty_images,
        summary.dropped_objects,
        seconds,
    )


def _render_source_sets(params: Params) -> dict[str, SetSummary]:
    """Render the historical ``train``/``val`` sets and the ``golden`` set from the source settings."""
    base, world = params.base, params.world
    summaries: dict[str, SetSummary] = {}
    for name, count in (("train", world.train_images), ("val", world.val_images), ("golden", world.golden_images)):
        t0 = time.perf_counter()
        with _staging_dir(getattr(base.paths, name)) as tmp:
            summaries[name] = render_set(
                world.source,
                n=count,
                classes=base.classes,
                image_size=world.image_size,
                seed=set_seed(base.seed, name),
                prefix=name,
                images_dir=tmp / "images",
                labels_dir=tmp / "labels",
            )
        _log_set(name, summaries[name], time.perf_counter() - t0)
    return summaries


def _render_production(params: Params) -> tuple[dict[str, SetSummary], list[dict[str, Any]]]:
    """Render the dated production batches (images) and their oracle labels; return summaries and manifest rows."""
    base, world = params.base, params.world
    stream = world.production
    severities = stream_severities(
        start=stream.severity_start, end=stream.severity_end, batches=stream.batches, drift_start=stream.drift_start
    )
    summaries: dict[str, SetSummary] = {}
    batches: list[dict[str, Any]] = []
    with _staging_dir(base.paths.production) as prod_tmp, _staging_dir(base.paths.oracle) as oracle_tmp:
        for i, severity in enumerate(severities):
            batch_id = (stream.start_date + dt.timedelta(days=i)).isoformat()
            settings = effective_settings(world.source, world.scenarios, stream.scenario, severity)
            plans = plan_sources(
                world.source,
                world.scenarios,
                stream.sources,
                scenario=stream.scenario,
                severity=severity,
                images=stream.images_per_batch,
            )
            t0 = time.perf_counter()
            summaries[batch_id] = render_batch(
                plans,
                classes=base.classes,
                image_size=world.image_size,
                seed=set_seed(base.seed, f"production/{batch_id}"),
                prefix=batch_id,
                images_dir=prod_tmp / batch_id / "images",
                labels_dir=oracle_tmp / batch_id / "labels",
                sources_csv=prod_tmp / batch_id / SOURCES_CSV,
            )
            _log_set(f"batch {batch_id} (severity {severity:.2f})", summaries[batch_id], time.perf_counter() - t0)
            batches.append(
                {
                    "id": batch_id,
                    "date": batch_id,
                    "scenario": list(stream.scenario),
                    "severity": round(severity, 6),
                    "images": stream.images_per_batch,
                    "settings": settings.model_dump(mode="json"),
                    "sources": [plan.manifest_row() for plan in plans],
                }
            )
    return summaries, batches


def upload_production(params: Params, batch_ids: list[str]) -> list[image_store.UploadedBatch]:
    """Upload the rendered batches from the staging folder to ``base.storage.production`` (nothing when unset).

    Raises:
        S3Error: the bucket is missing, the credentials are refused or the endpoint is down (names the endpoint).
    """
    location = params.base.storage.production
    if location is None:
        return []
    done = [image_store.upload_batch(params.base.paths.production / batch, location) for batch in batch_ids]
    new, kept = sum(len(d.uploaded) for d in done), sum(len(d.skipped) for d in done)
    logger.info("world: %d batches -> %s (%d files uploaded, %d already there)", len(done), location, new, kept)
    return done


def run(params: Params) -> WorldResult:
    """Render the whole world (historical train/val, golden, production batches + oracle labels).

    Args:
        params: validated params; reads ``base`` and ``world``.

    Returns:
        A :class:`WorldResult` with the folders, counts and batch ids.

    Raises:
        WorldError: unknown class shape, background kind or scenario (before anything is written), or, when
            ``world.enabled`` is false, a configured folder that does not exist.
    """
    if not params.world.enabled:
        return _check_existing(params)
    _check_world(params)
    started = time.perf_counter()
    base, world, paths = params.base, params.world, params.base.paths
    summaries = _render_source_sets(params)
    production, batches = _render_production(params)
    summaries |= production
    upload_production(params, [b["id"] for b in batches])

    counts = {name: summary.images for name, summary in summaries.items()}
    manifest = {
        "stage": STAGE,
        "seed": base.seed,
        "classes": list(base.classes),
        "image_size": list(world.image_size),
        "counts": counts,
        "source": world.source.model_dump(mode="json"),
        "batches": batches,
    }
    manifest_path = write_json_atomic(paths.world / "manifest.json", manifest)
    report = WorldReport(
        stage=STAGE,
        params_digest=params.digest(),
        seed=base.seed,
        counts=counts,
        boxes={name: s.boxes for name, s in summaries.items()},
        boxes_per_class={name: s.boxes_per_class for name, s in summaries.items()},
        empty_images={name: s.empty_images for name, s in summaries.items()},
        dropped_objects={name: s.dropped_objects for name, s in summaries.items()},
        severity={b["id"]: b["severity"] for b in batches},
        wall_time_s=round(time.perf_counter() - started, 3),
    )
    report_path = write_report(paths.reports, STAGE, report, params)
    logger.info("world: %d images in %.1f s -> %s", sum(counts.values()), report.wall_time_s, paths.world)
    return WorldResult(
        rendered=True,
        sets={name: getattr(paths, name) for name in _SETS},
        counts=counts,
        batch_ids=tuple(b["id"] for b in batches),
        manifest=manifest_path,
        report=report_path,
        summaries=summaries,
    )


def main(argv: list[str] | None = None) -> WorldResult:
    """``python -m tasks.world --params PATH [--params OVERLAY ...]``."""

    def _run(params: Params, _args: argparse.Namespace) -> WorldResult:
        return run(params)

    result: WorldResult = stage_main(STAGE, __doc__, _run, argv=argv)
    return result


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
