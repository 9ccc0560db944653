"""Config of the synthetic world (``world``): rendering, scenarios, production stream, annotator simulator."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import Field, model_validator

from tasks.config.base import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Section


def _check_render_values(owner: str, values: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the field when a render range or weight list is impossible.

    Shared by :class:`RenderSettings` and :class:`ScenarioOverride`; ``None`` means "not set" and is skipped.
    """
    for name in ("objects_per_image", "object_scale", "clutter"):
        pair = values.get(name)
        if pair is not None and not 0 <= pair[0] <= pair[1]:
            raise ValueError(f"{owner}.{name} = {list(pair)}: need 0 <= min <= max")
    scale = values.get("object_scale")
    if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(
            f"{owner}.object_scale = {list(scale)}: fractions of the shorter side, need 0 < min <= max <= 1"
        )
    for name in ("class_weights", "background_weights"):
        weights = values.get(name)
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"{owner}.{name} = {weights}: need non-negative weights with a positive sum")
    if values.get("backgrounds") is not None and not values["backgrounds"]:
        raise ValueError(f"{owner}.backgrounds is empty: name at least one background kind")


class RenderSettings(Section):
    """How the synthetic world draws a scene; a scenario overrides a subset of these.

    ``background_weights`` (``None`` = uniform) are the sampling probabilities of ``backgrounds``; drift
    uses them to mix the source kinds with a scenario's kinds by severity.
    """

    objects_per_image: tuple[NonNegativeInt, NonNegativeInt] = (1, 4)
    object_scale: tuple[float, float] = (0.12, 0.30)
    class_weights: list[NonNegativeFloat] | None = None
    brightness: NonNegativeFloat = 1.0
    contrast: NonNegativeFloat = 1.0
    color_cast: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] = (1.0, 1.0, 1.0)
    blur_sigma: NonNegativeFloat = 0.0
    motion_blur: NonNegativeInt = 0
    noise_std: NonNegativeFloat = 4.0
    clutter: tuple[NonNegativeInt, NonNegativeInt] = (0, 0)
    backgrounds: list[str] = ["smooth", "stripes", "checker"]
    background_weights: list[NonNegativeFloat] | None = None
    occlusion: Fraction = 0.3
    class_color: Fraction = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> RenderSettings:
        _check_render_values("render settings", dict(self))
        if self.background_weights is not None and len(self.background_weights) != len(self.backgrounds):
            raise ValueError(
                f"background_weights has {len(self.background_weights)} entries, "
                f"backgrounds {self.backgrounds} has {len(self.backgrounds)}"
            )
        return self


class ScenarioOverride(Section):
    """A partial :class:`RenderSettings`: only the fields a drift scenario changes (``None`` = unchanged)."""

    objects_per_image: tuple[NonNegativeInt, NonNegativeInt] | None = None
    object_scale: tuple[float, float] | None = None
    class_weights: list[NonNegativeFloat] | None = None
    brightness: NonNegativeFloat | None = None
    contrast: NonNegativeFloat | None = None
    color_cast: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] | None = None
    blur_sigma: NonNegativeFloat | None = None
    motion_blur: NonNegativeInt | None = None
    noise_std: NonNegativeFloat | None = None
    clutter: tuple[NonNegativeInt, NonNegativeInt] | None = None
    backgrounds: list[str] | None = None
    background_weights: list[NonNegativeFloat] | None = None
    occlusion: Fraction | None = None
    class_color: Fraction | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ScenarioOverride:
        _check_render_values("scenario", dict(self))
        if self.background_weights is not None and (
            self.backgrounds is None or len(self.background_weights) != len(self.backgrounds)
        ):
            raise ValueError("scenario background_weights needs backgrounds of the same length in the same scenario")
        return self


DEFAULT_SOURCE = "default"
"""Name of the one source a production stream has when ``world.production.sources`` is not set."""

SHARE_TOLERANCE = 1e-6
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SourceSpec(Section):
    """One source of the production stream (a camera, a line, a site) with its own drift.

    ``share`` is its part of every batch's images (the shares of a stream sum to 1); ``scenario`` (``None`` = the
    stream's ``scenario``) names scenarios from ``world.scenarios`` merged in order; ``severity_scale`` multiplies
    the batch severity for this source (0 = this source never drifts).
    """

    share: Fraction
    scenario: list[str] | None = None
    severity_scale: Fraction = 1.0


def _default_sources() -> dict[str, SourceSpec]:
    return {DEFAULT_SOURCE: SourceSpec(share=1.0)}


class ProductionStream(Section):
    """The dated production batches, the drift they follow and the sources they come from.

    Batches before ``drift_start`` are source domain (severity 0); from ``drift_start`` on, severity grows linearly
    from ``severity_start`` to ``severity_end`` (the last batch).
    """

    scenario: list[str] = Field(default_factory=list)
    batches: PositiveInt = 2
    images_per_batch: PositiveInt = 100
    start_date: dt.date = dt.date(2026, 11, 2)
    severity_start: Fraction = 0.5
    severity_end: Fraction = 1.0
    drift_start: NonNegativeInt = 0
    sources: dict[str, SourceSpec] = Field(default_factory=_default_sources)

    @model_validator(mode="after")
    def _consistent(self) -> ProductionStream:
        if self.drift_start >= self.batches:
            raise ValueError(
                f"production.drift_start = {self.drift_start} must be below production.batches = {self.batches} "
                "(batches before it are source domain, drift starts at that batch index)"
            )
        if not self.sources:
            raise ValueError("production.sources is empty: name at least one source, e.g. {default: {share: 1.0}}")
        bad = [name for name in self.sources if not _SOURCE_NAME.fullmatch(name)]
        if bad:
            raise ValueError(
                f"production.sources names {bad}: use letters, digits, '.', '_' or '-' (starting with a letter "
                "or digit), since the name goes into sources.csv and the prediction log"
            )
        total = sum(spec.share for spec in self.sources.values())
        if abs(total - 1.0) > SHARE_TOLERANCE:
            shares = ", ".join(f"{name}: {spec.share}" for name, spec in self.sources.items())
            raise ValueError(f"production.sources shares sum to {total:.6g} ({shares}): they must sum to 1")
        return self


class AnnotatorSimParams(Section):
    """The annotator simulator (``tasks/sim/annotator.py``; demo, tests, benchmarks only): oracle boxes plus noise.

    A box whose shorter side is below ``small_px`` pixels is missed with probability ``drop_small``; every
    corner moves by up to ± ``jitter`` of the box's width/height; a ``skip`` share of tasks is skipped.
    """

    small_px: NonNegativeFloat = 0.0
    drop_small: Fraction = 0.0
    jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    skip: Fraction = 0.0
    seed: int | None = None  # None: base.seed


class WorldParams(Section):
    """Synthetic world: historical + golden sets from the source domain, drifting production batches."""

    enabled: bool = True
    image_size: tuple[PositiveInt, PositiveInt] = (160, 160)
    train_images: PositiveInt = 600
    val_images: PositiveInt = 100
    golden_images: PositiveInt = 200
    source: RenderSettings = RenderSettings()
    scenarios: dict[str, ScenarioOverride] = Field(default_factory=dict)
    production: ProductionStream = ProductionStream()
    annotator: AnnotatorSimParams = AnnotatorSimParams()  # demo/tests only: the annotator simulator

    @model_validator(mode="after")
    def _known_scenarios(self) -> WorldParams:
        fields = {"production.scenario": self.production.scenario} | {
            f"production.sources.{name}.scenario": spec.scenario or [] for name, spec in self.production.sources.items()
        }
        for where, names in fields.items():
            unknown = [name for name in names if name not in self.scenarios]
            if unknown:
                raise ValueError(
                    f"{where} names {unknown} not defined under world.scenarios (defined: {sorted(self.scenarios)})"
                )
        return self
