"""Stage ``registry`` and the MLflow adapter (tracking runs, model versions, aliases).

Contract:
    inputs: ``<reports>/train.json`` (checkpoint, MLflow run), ``<models>/export/model.onnx``,
        ``<reports>/evaluate.json``, ``<reports>/export.json``;
    params: ``base``, ``registry``;
    outputs: a new version of the registered model ``registry.model_name`` carrying the weights, the ONNX
        file and the reports as a pyfunc model (``models:/<name>@champion`` loads and predicts with stock
        MLflow), lineage tags on the version; ``<reports>/registry.json``;
    side effects: MLflow store writes (``MLFLOW_TRACKING_URI`` if set, else ``registry.tracking_uri``).

Aliases ``champion`` / ``challenger`` / ``previous`` are used, never MLflow stages. Every MLflow call of the
project goes through this module.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.config import Params, load_params, stage_argparser
from tasks.io import write_json_atomic

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
BOOTSTRAP_HINT = "python -m flows.bootstrap (or `make demo`)"


class AliasNotFoundError(LookupError):
    """The registered model has no version under the requested alias."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version as the rest of the pipeline sees it."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: list[str]


# --------------------------------------------------------------------------------------------- tracking


@functools.cache
def _user_tracking_uri() -> str | None:
    # Read once, before this module first calls mlflow.set_tracking_uri, which writes the same variable.
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def tracking_uri(params: Params) -> str:
    """The MLflow store: ``MLFLOW_TRACKING_URI`` from the user's environment wins over params."""
    return _user_tracking_uri() or params.registry.tracking_uri


def _client(params: Params) -> Any:
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(params: Params) -> str:
    client = _client(params)
    experiment = client.get_experiment_by_name(params.registry.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if tracking_uri(params).startswith("sqlite:"):
        # A local store keeps artifacts in the project, not in ./mlruns of whatever the working dir is.
        location = params.registry.artifact_root.resolve().as_uri()
    return str(client.create_experiment(params.registry.experiment, artifact_location=location))


@contextmanager
def mlflow_run(
    params: Params, *, run_name: str, tags: dict[str, str] | None = None, run_id: str | None = None
) -> Iterator[str]:
    """Start (or resume, with ``run_id``) an MLflow run; yields its id."""
    import mlflow

    experiment_id = _experiment_id(params)
    with mlflow.start_run(
        run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=None if run_id else run_name, tags=tags
    ) as active:
        yield active.info.run_id


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


def log_artifacts(paths: Sequence[Path], folder: str) -> None:
    """Attach files to the active run under ``folder``."""
    import mlflow

    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder)


# --------------------------------------------------------------------------------------------- lineage


def dataset_md5(path: Path) -> str:
    """DVC's content hash of a file or folder (``<md5>.dir`` for folders), as in ``dvc.lock``."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(Path(path).resolve()), fs, "md5", dry_run=True)
    return str(obj.hash_info.value)


def git_commit(cwd: Path | None = None) -> str:
    """HEAD commit, with ``-dirty`` when tracked files differ; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


# --------------------------------------------------------------------------------------------- pyfunc


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


# --------------------------------------------------------------------------------------------- registry


def _info(mv: Any, aliases: list[str] | None = None) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        source=mv.source,
        tags=dict(mv.tags or {}),
        aliases=list(aliases if aliases is not None else mv.aliases),
    )


def register_model(
    params: Params, *, run_id: str, weights: Path, onnx: Path, reports: dict[str, Path], lineage: dict[str, str]
) -> ModelVersionInfo:
    """Log the pyfunc model (weights, ONNX, reports as artifacts) in ``run_id`` and register a new version.

    Args:
        params: config (registry name, classes, imgsz, predict thresholds).
        run_id: the training run the version belongs to.
        weights: PyTorch checkpoint.
        onnx: exported ONNX model used by the pyfunc.
        reports: extra files (evaluation/export reports) carried by the version.
        lineage: tags set on the version (dataset hash, git commit, params hash, ...).
    """
    import mlflow.pyfunc

    from tasks.serving import DetectorModel

    client = _client(params)
    artifacts = {"onnx": str(onnx), "weights": str(weights)} | {k: str(v) for k, v in reports.items()}
    model_config = {
        "classes": list(params.base.classes),
        "imgsz": params.base.imgsz,
        "conf": params.predict.conf,
        "iou": params.predict.iou,
        "max_det": params.predict.max_det,
        "threads": params.predict.threads,
    }
    with mlflow_run(params, run_name="", run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=DetectorModel(),
            artifacts=artifacts,
            model_config=model_config,
            code_paths=[str(Path(__file__).resolve().parent)],
            signature=_signature(),
            pip_requirements=_pyfunc_requirements(),
            registered_model_name=params.registry.model_name,
        )
    version = str(info.registered_model_version)
    for key, value in lineage.items():
        client.set_model_version_tag(params.registry.model_name, version, key, str(value))
    client.update_model_version(
        params.registry.model_name,
        version,
        description=f"visionloop detector, lineage: {json.dumps(lineage, sort_keys=True)}",
    )
    return _info(client.get_model_version(params.registry.model_name, version), aliases=[])


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


def get_alias(params: Params, alias: str) -> ModelVersionInfo:
    """Resolve ``alias`` at call time.

    Raises:
        AliasNotFoundError: no such model or alias; the message names the flow that creates it.
    """
    from mlflow.exceptions import MlflowException

    client = _client(params)
    name = params.registry.model_name
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise AliasNotFoundError(
            f"registered model {name!r} has no {alias!r} alias in {tracking_uri(params)}; "
            f"create the first champion with {BOOTSTRAP_HINT}"
        ) from None
    return _info(mv, aliases=[alias])


def find_alias(params: Params, alias: str) -> ModelVersionInfo | None:
    """Like :func:`get_alias` but ``None`` when the alias is not set."""
    try:
        return get_alias(params, alias)
    except AliasNotFoundError:
        return None


def set_alias(params: Params, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``."""
    _client(params).set_registered_model_alias(params.registry.model_name, alias, str(version))


def delete_alias(params: Params, alias: str) -> None:
    """Remove ``alias`` from the registered model (no error if it is not set)."""
    from mlflow.exceptions import MlflowException

    try:
        _client(params).delete_registered_model_alias(params.registry.model_name, alias)
    except MlflowException:
        log.debug("alias %s was not set", alias)


def set_version_tags(params: Params, version: str, tags: dict[str, str]) -> None:
    """Set tags on a model version."""
    client = _client(params)
    for key, value in tags.items():
        client.set_model_version_tag(params.registry.model_name, str(version), key, value)


def load_pyfunc(params: Params, version: str) -> Any:
    """Load ``models:/<name>/<version>`` with stock MLflow."""
    import mlflow.pyfunc

    _client(params)
    return mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}/{version}")


def download_onnx(params: Params, info: ModelVersionInfo, dst: Path) -> Path:
    """Fetch the ONNX artifact of a model version into ``dst`` and return its path."""
    import mlflow.artifacts

    _client(params)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{info.name}/{info.version}", dst_path=str(dst))
    found = sorted(Path(local).rglob("*.onnx"))
    if not found:
        raise FileNotFoundError(f"model {info.name} version {info.version}: no ONNX artifact in {local}")
    return found[0]


def download_weights(params: Params, info: ModelVersionInfo, dst: Path) -> Path:
    """Fetch the PyTorch checkpoint of a model version into ``dst`` (warm starts) and return its path."""
    import mlflow.artifacts

    _client(params)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{info.name}/{info.version}", dst_path=str(dst))
    found = sorted(Path(local).rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"model {info.name} version {info.version}: no PyTorch checkpoint in {local}")
    return found[0]


# --------------------------------------------------------------------------------------------- stage


def run(
    params: Params,
    *,
    extra_lineage: Mapping[str, str] | None = None,
    extra_reports: Mapping[str, Path] | None = None,
) -> ModelVersionInfo:
    """Register the trained + exported model with lineage; write ``reports/registry.json``.

    Args:
        params: config.
        extra_lineage: more lineage tags (the loop: cycle, parent version, sample manifest, GX and gate reports).
        extra_reports: more files attached to the version like the stage reports.
    """
    reports_dir, models_dir = params.base.paths.reports, params.base.paths.models
    train = json.loads((reports_dir / "train.json").read_text())
    onnx = models_dir / "export" / "model.onnx"
    if not onnx.is_file():
        raise FileNotFoundError(f"{onnx}: exported model missing; run the export stage first")
    reports = {
        name: reports_dir / f"{name}.json"
        for name in ("train", "evaluate", "export")
        if (reports_dir / f"{name}.json").is_file()
    }
    golden = json.loads(reports["evaluate"].read_text())["sets"] if "evaluate" in reports else {}
    lineage = {
        "dataset_md5": dataset_md5(params.base.paths.train),
        "git_commit": git_commit(),
        "params_hash": params.digest(),
        "base_weights": train["base_weights"],
        "model_family": train["family"],
        "license": train["license"],
        "train_run_id": train["mlflow_run_id"],
    } | {f"map50_95.{name}": f"{s['map50_95']:.4f}" for name, s in golden.items()}
    lineage |= dict(extra_lineage or {})
    reports |= {name: Path(path) for name, path in (extra_reports or {}).items() if Path(path).is_file()}
    info = register_model(
        params,
        run_id=train["mlflow_run_id"],
        weights=Path(train["weights"]),
        onnx=onnx,
        reports=reports,
        lineage=lineage,
    )
    write_json_atomic(reports_dir / "registry.json", asdict(info))
    log.info("registered %s version %s", info.name, info.version)
    return info


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.registry [--params P] [--promote]``."""
    from tasks.env import apply_env

    parser = stage_argparser("registry", __doc__)
    parser.add_argument("--promote", action="store_true", help="make the new version the champion (audited)")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    info = run(params)
    moves = {}
    if args.promote:
        from tasks import promote

        moves = promote.promote(params, version=info.version, why="registered with --promote").moves
    print(json.dumps({"name": info.name, "version": info.version, "aliases": moves}))


if __name__ == "__main__":
    main()
