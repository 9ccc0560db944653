"""A registered version's runnable files, fetched once from MLflow into ``<models>/registry/<name>/<version>/``.

:func:`find_deployed` is the one lookup of "what does this version run": its deployable artifact (the export
stage's selection, tagged ``deploy.*`` by the registry stage) or, when it has none or it cannot be fetched, its
re-checked FP32 ONNX file with the reason. The predict stage runs what it finds; the cycle stage hands the
champion's to the gate, which times it against the candidate's. Nothing is opened here.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.deployed import Deployed
from tasks.contracts.model_version import (
    DEPLOY_ARTIFACT,
    DEPLOY_PRECISION,
    DEPLOY_TARGET,
    ModelVersionInfo,
    deploy_artifact,
)
from tasks.contracts.reports.export import FALLBACK_TARGET
from tasks.runtimes.detectors import Detector, InferenceSettings, load_detector

log = logging.getLogger(__name__)

_DEPLOY_CACHE = "deploy"  # sub-folder of a version's cache holding its deployable artifact


def version_cache(params: Params, info: ModelVersionInfo) -> Path:
    """``<models>/registry/<name>/<version>/``: where a version's files are downloaded once."""
    return params.base.paths.models / "registry" / info.name / info.version


def cached_onnx(params: Params, info: ModelVersionInfo) -> Path:
    """The version's ONNX file, downloaded once into ``<models>/registry/<name>/<version>/``."""
    cache = version_cache(params, info)
    found = (
        sorted(p for p in cache.rglob("*.onnx") if p.relative_to(cache).parts[0] != _DEPLOY_CACHE)
        if cache.is_dir()
        else []
    )
    return found[0] if found else mlflow_adapter.download_onnx(params, info, cache)


def cached_deploy_artifact(params: Params, info: ModelVersionInfo) -> Path:
    """The version's ``deploy.artifact``, downloaded once into ``<models>/registry/<name>/<version>/deploy/``.

    Raises:
        LookupError: the version has no ``deploy.artifact`` tag.
    """
    artifact = deploy_artifact(info)
    if artifact is None:
        raise LookupError(f"{info.name} v{info.version} has no {DEPLOY_ARTIFACT} tag")
    cache = version_cache(params, info) / _DEPLOY_CACHE
    local = cache.joinpath(*PurePosixPath(artifact).parts)
    # a download lands complete or not at all, so the file standing for the artifact means all of it is there
    return local if local.is_file() else mlflow_adapter.download_deploy_artifact(params, info, cache)


def find_deployed(params: Params, info: ModelVersionInfo) -> Deployed:
    """The version's deployable artifact, fetched (cached), or its ONNX file when it has none or fetching fails."""
    target = info.tags.get(DEPLOY_TARGET)
    if deploy_artifact(info) is None or target is None:
        reason = (
            f"{info.name} v{info.version} has no {DEPLOY_ARTIFACT} tag (registered before export "
            "selection, or nothing was selected)"
        )
    else:
        try:
            path = cached_deploy_artifact(params, info)
        except Exception as exc:  # any failure must leave the caller on the re-checked ONNX
            reason = f"{info.name} v{info.version}: its {target} artifact cannot run here ({type(exc).__name__}: {exc})"
            log.warning("%s", reason)
        else:
            return Deployed(target=target, precision=info.tags.get(DEPLOY_PRECISION, ""), path=path)
    return onnx_fallback(params, info, reason)


def onnx_fallback(params: Params, info: ModelVersionInfo, reason: str) -> Deployed:
    """The version's re-checked ONNX file (fetched, cached), what runs when its selected artifact cannot."""
    log.info("%s; running its ONNX file (target %s)", reason, FALLBACK_TARGET)
    return Deployed(FALLBACK_TARGET, "fp32", cached_onnx(params, info), fallback=reason)


def resolve_version(params: Params, name: str) -> ModelVersionInfo | None:
    """The version an alias (``challenger``) or a version number (``"7"``) names now; None when it names none.

    Used where a missing version is a normal state (the shadow of batch prediction); the caller says so.
    """
    if not name.isdigit():
        return mlflow_adapter.find_alias(params, name)
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_adapter.get_version(params, name)
    except MlflowException:
        return None


def open_deployed(params: Params, info: ModelVersionInfo, settings: InferenceSettings) -> tuple[Detector, Deployed]:
    """Open the version's deployable artifact, or its ONNX file when it has none or it cannot run here."""
    deployed = find_deployed(params, info)
    if deployed.fallback is not None:
        return load_detector(deployed.path, settings), deployed
    try:
        detector = load_detector(deployed.path, settings)
    except Exception as exc:  # opening: any failure must leave production on the re-checked ONNX
        reason = (
            f"{info.name} v{info.version}: its {deployed.target} artifact cannot run here ({type(exc).__name__}: {exc})"
        )
        log.warning("%s", reason)
        fallback = onnx_fallback(params, info, reason)
        return load_detector(fallback.path, settings), fallback
    log.info(
        "%s v%s runs its selected artifact: %s (%s) %s",
        info.name,
        info.version,
        deployed.target,
        deployed.precision,
        deployed.path,
    )
    return detector, deployed
