"""The license record of a trained and exported model: every component that went into it or ships with it.

:func:`build_record` reads what the stages recorded — the train report (family, warm start), the training data
record (data sources), the export report (the selected artifact) — and asks the installed packages for the rest
(:mod:`tasks.targets.inference_licenses`). The registry stage tags the version with it and the promote stage
judges it (:mod:`tasks.decisions.license_gate`). Components, in order:

- ``model_code``: the family's package, license from its metadata;
- ``weights``: the trained weights, license as the family states it for the configured size
  (:meth:`tasks.models.base.ModelFamily.weights_license`), named after where training started (from scratch
  here, a registered version, the project's own checkpoint); a third-party start adds its own entry with the
  license ``gate.license.weights`` declares for its SHA-256 (none declared: unknown);
- ``data``: each training data source (the merged manifest's ``source``), license from ``gate.license.data``;
- ``runtime``: the runtime the selected artifact runs on (FP32 ONNX when nothing was selected);
- ``package`` and ``bundled``: what loading and running that artifact imports, in a clean interpreter, and the
  shared libraries those wheels vendor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.contracts.license_record import KINDS, Component, LicenseRecord
from tasks.contracts.reports.export import FALLBACK_TARGET
from tasks.contracts.train_files import parent_path, read_parent_record
from tasks.models import family
from tasks.runtimes.detectors import InferenceSettings
from tasks.targets.inference_licenses import (
    InferenceProbeError,
    cached_inference_packages,
    model_code_component,
    runtime_component,
)

log = logging.getLogger(__name__)

SCRATCH = "scratch:"


def weights_components(
    params: Params, train: Mapping[str, Any], *, registered: Mapping[str, str] | None = None
) -> tuple[Component, ...]:
    """The ``weights`` entries: the trained weights under the family's license, and a third-party start's own.

    Args:
        params: config (the family, ``gate.license.weights``).
        train: the train report (``base_weights``, ``base_weights_sha256``).
        registered: SHA-256 -> registered version of the registry's checkpoints (a warm start from one of them is
            named after it).
    """
    stated = family(params).weights_license(params)
    base = str(train.get("base_weights") or "")
    sha = str(train.get("base_weights_sha256") or "")
    registered = registered or {}
    if base.startswith(SCRATCH) or not base:
        origin = f"trained from scratch here ({base.removeprefix(SCRATCH) or params.train.model})"
        return (Component("weights", origin, stated.license, stated.source),)
    parent = _parent_version(params, base)
    if parent is not None:
        return (Component("weights", f"warm-started here from {parent}", stated.license, stated.source),)
    if sha and sha in registered:
        name = f"warm-started here from {params.registry.model_name} v{registered[sha]}"
        return (Component("weights", name, stated.license, stated.source),)
    trained = Component("weights", f"trained here from {Path(base).name}", stated.license, stated.source)
    declared = params.gate.license.weights.get(sha)
    where = (
        f"params gate.license.weights[{sha[:12]}…]"
        if declared
        else (f"not declared in gate.license.weights (sha256 {sha})" if sha else "no sha256 recorded for it")
    )
    third = Component("weights", f"third-party checkpoint {Path(base).name}", declared, where)
    return trained, third


def _parent_version(params: Params, base: str) -> str | None:
    """``<model> v<N>`` when ``base`` is the parent checkpoint the loop fetched and its record names the version."""
    info = read_parent_record(params)
    if Path(base).resolve() != parent_path(params).resolve() or info is None:
        return None
    return f"{info.get('name', params.registry.model_name)} v{info['version']}" if "version" in info else None


def data_components(params: Params, dataset: Mapping[str, Any] | None) -> tuple[Component, ...]:
    """One ``data`` entry per training data source the dataset record names, license from ``gate.license.data``.

    A record without sources (written before they were recorded) gives one entry per declared source.
    """
    sources: Mapping[str, int] = (dataset or {}).get("sources") or {}
    declared = params.gate.license.data
    if not sources:
        return tuple(
            Component("data", name, license_, f"params gate.license.data.{name} (sources not recorded)")
            for name, license_ in sorted(declared.items())
        )
    return tuple(
        Component(
            "data",
            f"{name} ({count} images)",
            declared.get(name),
            f"params gate.license.data.{name}" if name in declared else "not declared in gate.license.data",
        )
        for name, count in sorted(sources.items())
    )


def selected_artifact(params: Params, export: Mapping[str, Any] | None) -> tuple[str, Path]:
    """The export target and file the version runs with: the export report's selection, else the FP32 ONNX."""
    selected = (export or {}).get("selected")
    if selected:
        return str(selected["target"]), Path(selected["path"])
    return FALLBACK_TARGET, params.base.paths.models / "export" / "model.onnx"


def build_record(
    params: Params,
    *,
    train: Mapping[str, Any],
    export: Mapping[str, Any] | None,
    dataset: Mapping[str, Any] | None,
    registered: Mapping[str, str] | None = None,
) -> LicenseRecord:
    """Every component of the version (see the module docstring), sorted by kind then name.

    The inference path is probed on the selected artifact; a probe that fails (artifact missing, runtime absent
    on this host) gives one ``package`` entry with license ``None`` saying why: unknown, never an empty list.
    """
    target, artifact = selected_artifact(params, export)
    settings = InferenceSettings(imgsz=params.base.imgsz, threads=params.base.threads, device=params.base.device)
    try:
        packages = cached_inference_packages(artifact, settings, target)
    except InferenceProbeError as exc:
        log.warning("inference packages of %s unknown: %s", artifact, exc)
        packages = (Component("package", f"inference path of {artifact.name}", None, str(exc)),)
    components = [
        model_code_component(family(params)),
        *weights_components(params, train, registered=registered),
        *data_components(params, dataset),
        runtime_component(target),
        *packages,
    ]
    order = {kind: i for i, kind in enumerate(KINDS)}
    return LicenseRecord(tuple(sorted(components, key=lambda c: (order[c.kind], c.name.casefold()))))
