"""The MLflow adapter: tracking runs, model versions, aliases, the pyfunc packaging and downloads.

Every MLflow call of the project goes through this module (``tasks/runtimes/pyfunc.py`` only subclasses
``mlflow.pyfunc.PythonModel``, the class the registered model pickles). The store is ``MLFLOW_TRACKING_URI`` when
the user's environment sets it, else ``registry.tracking_uri``; nothing is set at import time.

Idempotence, for the callers that retry: :func:`find_version_by_run` finds the version a training run was already
registered as, so the registry stage never registers a candidate twice; alias and tag writes overwrite; downloads
land complete or not at all; a version made twice by a retried create is removed. A server gets ``registry.timeout_s``
and ``.retries`` (MLflow's client; ``MLFLOW_HTTP_REQUEST_*`` win), then is :class:`RegistryUnavailableError`. Alias
moves that must be seen together with the audit trail run under :func:`registry_lock`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, ParamSpec, TypeVar, cast

import numpy as np

from tasks.adapters import broken_alias, registry_lease
from tasks.config import Params, VisionloopError
from tasks.contracts.checkpoints import CHECKPOINT_SHA256
from tasks.contracts.model_version import DEPLOY_ARTIFACT, EXPORT_TABLE, ModelVersionInfo, deploy_artifact

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

BOOTSTRAP_HINT = "python -m flows.bootstrap (or `make demo`)"
TASKS_FOLDER = Path(__file__).resolve().parent.parent  # the whole tasks/ package ships with the pyfunc (code_paths)


class AliasNotFoundError(VisionloopError, LookupError):
    """The registered model has no version under the requested alias."""


class RegistryUnavailableError(VisionloopError, ConnectionError):
    """The MLflow store did not answer (a server that is down, refuses, or fails): not the same as "no such alias"."""


# MLflow's answers that mean "no such model / alias"; anything else (a server down answers INTERNAL_ERROR after its
# HTTP retries) is the store failing, and must not read as "there is no champion: bootstrap one".
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _unavailable(params: Params, exc: Exception) -> RegistryUnavailableError:
    return RegistryUnavailableError(
        f"the MLflow store {tracking_uri(params)} did not answer: {str(exc).splitlines()[0][:300]}; is the server up "
        "(make mlflow-ui serves the local store) and MLFLOW_TRACKING_URI right? (MLFLOW_HTTP_REQUEST_MAX_RETRIES "
        "sets how often a request is retried first)"
    )


def _is_unreachable(exc: BaseException) -> bool:
    """The store did not answer (refused, timed out, 5xx after MLflow's own HTTP retries): not an answer to the call."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, requests.exceptions.RequestException):
        return True
    if isinstance(exc, RestException):
        return exc.get_http_status_code() >= 500
    return isinstance(exc, MlflowException) and str(exc).startswith("API request to")  # rest_utils' transport error


def _answers(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A store that does not answer is a :class:`RegistryUnavailableError`, never a raw urllib3 error (``params``)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, RegistryUnavailableError) or not _is_unreachable(exc):
                raise
            raise _unavailable(cast(Params, kwargs.get("params", args[0] if args else None)), exc) from exc

    return wrapper


# --------------------------------------------------------------------------------------------- tracking


@functools.cache
def _user_tracking_uri() -> str | None:
    # Read once, before this module first calls mlflow.set_tracking_uri, which writes the same variable.
    return os.environ.get("MLFLOW_TRACKING_URI") or None


@functools.cache
def _user_env(name: str) -> str | None:
    # Read once, before client() first writes the same variable: the user's value wins over params.
    return os.environ.get(name) or None


def tracking_uri(params: Params) -> str:
    """The MLflow store: ``MLFLOW_TRACKING_URI`` from the user's environment wins over params."""
    return _user_tracking_uri() or params.registry.tracking_uri


def client(params: Params) -> Any:
    """An ``MlflowClient`` on the project's store (also made the default of the ``mlflow`` fluent API)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow reads these per request: a server that hangs or is down fails in bounded time (registry params)
    for name, value in (
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", params.registry.timeout_s),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", params.registry.retries),
    ):
        os.environ[name] = _user_env(name) or str(value)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(params: Params, name: str | None = None) -> str:
    """The id of ``name`` (default ``registry.experiment``), created on first use."""
    name = name or params.registry.experiment
    mlflow_client = client(params)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if tracking_uri(params).startswith("sqlite:"):
        # A local store keeps artifacts in the project, not in ./mlruns of whatever the working dir is.
        location = params.registry.artifact_root.resolve().as_uri()
    return str(mlflow_client.create_experiment(name, artifact_location=location))


@contextmanager
def mlflow_run(
    params: Params,
    *,
    run_name: str,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
) -> Iterator[str]:
    """Start (or resume, with ``run_id``) an MLflow run in ``experiment`` (default ``registry.experiment``)."""
    import mlflow

    try:
        experiment_id = _experiment_id(params, experiment)
        with mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=None if run_id else run_name,
            tags=tags,
        ) as active:
            yield active.info.run_id
    except Exception as exc:  # the store failing inside the run (an artifact upload) is said to be down too
        if isinstance(exc, RegistryUnavailableError) or not _is_unreachable(exc):
            raise
        raise _unavailable(params, exc) from exc


def log_params(values: dict[str, Any]) -> None:
    """Log flat params to the active run (nested values as JSON)."""
    import mlflow

    mlflow.log_params(
        {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v) for k, v in values.items()}
    )


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    """Log one epoch's metrics to the active run (step = epoch)."""
    import mlflow

    clean = {k.replace("(", "").replace(")", ""): v for k, v in metrics.items() if np.isfinite(v)}
    mlflow.log_metrics(clean, step=epoch)
    log.info(
        "epoch %d: %s",
        epoch,
        ", ".join(f"{k}={v:.4f}" for k, v in sorted(clean.items()) if k.startswith(("val/mAP50-95", "train/box"))),
    )


def log_metrics(metrics: Mapping[str, float]) -> None:
    """Log metrics to the active run."""
    import mlflow

    if metrics:
        mlflow.log_metrics(dict(metrics))


def log_artifacts(paths: Sequence[Path], folder: str) -> None:
    """Attach files to the active run under ``folder``."""
    import mlflow

    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder)


def log_folder(folder: Path, artifact_path: str) -> None:
    """Attach a whole local folder to the active run under ``artifact_path``."""
    import mlflow

    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def set_run_tag(key: str, value: str) -> None:
    """Tag the active run."""
    import mlflow

    mlflow.set_tag(key, value)


# --------------------------------------------------------------------------------------------- model versions


def _info(mv: Any, aliases: list[str] | None = None) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        source=mv.source,
        tags=dict(mv.tags or {}),
        aliases=list(aliases if aliases is not None else mv.aliases),
    )


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = Schema(
        [
            ColSpec("long", "image_index"),
            ColSpec("long", "class_id"),
            ColSpec("string", "class_name"),
            ColSpec("double", "confidence"),
            ColSpec("double", "x1"),
            ColSpec("double", "y1"),
            ColSpec("double", "x2"),
            ColSpec("double", "y2"),
        ]
    )
    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]), outputs=outputs)


def _pyfunc_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg)}"
        for pkg in (
            "mlflow",
            "onnxruntime",
            "numpy",
            "pandas",
            "pillow",
            "opencv-python-headless",
            "pydantic",
            "pyyaml",
        )
    ]


def _model_config(params: Params) -> dict[str, Any]:
    return {
        "classes": list(params.base.classes),
        "imgsz": params.base.imgsz,
        "conf": params.predict.conf,
        "iou": params.predict.iou,
        "max_det": params.predict.max_det,
        "threads": params.base.threads,
    }


@_answers
def find_version_by_run(params: Params, run_id: str) -> ModelVersionInfo | None:
    """The newest version of ``registry.model_name`` logged in ``run_id``; ``None`` when there is none."""
    name = params.registry.model_name
    found = client(params).search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        return None
    newest = max(found, key=lambda mv: int(mv.version))
    return get_version(params, str(newest.version))


@_answers
def get_version(params: Params, version: str) -> ModelVersionInfo:
    """A version of ``registry.model_name`` with its tags and aliases."""
    return _info(client(params).get_model_version(params.registry.model_name, str(version)))


@_answers
def register_model(
    params: Params,
    *,
    run_id: str,
    weights: Path,
    onnx: Path,
    reports: Mapping[str, Path],
    attach: Sequence[tuple[Path, str]] = (),
    metrics: Mapping[str, float] | None = None,
) -> ModelVersionInfo:
    """Log the pyfunc model (weights, ONNX, reports as artifacts) in ``run_id`` and register a new version.

    This always makes a version; the registry stage looks for an existing one first (:func:`find_version_by_run`).

    Args:
        params: config (registry name, classes, imgsz, predict thresholds).
        run_id: the training run the version belongs to.
        weights: PyTorch checkpoint.
        onnx: exported ONNX model used by the pyfunc.
        reports: extra files (evaluation/export reports) carried by the version.
        attach: ``(local file, run artifact folder)`` pairs attached to the run *before* the version exists, so a
            version never names an artifact that is not there yet (the checked export artifacts).
        metrics: logged to the run with the model (the export numbers).
    """
    import mlflow.pyfunc

    from tasks.runtimes.pyfunc import DetectorModel

    artifacts = {"onnx": str(onnx), "weights": str(weights)} | {k: str(v) for k, v in reports.items()}
    with mlflow_run(params, run_name="", run_id=run_id):
        for file, folder in attach:
            mlflow.log_artifact(str(file), artifact_path=folder)
        log_metrics(metrics or {})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=DetectorModel(),
            artifacts=artifacts,
            model_config=_model_config(params),
            code_paths=[str(TASKS_FOLDER)],
            signature=_signature(),
            pip_requirements=_pyfunc_requirements(),
            registered_model_name=params.registry.model_name,
        )
    return get_version(params, _one_version_per_model(params, run_id, str(info.registered_model_version)))


def _one_version_per_model(params: Params, run_id: str, made: str) -> str:
    """The first version of the model just logged. MLflow's client retries a create whose answer was lost (committed,
    then a 503): a second version of the same source, i.e. of this ``log_model`` call, ours to delete."""
    mlflow_client = client(params)
    name = params.registry.model_name
    source = mlflow_client.get_model_version(name, made).source
    found = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    same = sorted(int(mv.version) for mv in found if mv.source == source) or [int(made)]
    for copy in same[1:]:
        log.warning("model %s: version %s repeats version %s (a retried create); deleting it", name, copy, same[0])
        mlflow_client.delete_model_version(name, str(copy))
    return str(same[0])


@_answers
def log_version_table(params: Params, info: ModelVersionInfo, table: Mapping[str, list[Any]]) -> None:
    """Append ``table`` (column -> values) with a ``version`` column to ``export/table.json`` of the version's run.

    MLflow's ``log_table`` appends to an existing file: a run registered twice keeps one block of rows per version.
    A block already there for this version is not written again (a retried registration).
    """
    import mlflow

    rows = len(next(iter(table.values()), []))
    if rows == 0:
        return
    mlflow_client = client(params)
    folder = EXPORT_TABLE.rpartition("/")[0]
    if any(item.path == EXPORT_TABLE for item in mlflow_client.list_artifacts(info.run_id, folder)):
        experiment = mlflow_client.get_run(info.run_id).info.experiment_id
        existing = mlflow_client.load_table(experiment, EXPORT_TABLE, run_ids=[info.run_id])
        if "version" in existing and (existing["version"].astype(str) == info.version).any():
            return
    with mlflow_run(params, run_name="", run_id=info.run_id):
        mlflow.log_table({"version": [info.version] * rows} | dict(table), artifact_file=EXPORT_TABLE)


@_answers
def describe_version(params: Params, version: str, description: str) -> None:
    """Set the version's description."""
    client(params).update_model_version(params.registry.model_name, str(version), description=description)


@_answers
def all_versions(params: Params) -> list[ModelVersionInfo]:
    """Every version of ``registry.model_name`` (none when it is not registered yet)."""
    found = client(params).search_model_versions(f"name = '{params.registry.model_name}'")
    return [_info(mv) for mv in found]


@_answers
def versions_tagged(params: Params, key: str, value: str) -> list[ModelVersionInfo]:
    """The versions of ``registry.model_name`` whose tag ``key`` equals ``value``."""
    found = client(params).search_model_versions(f"name = '{params.registry.model_name}' and tags.`{key}` = '{value}'")
    return [_info(mv) for mv in found]


def checkpoint_hashes(params: Params) -> dict[str, str]:
    """``{sha256: "model <name> v<version>"}`` of every version tagged ``checkpoint_sha256`` (the registry's record
    of the checkpoints the project trained, :mod:`tasks.contracts.checkpoints`)."""
    found = {}
    for info in sorted(all_versions(params), key=lambda v: int(v.version)):
        sha = info.tags.get(CHECKPOINT_SHA256)
        if sha:
            found[sha] = f"model {info.name} v{info.version}"
    return found


@_answers
def set_version_tags(params: Params, version: str, tags: Mapping[str, str]) -> None:
    """Set tags on a model version (overwrites: safe to repeat)."""
    mlflow_client = client(params)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(params.registry.model_name, str(version), key, str(value))


# --------------------------------------------------------------------------------------------- aliases


@_answers
def get_alias(params: Params, alias: str) -> ModelVersionInfo:
    """Resolve ``alias`` at call time.

    Raises:
        AliasNotFoundError: no such model or alias; the message names the flow that creates it.
        broken_alias.BrokenAliasError: no such alias because the version the audit trail last moved it to was deleted.
        RegistryUnavailableError: the store did not answer (after MLflow's own HTTP retries).
    """
    from mlflow.exceptions import MlflowException

    name = params.registry.model_name
    try:
        mv = client(params).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND:
            raise _unavailable(params, exc) from exc
        broken_alias.refuse_if_deleted(client(params), name, alias, audit_log=params.promote.audit_log)
        raise AliasNotFoundError(
            f"registered model {name!r} has no {alias!r} alias in {tracking_uri(params)}; "
            f"create the first champion with {BOOTSTRAP_HINT}"
        ) from None
    return _info(mv, aliases=[alias])


def find_alias(params: Params, alias: str) -> ModelVersionInfo | None:
    """Like :func:`get_alias` but ``None`` when the alias is not set, or (warned) went with its deleted version."""
    try:
        return get_alias(params, alias)
    except AliasNotFoundError:
        return None
    except broken_alias.BrokenAliasError as exc:  # the rollback that repairs it reads it, so: warn, go on
        log.warning("%s", exc)
        return None


@_answers
def set_alias(params: Params, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``."""
    client(params).set_registered_model_alias(params.registry.model_name, alias, str(version))


def delete_alias(params: Params, alias: str) -> None:
    """Remove ``alias`` from the registered model (no error if it is not set)."""
    from mlflow.exceptions import MlflowException

    try:
        client(params).delete_registered_model_alias(params.registry.model_name, alias)
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND:
            raise _unavailable(params, exc) from exc
        log.debug("alias %s was not set", alias)


@contextmanager
def registry_lock(params: Params, *, holder: str | None = None, cycle: bool = False) -> Iterator[registry_lease.Holder]:
    """Exclusive lock over alias moves (``cycle``: the cycle lease) where the registry lives: a lease on a server, a
    file lock beside the audit log for the embedded store (:func:`tasks.adapters.registry_lease.hold`); racing
    promotions leave one champion and a trail in which each move starts where the last ended."""
    uri = tracking_uri(params)
    with registry_lease.hold(params, store=uri, client=lambda: client(params), holder=holder, cycle=cycle) as held:
        yield held


# --------------------------------------------------------------------------------------------- loading


def load_pyfunc(params: Params, version: str) -> Any:
    """Load ``models:/<name>/<version>`` with stock MLflow."""
    import mlflow.pyfunc

    client(params)
    return mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}/{version}")


def _download_model_file(params: Params, info: ModelVersionInfo, dst: Path, pattern: str, what: str) -> Path:
    import mlflow.artifacts

    client(params)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{info.name}/{info.version}", dst_path=str(dst))
    found = sorted(Path(local).rglob(pattern))
    if not found:
        raise broken_alias.artifacts_missing(client(params), info, what=what, local=Path(local))
    return found[0]


@_answers
def download_run_file(params: Params, run_id: str, artifact: str, dst: Path) -> Path:
    """Fetch one artifact file of a run (e.g. ``dvc/dvc.lock``) into ``dst``; its local path."""
    import mlflow.artifacts

    client(params)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst)))


@_answers
def log_version_file(params: Params, info: ModelVersionInfo, path: Path, folder: str) -> str:
    """Attach ``path`` to the version's training run under ``folder``; its run-relative artifact path."""
    client(params).log_artifact(info.run_id, str(path), artifact_path=folder)
    return f"{folder}/{path.name}"


@_answers
def find_run(params: Params, experiment: str, run_name: str) -> str | None:
    """The id of the newest run called ``run_name`` in ``experiment`` (``None``: none yet)."""
    found = client(params).get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client(params).search_runs(
        [found.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'", max_results=1
    )
    return str(runs[0].info.run_id) if runs else None


@_answers
def log_metric_series(params: Params, run_id: str, series: Mapping[str, Sequence[tuple[int, int, float]]]) -> None:
    """Log ``{metric: [(step, timestamp_ms, value), ...]}`` to a run in one batch (NaN/inf values are left out)."""
    from mlflow.entities import Metric

    metrics = [
        Metric(key=key, value=float(value), timestamp=int(ts), step=int(step))
        for key, points in series.items()
        for step, ts, value in points
        if np.isfinite(value)
    ]
    for start in range(0, len(metrics), 1000):  # the store's batch limit
        client(params).log_batch(run_id, metrics=metrics[start : start + 1000])


def download_onnx(params: Params, info: ModelVersionInfo, dst: Path) -> Path:
    """Fetch the ONNX artifact of a model version into ``dst`` and return its path."""
    return _download_model_file(params, info, dst, "*.onnx", "ONNX artifact")


def download_weights(params: Params, info: ModelVersionInfo, dst: Path) -> Path:
    """Fetch the PyTorch checkpoint of a model version into ``dst`` (warm starts) and return its path."""
    return _download_model_file(params, info, dst, "*.pt", "PyTorch checkpoint")


def download_deploy_artifact(params: Params, info: ModelVersionInfo, dst: Path) -> Path:
    """Fetch the version's deployable artifact (its whole ``export/<target>/`` folder) below ``dst``.

    The folder lands in ``dst`` under its run path (``dst/export/<target>/``), downloaded beside it and renamed
    into place, so an interrupted download never leaves a half-filled folder. Returns the local path of the file
    to load, ``dst/<deploy.artifact>``.

    Raises:
        LookupError: the version has no ``deploy.artifact`` tag (registered before export selection).
        FileNotFoundError: the run holds no such artifact.
    """
    import mlflow.artifacts

    artifact = deploy_artifact(info)
    if artifact is None:
        raise LookupError(f"model {info.name} version {info.version} has no {DEPLOY_ARTIFACT} tag")
    folder = PurePosixPath(artifact).parent
    client(params)
    dst.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst, prefix=".download-"))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path=str(folder), dst_path=str(tmp))
        )
        if not (local / PurePosixPath(artifact).name).is_file():
            raise FileNotFoundError(
                f"model {info.name} version {info.version}: {artifact} not among the artifacts of run {info.run_id}"
            )
        final = dst.joinpath(*folder.parts)
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        local.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst.joinpath(*PurePosixPath(artifact).parts)
