"""Drift of the synthetic world: scenarios are data, a batch's settings interpolate towards them by severity.

A scenario is a partial :class:`~tasks.config.RenderSettings`; a list of scenarios merges in order
(:func:`merge_scenarios`), and :func:`effective_settings` moves from the source settings towards the merged target
by a severity in [0, 1]. A demo and test fixture, as :mod:`tasks.sim.world`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tasks.config import RenderSettings, ScenarioOverride
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
