"""Stage ``registry``: register the trained and exported candidate as a model version with its lineage.

Contract:
    inputs: ``<reports>/train.json`` (checkpoint, MLflow run), ``<models>/train/dataset/dataset.json`` (which data
        training read), ``<models>/export/model.onnx``, ``<reports>/evaluate.json``, ``<reports>/export.json`` and
        every artifact it lists as built and passing its checks;
    params: ``base``, ``registry``, ``predict`` (the pyfunc's thresholds);
    outputs: a version of the registered model ``registry.model_name`` carrying the weights, the ONNX file and the
        reports as a pyfunc model (``models:/<name>@champion`` loads and predicts with stock MLflow), the checked
        export artifacts attached to its run under ``export/<target>/``, lineage and ``deploy.*`` tags on the
        version (:mod:`tasks.contracts.model_version`); ``<reports>/registry.json``;
    side effects: MLflow store writes (``MLFLOW_TRACKING_URI`` if set, else ``registry.tracking_uri``), all through
        :mod:`tasks.adapters.mlflow`.

Idempotent: one training run is one version. A re-run for the same candidate (same training MLflow run id, e.g. a
retry after a failure half-way) finds the version that run already has and brings its artifacts and tags up to date
instead of registering a second one. Promotion is the promote stage's (``python -m tasks.promote --version V
--decision promote``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tasks.adapters import dvc
from tasks.adapters import mlflow as mlflow_adapter
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts.lineage import git_commit, training_data_lineage
from tasks.contracts.model_version import (
    DEPLOY_ARTIFACT,
    DEPLOY_TARGET,
    TRAIN_RUN_ID,
    ModelVersionInfo,
    export_attachments,
    export_metrics,
    export_table,
    export_tags,
)
from tasks.contracts.reports import load_report_json, report_path, write_report
from tasks.contracts.reports.registry import RegistryResult

log = logging.getLogger(__name__)


class RegistryError(VisionloopError, FileNotFoundError):
    """An input of the registry stage is missing (the message names the stage that makes it)."""


def version_lineage(params: Params, train: Mapping[str, Any], evaluate: Mapping[str, Any] | None) -> dict[str, str]:
    """The lineage tags of the candidate: data, code, params, base weights, family, license, golden mAP."""
    return (
        training_data_lineage(params)
        | {
            "git_commit": git_commit(),
            "params_hash": params.digest(),
            "base_weights": str(train["base_weights"]),
            "model_family": str(train["family"]),
            "license": str(train["license"]),
            TRAIN_RUN_ID: str(train["mlflow_run_id"]),
        }
        | {f"map50_95.{name}": f"{s['map50_95']:.4f}" for name, s in ((evaluate or {}).get("sets") or {}).items()}
    )


def register(
    params: Params,
    *,
    run_id: str,
    weights: Path,
    onnx: Path,
    reports: Mapping[str, Path],
    lineage: Mapping[str, str],
    export_report: Mapping[str, Any] | None = None,
) -> RegistryResult:
    """The version of training run ``run_id``: found when the run has one, else registered; tags brought up to date.

    The export report's checked artifacts are attached to the run (overwriting: safe to repeat) before any version
    names them; its numbers go to the run as metrics and, once per version, as a table row block.

    Raises:
        FileNotFoundError: an artifact the export report lists as checked is missing.
        ValueError: the export report selects an artifact that did not pass its checks.
    """
    attachments = export_attachments(export_report) if export_report is not None else []
    tags = export_tags(export_report, attachments) if export_report is not None else {}  # checks before writing
    attach = [(file, a.artifact_path_of(file)) for a in attachments for file in a.files]
    metrics = export_metrics(export_report) if export_report is not None else {}
    existing = mlflow_adapter.find_version_by_run(params, run_id)
    if existing is None:
        info = mlflow_adapter.register_model(
            params, run_id=run_id, weights=weights, onnx=onnx, reports=reports, attach=attach, metrics=metrics
        )
    else:
        log.info("training run %s is already version %s: reusing it", run_id, existing.version)
        with mlflow_adapter.mlflow_run(params, run_name="", run_id=run_id):
            for file, folder in attach:
                mlflow_adapter.log_artifacts([file], folder)
            mlflow_adapter.log_metrics(metrics)
        info = existing
    if export_report is not None:
        mlflow_adapter.log_version_table(params, info, export_table(export_report, attachments))
    mlflow_adapter.set_version_tags(params, info.version, dict(lineage) | tags)
    deploys = f"deploys {tags[DEPLOY_TARGET]} ({tags[DEPLOY_ARTIFACT]}); " if DEPLOY_TARGET in tags else ""
    mlflow_adapter.describe_version(
        params,
        info.version,
        f"visionloop detector, {deploys}lineage: {json.dumps(dict(lineage), sort_keys=True)}",
    )
    fresh: ModelVersionInfo = mlflow_adapter.get_version(params, info.version)
    return RegistryResult(**asdict(fresh), reused=existing is not None)


def run(
    params: Params,
    *,
    extra_lineage: Mapping[str, str] | None = None,
    extra_reports: Mapping[str, Path] | None = None,
) -> RegistryResult:
    """Register the trained + exported model with lineage (or find it registered); write ``reports/registry.json``.

    Args:
        params: config.
        extra_lineage: more lineage tags (the loop: cycle, parent version, sample manifest, GX and gate reports).
        extra_reports: more files attached to the version like the stage reports.

    Raises:
        RegistryError: no training report or no exported model.
    """
    reports_dir, models_dir = params.base.paths.reports, params.base.paths.models
    if not report_path(reports_dir, "train").is_file():
        raise RegistryError(f"{report_path(reports_dir, 'train')}: no training report; run the train stage first")
    train = load_report_json(reports_dir, "train")
    onnx = models_dir / "export" / "model.onnx"
    if not onnx.is_file():
        raise RegistryError(f"{onnx}: exported model missing; run the export stage first")
    reports = {
        name: report_path(reports_dir, name)
        for name in ("train", "evaluate", "export")
        if report_path(reports_dir, name).is_file()
    }
    evaluate = load_report_json(reports_dir, "evaluate") if "evaluate" in reports else None
    export_report = load_report_json(reports_dir, "export") if "export" in reports else None
    if export_report is None:
        log.warning("%s missing: the version gets no export artifacts and no deploy tags", reports_dir / "export.json")
    elif Path(export_report["weights"]).resolve() != Path(train["weights"]).resolve():
        log.warning("export.json was made from %s, not the trained %s", export_report["weights"], train["weights"])
    lineage = version_lineage(params, train, evaluate) | dict(extra_lineage or {})
    reports |= {name: Path(path) for name, path in (extra_reports or {}).items() if Path(path).is_file()}
    result = register(
        params,
        run_id=str(train["mlflow_run_id"]),
        weights=Path(train["weights"]),
        onnx=onnx,
        reports=reports,
        lineage=lineage,
        export_report=export_report,
    )
    write_report(reports_dir, "registry", result, params)
    log.info(
        "%s %s version %s, deploys %s",
        "found" if result.reused else "registered",
        result.name,
        result.version,
        result.tags.get(DEPLOY_ARTIFACT, "nothing selected (predict falls back to ONNX)"),
    )
    return result


RESTORABLE = "dvc.restorable"  # "true": the version's data and engines are in the DVC remote at its pin


def pin(params: Params, version: str, *, name: str, root: Path = Path(".")) -> dict[str, str]:
    """Make ``version`` restorable: pin the run's ``dvc.lock`` in git, push its outputs, tag the version.

    Tags: ``dvc.commit`` / ``dvc.ref`` (the pin), ``dvc.md5.<out path>`` (each DVC output's md5 in ``dvc.lock``,
    ``.dir`` hashes for folders), ``dvc.remote``, ``dvc.restorable`` (``true`` once the push succeeded), and
    ``dvc.dirty`` / ``dvc.why`` when something is off. ``dvc.lock`` and the effective params also go to the
    version's run (``dvc/``). A version whose push failed stays ``dvc.restorable=false`` and is pushed again by
    the next pin. Outside a git checkout nothing is pinned: the version is tagged not restorable, with why.
    """
    try:
        pinned = dvc.pin(root, name, f"visionloop: {params.registry.model_name} v{version} ({name})")
    except dvc.PinError as exc:
        log.warning("version %s is not restorable: %s", version, exc)
        tags = {RESTORABLE: "false", "dvc.why": str(exc)[:500]}
        mlflow_adapter.set_version_tags(params, version, tags)
        return tags
    retried = _push_pending(params, root)
    pushed = dvc.push(root)
    tags = {"dvc.commit": pinned.commit, "dvc.ref": pinned.ref, "dvc.remote": pushed.remote}
    tags |= {f"dvc.md5.{path}": md5 for path, md5 in dvc.lock_outs(root).items()}
    tags[RESTORABLE] = "true" if pushed.ok else "false"
    if pinned.dirty:
        tags["dvc.dirty"] = ", ".join(pinned.dirty)[:500]
    if pushed.error:
        tags["dvc.why"] = f"push failed (retried by the next pin): {pushed.error}"[:500]
    mlflow_adapter.set_version_tags(params, version, tags)
    info = mlflow_adapter.get_version(params, version)
    with mlflow_adapter.mlflow_run(params, run_name="", run_id=info.run_id):
        mlflow_adapter.log_artifacts([root / f for f in dvc.PINNED_FILES], "dvc")
    log.info(
        "version %s pinned at %s (%s); pushed: %s%s",
        version,
        pinned.ref,
        pinned.commit[:10],
        pushed.ok,
        f"; earlier versions now pushed: {retried}" if retried else "",
    )
    return tags


def _push_pending(params: Params, root: Path) -> list[str]:
    """Push again the pins of versions a failed push left not restorable; tag the ones that now are."""
    done = []
    for info in mlflow_adapter.versions_tagged(params, RESTORABLE, "false"):
        commit = info.tags.get("dvc.commit")
        if commit and dvc.push(root, revs=[commit]).ok:
            mlflow_adapter.set_version_tags(params, info.version, {RESTORABLE: "true", "dvc.why": "pushed later"})
            done.append(info.version)
    return done


def main(argv: list[str] | None = None) -> RegistryResult:
    """``python -m tasks.registry [--params P ...]``."""
    return stage_main(
        "registry",
        __doc__,
        run=lambda params, _args: run(params),
        summary=lambda r: json.dumps({"name": r.name, "version": r.version, "aliases": r.aliases}),
        argv=argv,
    )


if __name__ == "__main__":
    main()
