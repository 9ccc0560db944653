"""Typed configuration: one ``params.yaml``, one pydantic model per section.

Every stage ``main()`` and every flow calls :func:`load_params`; nothing else reads ``params.yaml``.
Models forbid unknown keys, so a typo fails with its key path (``train.epoch: extra inputs are not
permitted``) instead of being silently ignored.

The models live in ``base.py`` (shared blocks), ``world.py``, ``sample.py`` and ``sections.py``; this module is the one
import path (``from tasks.config import TrainParams, load_params``) and holds the root model and the loader.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import PrivateAttr, ValidationError, model_validator

from tasks.config.base import (  # noqa: F401
    DEFAULT_PARAMS,
    BaseParams,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    Paths,
    PositiveInt,
    Section,
    VisionloopError,
)
from tasks.config.compress import CompressParams
from tasks.config.cost import CostParams  # noqa: F401
from tasks.config.forget import ForgetParams, RetentionParams  # noqa: F401
from tasks.config.license import LicenseException, LicenseParams, LicensePolicy  # noqa: F401
from tasks.config.monitor import (  # noqa: F401
    AlertParams,
    BaselineParams,
    DriftRules,
    MetricsParams,
    MonitorParams,
    TriggerParams,
    WatchParams,
)
from tasks.config.sample import (  # noqa: F401
    ClassBalancedStrategy,
    DisagreementStrategy,
    DiversityStrategy,
    DriftStrategy,
    EntropyStrategy,
    LowConfidenceStrategy,
    MarginStrategy,
    RandomStrategy,
    SampleParams,
    SampleStrategies,
    SampleStrategy,
)
from tasks.config.sections import (  # noqa: F401
    YOLO_OWNED_ARGS,
    CalibrationParams,
    CycleParams,
    DoctorCheck,
    DoctorParams,
    EvaluateParams,
    ExportParams,
    ExportTargetName,
    GateParams,
    GateSpeedParams,
    Hardware,
    IngestFormat,
    IngestParams,
    LabelParams,
    MergeParams,
    ParityParams,
    PerPrecision,
    Precision,
    PredictParams,
    PromoteParams,
    QuantizationParams,
    RecencyParams,
    RegistryParams,
    ShadowParams,
    SpeedParams,
    TrainParams,
    ValidateParams,
    YoloOptimizer,
    YoloParams,
)
from tasks.config.world import (  # noqa: F401
    AnnotatorSimParams,
    ProductionStream,
    RenderSettings,
    ScenarioOverride,
    WorldParams,
)


class Params(Section):
    """The whole ``params.yaml`` (plus any overlays layered over it, see :func:`load_params`)."""

    _sources: tuple[str, ...] = PrivateAttr(default=())

    base: BaseParams
    world: WorldParams = WorldParams()
    train: TrainParams = TrainParams()
    compress: CompressParams = CompressParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    registry: RegistryParams = RegistryParams()
    predict: PredictParams = PredictParams()
    sample: SampleParams = SampleParams()
    label: LabelParams = LabelParams()
    validate: ValidateParams = ValidateParams()  # type: ignore[assignment]  # shadows BaseModel.validate (deprecated)
    merge: MergeParams = MergeParams()
    gate: GateParams = GateParams()
    promote: PromoteParams = PromoteParams()
    cycle: CycleParams = CycleParams()
    monitor: MonitorParams = MonitorParams()
    forget: ForgetParams = ForgetParams()
    ingest: IngestParams = IngestParams()
    doctor: DoctorParams = DoctorParams()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        # the active family's own section says which of its keys the device would silently ignore
        family_section = getattr(self.train, self.train.family, None)
        ignored = getattr(family_section, "ignored_on", lambda device: None)(self.base.device)
        if ignored is not None:
            raise ValueError(ignored)
        refused = getattr(family_section, "refused_fine_tune_args", lambda args: None)(self.compress.fine_tune_args)
        if refused is not None:
            raise ValueError(refused)
        weights = self.world.source.class_weights
        if weights is not None and len(weights) != len(self.base.classes):
            raise ValueError(
                f"world.source.class_weights has {len(weights)} entries, base.classes has {len(self.base.classes)}"
            )
        for name, scenario in self.world.scenarios.items():
            if scenario.class_weights is not None and len(scenario.class_weights) != len(self.base.classes):
                raise ValueError(
                    f"world.scenarios.{name}.class_weights has {len(scenario.class_weights)} entries, "
                    f"base.classes has {len(self.base.classes)}"
                )
        for name in self.evaluate.sets:
            if name not in Paths.model_fields:
                raise ValueError(f"evaluate.sets: {name!r} is not a base.paths entry")
        return self

    def digest(self) -> str:
        """Return a short stable hash of the effective configuration (for lineage)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def sources(self) -> tuple[str, ...]:
        """The files these params were read from, base first, then each overlay (empty: built in code)."""
        return self._sources

    def stamp(self) -> dict[str, Any]:
        """The effective-params record every report carries: the files layered, and the digest of the result."""
        return {"sources": list(self.sources), "digest": self.digest()}


class ConfigError(VisionloopError, ValueError):
    """``params.yaml`` is missing, unreadable or does not match the schema."""


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} invalid setting(s)"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, nested dicts key by key (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


EXTENDS_KEY = "extends"


def _read_layer(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """One params file as a dict, with the files it ``extends:`` merged under it (base first)."""
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (pass --params PATH)")
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: 'extends' chain loops: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    parent = raw.pop(EXTENDS_KEY, None)
    if parent is None:
        return raw, [path]
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' must be a path (relative to this file), got {parent!r}")
    base, files = _read_layer(Path(os.path.normpath(path.parent / parent)), (*chain, path.resolve()))
    return deep_merge(base, raw), [*files, path]


def load_params(
    path: str | Path | Sequence[str | Path] | None = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Params:
    """Read and validate a params file, or several layered ones.

    Layering: each file may name its base with ``extends: <path relative to it>``; several paths are
    merged left to right (``load_params(["params.yaml", "site.yaml"])``: the later file's keys win, nested
    sections key by key). Only the merged result is validated, so an overlay holds just the keys it changes.

    Args:
        path: YAML file (or files) with a ``base:`` section and one section per stage.
        overrides: nested dict merged over the files (flow parameters use this), e.g.
            ``{"train": {"epochs": 2}}``.

    Returns:
        The validated, immutable :class:`Params`; ``params.sources`` names the files, base first.

    Raises:
        ConfigError: file missing, not YAML, an ``extends`` loop, or a key unknown / mistyped (message lists
            key paths and the files read).
    """
    path = DEFAULT_PARAMS if path is None else path
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise ConfigError("no params file given (pass --params PATH)")
    raw: dict[str, Any] = {}
    files: list[Path] = []
    for layer in paths:
        data, read = _read_layer(layer)
        raw = deep_merge(raw, data)
        files += [f for f in read if f.resolve() not in {seen.resolve() for seen in files}]
    if overrides:
        raw = deep_merge(raw, overrides)
    where = Path(" + ".join(str(f) for f in files))
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(where, exc)) from None
    params._sources = tuple(str(f) for f in files)
    return params


def stage_argparser(stage: str, doc: str | None = None) -> argparse.ArgumentParser:
    """Return the common CLI of ``python -m tasks.<stage>``: ``--params PATH``."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=doc)
    parser.add_argument(
        "--params",
        action="append",
        default=None,
        help="params file; repeat to layer overlays over it, later wins (default: params.yaml)",
    )
    return parser
