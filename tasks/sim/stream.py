"""Production streams for benchmarks: dated batches that drift from a chosen batch on, or never.

The monitor benchmark (``benchmarks/monitor.py``) needs streams longer than the world's demo stream, one per
scenario with drift starting at a known batch, and a stream without drift to count false alarms. :func:`render_stream`
renders such a stream straight from ``params.world`` (source settings, scenarios, sources) into a folder of its own;
it needs none of the world stage's folders. A demo and test fixture, as :mod:`tasks.sim.world`.

Layout under ``out``, one folder per batch (named by its ISO date, like the world's production batches)::

    <out>/<YYYY-MM-DD>/images/<YYYY-MM-DD>_<index:06d>.png
    <out>/<YYYY-MM-DD>/labels/<YYYY-MM-DD>_<index:06d>.txt   # YOLO ground truth, so a benchmark can also score
    <out>/<YYYY-MM-DD>/sources.csv                           # image_id,source

Determinism: image ``i`` of a batch draws from ``image_seed(set_seed(base.seed, "stream/<seed_salt>/<batch>"), i)``,
so the same ``(base.seed, seed_salt)`` and settings give byte-identical files, and a drifted and a no-drift stream of
the same salt show the same scenes before ``drift_start``.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.config import Params
from tasks.config.world import DEFAULT_SOURCE, SourceSpec
from tasks.io import replace_dir
from tasks.sim.drift import SourcePlan, merge_scenarios, plan_sources, stream_severities
from tasks.sim.sets import SOURCES_CSV, render_batch, set_seed
from tasks.sim.world import WorldError, check_classes

__all__ = ["StreamBatch", "render_stream"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamBatch:
    """One rendered batch of a stream.

    Attributes:
        name: the batch name (its ISO date; also the file-name prefix of its images).
        date: the batch date.
        severity: the batch severity (0 before ``drift_start`` and in a no-drift stream; a source with a
            ``severity_scale`` renders at ``severity * severity_scale``).
        images: folder of the PNGs.
        labels: folder of the YOLO label files (same stems).
    """

    name: str
    date: dt.date
    severity: float
    images: Path
    labels: Path

    @property
    def sources_csv(self) -> Path:
        """The batch's ``image_id,source`` sidecar."""
        return self.images.parent / SOURCES_CSV


def _severities(severity: float | tuple[float, float], *, batches: int, drift_start: int | None) -> list[float]:
    start, end = (severity, severity) if isinstance(severity, int | float) else severity
    for value in (start, end):
        if not 0.0 <= value <= 1.0:
            raise WorldError(f"stream severity {severity}: every value must lie in [0, 1]")
    return stream_severities(start=float(start), end=float(end), batches=batches, drift_start=drift_start)


def _render_batch_into(params: Params, plans: Sequence[SourcePlan], *, seed: int, folder: Path) -> None:
    """Render one batch into a staging sibling of ``folder`` and swap it into place when complete."""
    staging = folder.with_name(f".{folder.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)  # left by a crashed run
    try:
        render_batch(
            plans,
            classes=params.base.classes,
            image_size=params.world.image_size,
            seed=seed,
            prefix=folder.name,
            images_dir=staging / "images",
            labels_dir=staging / "labels",
            sources_csv=staging / SOURCES_CSV,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, folder)


def render_stream(
    params: Params,
    *,
    out: Path,
    scenario: Sequence[str],
    batches: int,
    images_per_batch: int,
    drift_start: int | None,
    severity: float | tuple[float, float],
    seed_salt: str,
    start_date: dt.date | None = None,
    sources: Mapping[str, SourceSpec] | None = None,
) -> list[StreamBatch]:
    """Render a dated stream of batches whose drift starts at ``drift_start`` (or never).

    Args:
        params: reads ``base.seed``, ``base.classes`` and ``world`` (image size, source settings, scenarios).
        out: folder of the stream; each batch folder in it is replaced as a whole (other entries are left alone).
        scenario: names from ``world.scenarios``, merged in order (a later one wins on a shared field).
        batches: number of batches (>= 1), one day apart.
        images_per_batch: images per batch (>= 1).
        drift_start: index of the first drifted batch (batches before it are source domain); ``None`` renders a
            stream without drift (every batch source domain).
        severity: one severity for every drifted batch, or ``(start, end)``: linear from ``drift_start`` to the
            last batch; values in [0, 1].
        seed_salt: names the stream's seed stream (e.g. ``"monitor/lighting"``); same salt, same scenes.
        start_date: date of the first batch (default ``world.production.start_date``).
        sources: the stream's sources (default: one ``default`` source taking every image; a source's
            ``scenario: None`` means ``scenario``).

    Returns:
        One :class:`StreamBatch` per batch, oldest first.

    Raises:
        WorldError: ``batches`` or ``images_per_batch`` below 1, ``drift_start`` outside ``[0, batches)``, a severity
            outside [0, 1], an empty ``seed_salt``, an undefined scenario, unknown class shape or background kind
            (all before anything is written).
    """
    world = params.world
    if images_per_batch < 1:
        raise WorldError(f"images_per_batch = {images_per_batch}: a stream batch needs at least one image")
    if not seed_salt:
        raise WorldError("seed_salt is empty: name the stream's seed stream, e.g. 'monitor/lighting'")
    severities = _severities(severity, batches=batches, drift_start=drift_start)
    sources = dict(sources) if sources is not None else {DEFAULT_SOURCE: SourceSpec(share=1.0)}
    check_classes(params.base.classes)
    merge_scenarios(world.source, world.scenarios, scenario)
    for spec in sources.values():
        merge_scenarios(world.source, world.scenarios, spec.scenario or [])
    first_date = start_date or world.production.start_date
    out.mkdir(parents=True, exist_ok=True)
    rendered: list[StreamBatch] = []
    for i, batch_severity in enumerate(severities):
        date = first_date + dt.timedelta(days=i)
        name = date.isoformat()
        plans = plan_sources(
            world.source,
            world.scenarios,
            sources,
            scenario=scenario,
            severity=batch_severity,
            images=images_per_batch,
        )
        _render_batch_into(
            params, plans, seed=set_seed(params.base.seed, f"stream/{seed_salt}/{name}"), folder=out / name
        )
        rendered.append(StreamBatch(name, date, batch_severity, out / name / "images", out / name / "labels"))
    logger.info(
        "stream %s: %d batches x %d images, drift from %s (%s) -> %s",
        seed_salt,
        batches,
        images_per_batch,
        "never" if drift_start is None else f"batch {drift_start}",
        "+".join(scenario) or "no scenario",
        out,
    )
    return rendered
