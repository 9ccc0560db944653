"""Drift of the synthetic world: scenarios are data, a batch's settings interpolate towards them by severity.

A scenario is a partial :class:`~tasks.config.RenderSettings`; a list of scenarios merges in order
(:func:`merge_scenarios`), and :func:`effective_settings` moves from the source settings towards the merged target
by a severity in [0, 1]. A production stream's severity per batch comes from :func:`stream_severities` (source
domain before ``drift_start``, then a linear ramp); each of its sources (:class:`~tasks.config.world.SourceSpec`)
takes a share of the batch with its own scenario and severity scale (:func:`plan_sources`). A demo and test fixture,
as :mod:`tasks.sim.world`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.config import RenderSettings, ScenarioOverride
from tasks.config.world import SourceSpec
from tasks.sim.world import WorldError, probabilities


def _interpolate(a: Any, b: Any, t: float, *, integer: bool) -> Any:
    if isinstance(a, list | tuple):
        return type(a)(_interpolate(x, y, t, integer=integer) for x, y in zip(a, b, strict=True))
    value = a * (1 - t) + b * t  # exact at t = 0 and t = 1
    if integer:
        return math.floor(value + 0.5)
    return value if t in (0.0, 1.0) else round(value, 6)  # 1.2, not 1.2000000000000002, in the manifest


def _mix_backgrounds(source: RenderSettings, target: RenderSettings, severity: float) -> dict[str, Any]:
    """Per-image categorical switch: with probability ``severity`` a background comes from the target's kinds."""
    src_p = probabilities(source.background_weights, len(source.backgrounds))
    tgt_p = probabilities(target.background_weights, len(target.backgrounds))
    mixed: dict[str, float] = {}
    for names, probs, share in ((source.backgrounds, src_p, 1 - severity), (target.backgrounds, tgt_p, severity)):
        for name, p in zip(names, probs, strict=True):
            mixed[name] = mixed.get(name, 0.0) + float(p) * share
    return {"backgrounds": list(mixed), "background_weights": [round(w, 6) for w in mixed.values()]}


def merge_scenarios(
    source: RenderSettings, scenarios: dict[str, ScenarioOverride], names: Sequence[str]
) -> RenderSettings:
    """Return the full-severity target: ``source`` with each named scenario's set fields applied in order.

    Raises:
        WorldError: a name not in ``scenarios``, or a merged value that is invalid (names the scenarios).
    """
    merged = source.model_dump()
    for name in names:
        if name not in scenarios:
            raise WorldError(f"scenario {name!r} is not defined under world.scenarios (defined: {sorted(scenarios)})")
        override = scenarios[name].model_dump(exclude_none=True)
        if "backgrounds" in override:
            merged["background_weights"] = None  # the source weights belong to the source kinds
        merged.update(override)
    try:
        return RenderSettings.model_validate(merged)
    except ValueError as exc:
        raise WorldError(f"scenarios {list(names)} merge into invalid render settings: {exc}") from None


_INTEGER_FIELDS = frozenset({"objects_per_image", "motion_blur", "clutter"})
_CATEGORICAL_FIELDS = frozenset({"backgrounds", "background_weights"})


def effective_settings(
    source: RenderSettings, scenarios: dict[str, ScenarioOverride], names: Sequence[str], severity: float
) -> RenderSettings:
    """Render settings of a drifted batch: ``source`` moved towards the merged scenarios by ``severity``.

    Numeric fields and numeric tuples/lists (``object_scale``, ``color_cast``, ``class_weights`` with
    ``None`` = uniform, ``clutter`` ...) are interpolated linearly (integers rounded half up). The categorical
    ``backgrounds`` switch per image: with probability ``severity`` a background is drawn from the scenario's
    kinds, which shows as a ``backgrounds``/``background_weights`` mixture in the result.

    Args:
        source: source-domain settings (severity 0).
        scenarios: all defined scenarios (``world.scenarios``).
        names: scenarios to combine, merged in list order (a later one wins on a shared field).
        severity: in [0, 1]; 0 returns ``source``, 1 the merged target.

    Returns:
        The effective :class:`RenderSettings`.

    Raises:
        WorldError: severity outside [0, 1] or an undefined scenario name.
    """
    if not 0.0 <= severity <= 1.0:
        raise WorldError(f"severity {severity} outside [0, 1]")
    target = merge_scenarios(source, scenarios, names)
    if severity == 0.0 or target == source:
        return source
    values: dict[str, Any] = {}
    for name in RenderSettings.model_fields:
        a, b = getattr(source, name), getattr(target, name)
        if name in _CATEGORICAL_FIELDS or a == b:
            values[name] = a
        elif name == "class_weights":
            count = len(b if a is None else a)
            a = [1.0] * count if a is None else a
            b = [1.0] * count if b is None else b
            values[name] = _interpolate(a, b, severity, integer=False)
        else:
            values[name] = _interpolate(a, b, severity, integer=name in _INTEGER_FIELDS)
    if (source.backgrounds, source.background_weights) != (target.backgrounds, target.background_weights):
        values |= (
            {"backgrounds": target.backgrounds, "background_weights": target.background_weights}
            if severity == 1.0
            else _mix_backgrounds(source, target, severity)
        )
    return RenderSettings.model_validate(values)


def batch_severities(*, start: float, end: float, batches: int) -> list[float]:
    """Severity per production batch, linear from ``start`` (first) to ``end`` (last)."""
    if batches == 1:
        return [start]
    return [start + (end - start) * i / (batches - 1) for i in range(batches)]


def stream_severities(*, start: float, end: float, batches: int, drift_start: int | None) -> list[float]:
    """Severity per batch: 0 before ``drift_start``, then linear from ``start`` to ``end`` (the last batch).

    ``drift_start=None`` is a stream without drift (every batch 0); ``drift_start=0`` equals
    :func:`batch_severities`.

    Raises:
        WorldError: ``batches`` < 1, or ``drift_start`` outside ``[0, batches)``.
    """
    if batches < 1:
        raise WorldError(f"batches = {batches}: a stream needs at least one batch")
    if drift_start is None:
        return [0.0] * batches
    if not 0 <= drift_start < batches:
        raise WorldError(f"drift_start = {drift_start} outside [0, {batches}) (batches = {batches})")
    return [0.0] * drift_start + batch_severities(start=start, end=end, batches=batches - drift_start)


def split_by_share(n: int, shares: Sequence[float]) -> list[int]:
    """Split ``n`` items by relative ``shares`` (largest remainder; ties go to the earlier share).

    The counts sum to ``n``; shares are normalised by their sum first.

    Raises:
        WorldError: no shares, a negative share, or shares summing to 0.
    """
    total = sum(shares)
    if not shares or any(s < 0 for s in shares) or total <= 0:
        raise WorldError(f"shares {list(shares)}: need non-negative shares with a positive sum")
    quotas = [n * s / total for s in shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class SourcePlan:
    """How one source's part of a batch is rendered.

    Attributes:
        name: the source name (``sources.csv``'s ``source`` column).
        first: batch index of its first image (its images are ``first .. first + images - 1``).
        images: number of images.
        scenario: scenarios it drifts towards, merged in order.
        severity: its severity (batch severity x ``severity_scale``).
        settings: its effective render settings.
    """

    name: str
    first: int
    images: int
    scenario: tuple[str, ...]
    severity: float
    settings: RenderSettings

    def manifest_row(self) -> dict[str, Any]:
        """The JSON row the world manifest keeps per batch per source."""
        return {
            "name": self.name,
            "first": self.first,
            "images": self.images,
            "scenario": list(self.scenario),
            "severity": round(self.severity, 6),
            "settings": self.settings.model_dump(mode="json"),
        }


def plan_sources(
    source: RenderSettings,
    scenarios: dict[str, ScenarioOverride],
    sources: Mapping[str, SourceSpec],
    *,
    scenario: Sequence[str],
    severity: float,
    images: int,
) -> list[SourcePlan]:
    """Split a batch of ``images`` between ``sources`` (in their order, contiguous index ranges) with their settings.

    Each source gets ``split_by_share`` of the images and renders with
    ``effective_settings(source, scenarios, spec.scenario or scenario, severity * spec.severity_scale)``.

    Raises:
        WorldError: an undefined scenario name, or no sources.
    """
    if not sources:
        raise WorldError("no sources: a stream needs at least one (e.g. {default: {share: 1.0}})")
    counts = split_by_share(images, [spec.share for spec in sources.values()])
    plans: list[SourcePlan] = []
    first = 0
    for (name, spec), count in zip(sources.items(), counts, strict=True):
        names = tuple(scenario if spec.scenario is None else spec.scenario)
        own = severity * spec.severity_scale
        settings = effective_settings(source, scenarios, names, own)
        plans.append(SourcePlan(name, first, count, names, own, settings))
        first += count
    return plans
