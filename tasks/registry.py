"""Stage ``registry`` and the MLflow adapter (tracking runs, model versions, aliases).

Contract:
    inputs: ``<reports>/train.json`` (checkpoint, MLflow run), ``<models>/train/dataset/dataset.json`` (which data
        training read), ``<models>/export/model.onnx``, ``<reports>/evaluate.json``, ``<reports>/export.json`` and
        every artifact it lists as built and passing its checks;
    params: ``base``, ``registry``;
    outputs: a new version of the registered model ``registry.model_name`` carrying the weights, the ONNX
        file and the reports as a pyfunc model (``models:/<name>@champion`` loads and predicts with stock
        MLflow), lineage tags on the version; ``<reports>/registry.json``;
    side effects: MLflow store writes (``MLFLOW_TRACKING_URI`` if set, else ``registry.tracking_uri``).

Export artifacts: every artifact the export stage built and re-checked successfully is attached to the version's
run under ``export/<target>/`` (OpenVINO: ``.xml`` + ``.bin``); the export numbers go to the run as metrics
(``export/<target>/<metric>``) and as a table (``export/table.json``, one row per target and registration). The
version is tagged with the deployable artifact the export stage selected: ``deploy.target``, ``deploy.artifact``
(run-relative path of the file to load; :func:`download_deploy_artifact`), ``deploy.precision`` (as built), plus
``export.<target>.map50_95`` / ``export.<target>.p50_ms`` per built target and the INT8 lineage
(``export.calibration``, ``export.quantization``, ``export.versions``). The pyfunc stays on FP32 ONNX.

Aliases ``champion`` / ``challenger`` / ``previous`` are used, never MLflow stages. Every MLflow call of the
project goes through this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tasks.config import Params, load_params, stage_argparser
from tasks.io import write_json_atomic

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
BOOTSTRAP_HINT = "python -m flows.bootstrap (or `make demo`)"
EXPORT_FOLDER = "export"  # run artifact folder of the export artifacts, one sub-folder per target
EXPORT_TABLE = f"{EXPORT_FOLDER}/table.json"
DEPLOY_TARGET, DEPLOY_ARTIFACT, DEPLOY_PRECISION = "deploy.target", "deploy.artifact", "deploy.precision"


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


def training_data_lineage(params: Params) -> dict[str, str]:
    """``dataset_md5`` and ``dataset_mode`` of the data the current checkpoint was trained on.

    Merged data (what ``train`` recorded in its ``dataset.json``; without that record, the merge report when
    :func:`tasks.merge.use_merged` holds): the MD5 of the merged manifest, which names every shard by its MD5.
    Otherwise DVC's hash of ``base.paths.train``.
    """
    from tasks import merge, train

    record = train.dataset_record_path(params)
    trained_on = json.loads(record.read_text()) if record.is_file() else None
    if trained_on is None and merge.use_merged(params):
        report = params.base.paths.reports / "merge.json"
        trained_on = json.loads(report.read_text()) if report.is_file() else None
    if trained_on is not None and trained_on.get("mode") == "merged" and trained_on.get("manifest_md5"):
        return {"dataset_md5": str(trained_on["manifest_md5"]), "dataset_mode": "merged"}
    return {"dataset_md5": dataset_md5(params.base.paths.train), "dataset_mode": "source"}


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


# --------------------------------------------------------------------------------------------- export artifacts


@dataclass(frozen=True)
class ExportAttachment:
    """An export artifact that passed every check, as it is attached to the version's run.

    Attributes:
        target: export target name (``onnx``, ``openvino_int8``, ...).
        precision: the precision it was built in (TensorRT: what the engine actually built).
        path: the local file a loader opens (OpenVINO: the ``.xml``).
        files: every local file of the artifact (OpenVINO: ``.xml`` and ``.bin``).
        artifact: run-relative path of ``path`` once attached: ``export/<target>/<file name>``.
    """

    target: str
    precision: str
    path: Path
    files: tuple[Path, ...]
    artifact: str

    def artifact_path_of(self, file: Path) -> str:
        """The run artifact folder ``file`` goes to (sub-folders of a folder artifact are kept)."""
        return str(PurePosixPath(EXPORT_FOLDER, self.target, *file.relative_to(self.path.parent).parent.parts))


def _healthy(check: Mapping[str, Any]) -> bool:
    parity = check.get("parity")
    return (
        check.get("status") == "built" and bool(check.get("passed")) and (parity is None or bool(parity.get("passed")))
    )


def export_attachments(report: Mapping[str, Any]) -> list[ExportAttachment]:
    """The artifacts of an export report (``reports/export.json``) that were built and passed every check.

    Raises:
        FileNotFoundError: a file of such an artifact is missing (the export folder changed after the report).
    """
    from tasks.runtimes.detectors import artifact_files

    found = []
    for check in report.get("artifacts", []):
        if not _healthy(check):
            continue
        path = Path(check["path"])
        files = artifact_files(path)
        missing = [str(f) for f in files if not f.is_file()]
        if not files or missing:
            raise FileNotFoundError(
                f"export report lists {check['target']} at {path} as built and checked, but "
                f"{', '.join(missing) or 'no file'} is missing; re-run the export stage (python -m tasks.export)"
            )
        found.append(
            ExportAttachment(
                target=check["target"],
                precision=str((check.get("details") or {}).get("built_precision") or check["precision"]),
                path=path,
                files=tuple(files),
                artifact=str(PurePosixPath(EXPORT_FOLDER, check["target"], path.name)),
            )
        )
    return found


def _built(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in report.get("artifacts", []) if c.get("status") == "built"]


def _p50(check: Mapping[str, Any]) -> float | None:
    speed = check.get("speed")
    return None if speed is None else float(speed["latency_ms"]["p50"])


def export_tags(report: Mapping[str, Any], attachments: Sequence[ExportAttachment]) -> dict[str, str]:
    """Version tags from an export report: the deployable artifact, per-target numbers, INT8 lineage.

    ``export.<target>.map50_95`` is measured on the first evaluation set; further sets get a
    ``export.<target>.map50_95.<set>`` tag each. Nothing is tagged ``deploy.*`` when nothing was selected.

    Raises:
        ValueError: the selected target is not among ``attachments`` (did not pass its checks).
    """
    tags: dict[str, str] = {}
    selected = (report.get("selected") or {}).get("target")
    if selected:
        chosen = next((a for a in attachments if a.target == selected), None)
        if chosen is None:
            raise ValueError(f"export report selects {selected!r}, not a built artifact that passed its checks")
        tags |= {DEPLOY_TARGET: chosen.target, DEPLOY_ARTIFACT: chosen.artifact, DEPLOY_PRECISION: chosen.precision}
    for check in _built(report):
        prefix = f"export.{check['target']}"
        for index, (name, value) in enumerate((check.get("map50_95") or {}).items()):
            tags[f"{prefix}.map50_95" if index == 0 else f"{prefix}.map50_95.{name}"] = f"{value:.4f}"
        p50 = _p50(check)
        if p50 is not None:
            tags[f"{prefix}.p50_ms"] = f"{p50:.3f}"
    lineage = report.get("lineage") or {}
    calibration = lineage.get("calibration")
    if calibration is not None:
        ids = "\n".join(calibration.get("image_ids", []))
        calibration = {k: v for k, v in calibration.items() if k != "image_ids"} | {
            "image_ids_sha256": hashlib.sha256(ids.encode()).hexdigest()
        }
    tags["export.calibration"] = json.dumps(calibration, sort_keys=True)
    tags["export.quantization"] = json.dumps(
        {"quantization": lineage.get("quantization"), "calibration": lineage.get("calibration_settings")},
        sort_keys=True,
    )
    tags["export.versions"] = json.dumps(
        {k: v for k, v in (lineage.get("versions") or {}).items() if v}, sort_keys=True
    )
    return tags


def export_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Per built target: mAP50-95 per set, its drop against PyTorch, latency, throughput, size, memory, parity."""
    metrics: dict[str, float] = {}
    reference = report.get("reference_map50_95") or {}
    for check in _built(report):
        prefix = f"{EXPORT_FOLDER}/{check['target']}"
        for name, value in (check.get("map50_95") or {}).items():
            metrics[f"{prefix}/map50_95.{name}"] = float(value)
            if name in reference:
                metrics[f"{prefix}/map_drop.{name}"] = float(reference[name]) - float(value)
        metrics[f"{prefix}/size_mb"] = float(check.get("size_mb", 0.0))
        speed = check.get("speed")
        if speed is not None:
            metrics |= {f"{prefix}/{k}_ms": float(v) for k, v in speed["latency_ms"].items()}
            metrics[f"{prefix}/throughput_ips"] = float(speed["throughput_ips"])
            metrics[f"{prefix}/peak_rss_mb"] = float(speed["peak_rss_mb"])
        parity = check.get("parity")
        if parity is not None and parity.get("reference"):
            metrics[f"{prefix}/parity_match"] = parity["matched"] / parity["reference"]
    return metrics


def export_table(report: Mapping[str, Any], attachments: Sequence[ExportAttachment]) -> dict[str, list[Any]]:
    """One row per export target (skipped ones too): status, numbers, verdict and the attached artifact."""
    attached = {a.target: a.artifact for a in attachments}
    selected = (report.get("selected") or {}).get("target")
    sets = list(report.get("reference_map50_95") or {})
    rows = []
    for check in report.get("artifacts", []):
        speed, parity = check.get("speed") or {}, check.get("parity")
        latency = speed.get("latency_ms", {})
        rows.append(
            {
                "target": check["target"],
                "status": check.get("status", ""),
                "precision": check.get("precision", ""),
                "selected": check["target"] == selected,
                **{f"map50_95.{s}": (check.get("map50_95") or {}).get(s) for s in sets},
                "max_drop": check.get("max_drop"),
                "parity": None if parity is None else f"{parity['matched']}/{parity['reference']}",
                "p50_ms": latency.get("p50"),
                "p95_ms": latency.get("p95"),
                "p99_ms": latency.get("p99"),
                "throughput_ips": speed.get("throughput_ips"),
                "batch": speed.get("batch"),
                "threads": speed.get("threads"),
                "size_mb": check.get("size_mb"),
                "peak_rss_mb": speed.get("peak_rss_mb"),
                "artifact": attached.get(check["target"], ""),
                "verdict": (report.get("selection") or {}).get(check["target"], ""),
            }
        )
    columns = list(rows[0]) if rows else ["target"]
    return {column: [row.get(column) for row in rows] for column in columns}


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
    params: Params,
    *,
    run_id: str,
    weights: Path,
    onnx: Path,
    reports: dict[str, Path],
    lineage: dict[str, str],
    export_report: Mapping[str, Any] | None = None,
) -> ModelVersionInfo:
    """Log the pyfunc model (weights, ONNX, reports as artifacts) in ``run_id`` and register a new version.

    Args:
        params: config (registry name, classes, imgsz, predict thresholds).
        run_id: the training run the version belongs to.
        weights: PyTorch checkpoint.
        onnx: exported ONNX model used by the pyfunc.
        reports: extra files (evaluation/export reports) carried by the version.
        lineage: tags set on the version (dataset hash, git commit, params hash, ...).
        export_report: the export stage's report (``reports/export.json`` content): its checked artifacts are
            attached to the run under ``export/<target>/``, its numbers logged as metrics and a table, and the
            version tagged with the deployable artifact (see the module docstring). ``None``: none of that.

    Raises:
        FileNotFoundError: an artifact the export report lists as checked is missing.
        ValueError: the export report selects an artifact that did not pass its checks.
    """
    import mlflow
    import mlflow.pyfunc

    from tasks.runtimes.pyfunc import DetectorModel

    attachments = export_attachments(export_report) if export_report is not None else []
    tags = export_tags(export_report, attachments) if export_report is not None else {}
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
        # attached before the version exists, so a version never names an artifact that is not there yet
        for attachment in attachments:
            for file in attachment.files:
                mlflow.log_artifact(str(file), artifact_path=attachment.artifact_path_of(file))
        if export_report is not None:
            mlflow.log_metrics(export_metrics(export_report))
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
        if export_report is not None:
            table = export_table(export_report, attachments)
            # log_table appends to an existing file: a run registered twice keeps one block of rows per version
            mlflow.log_table({"version": [version] * len(table["target"])} | table, artifact_file=EXPORT_TABLE)
    for key, value in (lineage | tags).items():
        client.set_model_version_tag(params.registry.model_name, version, key, str(value))
    deploys = f"deploys {tags[DEPLOY_TARGET]} ({tags[DEPLOY_ARTIFACT]}); " if DEPLOY_TARGET in tags else ""
    client.update_model_version(
        params.registry.model_name,
        version,
        description=f"visionloop detector, {deploys}lineage: {json.dumps(lineage, sort_keys=True)}",
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


def deploy_artifact(info: ModelVersionInfo) -> str | None:
    """The run-relative path of the version's deployable artifact (tag ``deploy.artifact``), if it has one."""
    return info.tags.get(DEPLOY_ARTIFACT) or None


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
    _client(params)
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
    export_report = json.loads(reports["export"].read_text()) if "export" in reports else None
    if export_report is None:
        log.warning("%s missing: the version gets no export artifacts and no deploy tags", reports_dir / "export.json")
    elif Path(export_report["weights"]).resolve() != Path(train["weights"]).resolve():
        log.warning("export.json was made from %s, not the trained %s", export_report["weights"], train["weights"])
    lineage = (
        training_data_lineage(params)
        | {
            "git_commit": git_commit(),
            "params_hash": params.digest(),
            "base_weights": train["base_weights"],
            "model_family": train["family"],
            "license": train["license"],
            "train_run_id": train["mlflow_run_id"],
        }
        | {f"map50_95.{name}": f"{s['map50_95']:.4f}" for name, s in golden.items()}
    )
    lineage |= dict(extra_lineage or {})
    reports |= {name: Path(path) for name, path in (extra_reports or {}).items() if Path(path).is_file()}
    info = register_model(
        params,
        run_id=train["mlflow_run_id"],
        weights=Path(train["weights"]),
        onnx=onnx,
        reports=reports,
        lineage=lineage,
        export_report=export_report,
    )
    write_json_atomic(reports_dir / "registry.json", asdict(info))
    log.info(
        "registered %s version %s, deploys %s",
        info.name,
        info.version,
        info.tags.get(DEPLOY_ARTIFACT, "nothing selected (predict falls back to ONNX)"),
    )
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
