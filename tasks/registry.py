"""Stage ``registry``: register the trained and exported candidate as a model version with its lineage.

Contract:
    inputs: ``<reports>/train.json`` (checkpoint, MLflow run), ``<models>/train/dataset/dataset.json`` (which data
        training read), ``<models>/export/model.onnx``, ``<reports>/evaluate.json``, ``<reports>/export.json`` and
        every artifact it lists as built and passing its checks;
    params: ``base``, ``registry``, ``predict`` (the pyfunc's thresholds);
    outputs: a version of the registered model ``registry.model_name`` carrying the weights, the ONNX file and the
        reports as a pyfunc model (``models:/<name>@champion`` loads and predicts with stock MLflow), the checked
        export artifacts attached to its run under ``export/<target>/``, lineage and ``deploy.*`` tags on the
        version (:mod:`tasks.contracts.model_version`), ``checkpoint_sha256`` (the train report's, checked against
        the file: what lets a warm start open it, :mod:`tasks.contracts.checkpoints`); ``<reports>/registry.json``;
    side effects: MLflow store writes (``MLFLOW_TRACKING_URI`` if set, else ``registry.tracking_uri``), all through
        :mod:`tasks.adapters.mlflow`.

Idempotent: one training run is one version. A re-run for the same candidate (same training MLflow run id, e.g. a
retry after a failure half-way) finds the version that run already has and brings its artifacts and tags up to date
instead of registering a second one. Promotion is the promote stage's (``python -m tasks.promote --version V
--decision promote``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.adapters import dvc
from tasks.adapters import mlflow as mlflow_adapter
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError, load_params
from tasks.contracts.checkpoints import CHECKPOINT_SHA256
from tasks.contracts.license_record import RECORD_TAG, record_json
from tasks.contracts.lineage import git_commit, training_data_lineage
from tasks.contracts.merged_manifest import MANIFEST
from tasks.contracts.model_version import (
    CLASSES_TAG,
    DEPLOY_ARTIFACT,
    DEPLOY_TARGET,
    EXPORT_LINEAGE,
    TRAIN_RUN_ID,
    ModelVersionInfo,
    deploy_tags,
    export_attachments,
    export_lineage,
    export_metrics,
    export_table,
)
from tasks.contracts.reports import load_report_json, report_path, write_report
from tasks.contracts.reports.registry import RegistryResult
from tasks.contracts.train_files import parent_path, parent_record_path, read_dataset_record, write_parent
from tasks.core.hashing import file_md5, file_sha256
from tasks.decisions.license_gate import check_licenses, verdict_tags
from tasks.io import write_bytes_atomic
from tasks.targets.license_components import build_record

log = logging.getLogger(__name__)


class RegistryError(VisionloopError, FileNotFoundError):
    """An input of the registry stage is missing (the message names the stage that makes it)."""


def version_lineage(params: Params, train: Mapping[str, Any], evaluate: Mapping[str, Any] | None) -> dict[str, str]:
    """The lineage tags of the candidate: data, code, params, family, license, its class list (JSON; a champion
    trained on other classes cannot be gated against it), golden mAP. What it started from is ``parent_version``
    (the loop) and the train report attached to the version (``base_weights``), not a local path as a tag."""
    return (
        training_data_lineage(params)
        | {
            "git_commit": git_commit(),
            "params_hash": params.digest(),
            "model_family": str(train["family"]),
            "license": str(train["license"]),
            CLASSES_TAG: json.dumps(list(params.base.classes)),
            TRAIN_RUN_ID: str(train["mlflow_run_id"]),
        }
        | {f"map50_95.{name}": f"{s['map50_95']:.4f}" for name, s in ((evaluate or {}).get("sets") or {}).items()}
    )


def checkpoint_record(train: Mapping[str, Any]) -> dict[str, str]:
    """The ``checkpoint_sha256`` tag: the train report's hash of the checkpoint, checked against the file.

    A report without one (written before checkpoints were hashed) gives no tag: the version's checkpoint then
    opens only once ``train.trusted_checkpoints`` names it (:mod:`tasks.contracts.checkpoints`).

    Raises:
        RegistryError: the checkpoint is missing, or its bytes are not those the train stage recorded.
    """
    weights = Path(train["weights"])
    if not weights.is_file():
        raise RegistryError(f"{weights}: trained checkpoint missing; run the train stage first")
    recorded = train.get(CHECKPOINT_SHA256)
    if not recorded:
        log.warning("%s records no %s: the version is registered without one", weights, CHECKPOINT_SHA256)
        return {}
    if (actual := file_sha256(weights)) != recorded:
        raise RegistryError(
            f"{weights}: sha256 {actual}, but reports/train.json records {recorded}: the checkpoint changed after "
            "training (not the project's); re-run the train stage"
        )
    return {CHECKPOINT_SHA256: str(recorded)}


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

    The export report's checked artifacts and its INT8 lineage (``export/lineage.json``) are attached to the run
    (overwriting: safe to repeat) before any version names them; its numbers go to the run as metrics and, once per
    version, as a table row block. The version's tags are the lineage and ``deploy.*`` only (no per-target figures:
    :mod:`tasks.contracts.model_version`).

    Raises:
        FileNotFoundError: an artifact the export report lists as checked is missing.
        ValueError: the export report selects an artifact that did not pass its checks.
    """
    attachments = export_attachments(export_report) if export_report is not None else []
    tags = deploy_tags(export_report, attachments) if export_report is not None else {}  # checks before writing
    attach = [(file, a.artifact_path_of(file)) for a in attachments for file in a.files]
    metrics = export_metrics(export_report) if export_report is not None else {}
    with tempfile.TemporaryDirectory() as tmp:
        if export_report is not None:
            lineage_file = Path(tmp) / PurePosixPath(EXPORT_LINEAGE).name
            write_bytes_atomic(lineage_file, json.dumps(export_lineage(export_report), indent=1).encode())
            attach.append((lineage_file, str(PurePosixPath(EXPORT_LINEAGE).parent)))
        info, existing = _register_or_find(
            params, run_id, weights=weights, onnx=onnx, reports=reports, attach=attach, metrics=metrics
        )
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


def _register_or_find(
    params: Params,
    run_id: str,
    *,
    weights: Path,
    onnx: Path,
    reports: Mapping[str, Path],
    attach: list[tuple[Path, str]],
    metrics: Mapping[str, float],
) -> tuple[ModelVersionInfo, ModelVersionInfo | None]:
    """The version of ``run_id`` (registered now, or the one it has: then its artifacts and metrics are logged
    again) and the one it had (``None``: registered now)."""
    existing = mlflow_adapter.find_version_by_run(params, run_id)
    if existing is None:
        info = mlflow_adapter.register_model(
            params, run_id=run_id, weights=weights, onnx=onnx, reports=reports, attach=attach, metrics=metrics
        )
        return info, None
    log.info("training run %s is already version %s: reusing it", run_id, existing.version)
    with mlflow_adapter.mlflow_run(params, run_name="", run_id=run_id):
        for file, folder in attach:
            mlflow_adapter.log_artifacts([file], folder)
        mlflow_adapter.log_metrics(metrics)
    return existing, existing


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
    start = time.perf_counter()
    reports_dir, models_dir = params.base.paths.reports, params.base.paths.models
    if not report_path(reports_dir, "train").is_file():
        raise RegistryError(f"{report_path(reports_dir, 'train')}: no training report; run the train stage first")
    train = load_report_json(reports_dir, "train")
    onnx = models_dir / "export" / "model.onnx"
    if not onnx.is_file():
        raise RegistryError(f"{onnx}: exported model missing; run the export stage first")
    reports = {
        name: report_path(reports_dir, name)
        for name in ("train", "compress", "evaluate", "export")
        if report_path(reports_dir, name).is_file()
    }
    evaluate = load_report_json(reports_dir, "evaluate") if "evaluate" in reports else None
    export_report = load_report_json(reports_dir, "export") if "export" in reports else None
    if export_report is None:
        log.warning("%s missing: the version gets no export artifacts and no deploy tags", reports_dir / "export.json")
    elif Path(export_report["weights"]).resolve() != Path(train["weights"]).resolve():
        log.warning("export.json was made from %s, not the trained %s", export_report["weights"], train["weights"])
    lineage = version_lineage(params, train, evaluate) | checkpoint_record(train) | dict(extra_lineage or {})
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
    result = _record_licenses(params, result, train=train, export_report=export_report)
    result = dataclasses.replace(result, wall_s=round(time.perf_counter() - start, 2))
    write_report(reports_dir, "registry", result, params)
    log.info(
        "%s %s version %s, deploys %s",
        "found" if result.reused else "registered",
        result.name,
        result.version,
        result.tags.get(DEPLOY_ARTIFACT, "nothing selected (predict falls back to ONNX)"),
    )
    return result


def _record_licenses(
    params: Params, result: RegistryResult, *, train: Mapping[str, Any], export_report: Mapping[str, Any] | None
) -> RegistryResult:
    """Tag the version with its license record (``license.record``, one ``license.<kind>`` per kind) and the license
    gate's verdict under ``gate.license`` as configured now; the promote stage judges the record again when it moves
    an alias (:func:`tasks.promote.license_refusal`)."""
    record = build_record(
        params,
        train=train,
        export=export_report,
        dataset=read_dataset_record(params),
        registered=mlflow_adapter.checkpoint_hashes(params) if train.get("base_weights_sha256") else None,
    )
    verdict = check_licenses(record, params.gate.license)
    tags = {RECORD_TAG: record_json(record)} | verdict_tags(verdict)  # per-kind summaries: the cycle report
    mlflow_adapter.set_version_tags(params, result.version, tags)
    for line in verdict.reasons():
        log.warning("license gate (%s): v%s %s", verdict.policy, result.version, line)
    log.info(
        "v%s license record: %d components, %s under %s",
        result.version,
        len(record.components),
        "allowed" if verdict.allowed else "refused",
        verdict.policy,
    )
    return dataclasses.replace(result, tags={**result.tags, **tags})


RESTORABLE = "dvc.restorable"  # "true": the version's data and engines are in the DVC remote at its pin
DVC_MD5 = "dvc.md5"  # JSON {DVC output path: md5 as in dvc.lock} of the pin


def pinned_md5s(tags: Mapping[str, str]) -> dict[str, str]:
    """``{output path: md5}`` a version's pin recorded: the ``dvc.md5`` JSON tag, plus the ``dvc.md5.<path>`` tags
    versions pinned before it was one tag carry.

    Raises:
        RestoreError: the ``dvc.md5`` tag is not a JSON object.
    """
    found = {k.removeprefix(f"{DVC_MD5}."): v for k, v in tags.items() if k.startswith(f"{DVC_MD5}.")}
    if DVC_MD5 in tags:
        try:
            recorded = json.loads(tags[DVC_MD5])
        except json.JSONDecodeError:
            recorded = None
        if not isinstance(recorded, dict):
            raise RestoreError(f"tag {DVC_MD5} is not a JSON object of output md5s: {tags[DVC_MD5][:80]!r}")
        found |= {str(k): str(v) for k, v in recorded.items()}
    return found


def pin(params: Params, version: str, *, name: str, root: Path = Path(".")) -> dict[str, str]:
    """Make ``version`` restorable: pin the run's ``dvc.lock`` in git, push its outputs, tag the version.

    Tags: ``dvc.commit`` / ``dvc.ref`` (the pin), ``dvc.md5`` (JSON ``{out path: md5}``: each DVC output's md5 in
    ``dvc.lock``, ``.dir`` hashes for folders; one tag, not one per output, so the version stays one line per
    decision in MLflow's version table), ``dvc.remote``, ``dvc.restorable`` (``true`` once the push succeeded), and
    ``dvc.dirty`` / ``dvc.why`` when something is off. ``dvc.lock`` and the effective params also go to the
    version's run (``dvc/``). A version whose push failed stays ``dvc.restorable=false`` and is pushed again by
    the next pin. Outside a git checkout nothing is pinned: the version is tagged not restorable, with why.
    """
    try:
        foreign = dvc.not_this_project(params, root)
        if foreign is not None:
            raise dvc.PinError(foreign)
        pinned = dvc.pin(root, name, f"visionloop: {params.registry.model_name} v{version} ({name})")
    except dvc.PinError as exc:
        log.warning("version %s is not restorable: %s", version, exc)
        tags = {RESTORABLE: "false", "dvc.why": str(exc)[:500]}
        mlflow_adapter.set_version_tags(params, version, tags)
        return tags
    retried = _push_pending(params, root)
    pushed = dvc.push(root)
    tags = {"dvc.commit": pinned.commit, "dvc.ref": pinned.ref, "dvc.remote": pushed.remote}
    tags[DVC_MD5] = json.dumps(dvc.lock_outs(root), sort_keys=True, separators=(",", ":"))
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


def _restore_parent(params: Params, restored: Params, version: str | None) -> None:
    """The parent checkpoint train read (a dep of the stage): the parent version's weights, as the cycle fetched
    them, or the empty folder of a bootstrap (no ``parent_version``). ``restored``: the version's own params."""
    if version is None:
        folder = parent_path(restored).parent
        for stale in (parent_path(restored), parent_record_path(restored)):
            stale.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        return
    parent = mlflow_adapter.get_version(params, version)
    with tempfile.TemporaryDirectory() as tmp:
        weights = mlflow_adapter.download_weights(params, parent, Path(tmp))
        write_parent(restored, weights.read_bytes(), name=parent.name, version=parent.version)


def describe_pin(version: str, tags: dict[str, str]) -> str:
    """One line for a log: where ``version`` is pinned and pushed, or why it is not restorable."""
    if tags.get(RESTORABLE) == "true":
        where = f"{tags['dvc.ref']} ({tags['dvc.commit'][:10]})"
        return f"v{version} restorable: dvc.lock pinned at {where}, outputs pushed to DVC remote {tags['dvc.remote']}"
    return f"v{version} NOT restorable: {tags.get('dvc.why', 'unknown')}"


def _push_pending(params: Params, root: Path) -> list[str]:
    """Push again the pins of versions a failed push left not restorable; tag the ones that now are."""
    done = []
    for info in mlflow_adapter.versions_tagged(params, RESTORABLE, "false"):
        commit = info.tags.get("dvc.commit")
        if commit and dvc.push(root, revs=[commit]).ok:
            mlflow_adapter.set_version_tags(params, info.version, {RESTORABLE: "true", "dvc.why": "pushed later"})
            done.append(info.version)
    return done


class RestoreError(VisionloopError):
    """A version cannot be restored: never pinned, its push failed, or the remote lacks what it names."""


@dataclass(frozen=True)
class Restored:
    """What :func:`restore` put back, all checked against the version's tags."""

    version: str
    commit: str
    outputs: dict[str, str]
    seconds: float


def restore(params: Params, version: str, *, root: Path = Path(".")) -> Restored:
    """Put the data and engines of ``version`` back into this clone, byte for byte, and check every hash.

    From the MLflow store: the version's tags and its pinned ``dvc.lock`` and effective params (``dvc/`` of its
    run); from the DVC remote: every output that ``dvc.lock`` names (``dvc pull --force``: the merged shards and
    manifest, holdouts, the world with the golden set, the checkpoint, the export folder). ``dvc.lock`` and
    ``params.effective.yaml`` in ``root`` are replaced by the version's. Checked: each md5 of the ``dvc.md5`` tag
    equals the restored ``dvc.lock``, DVC re-hashes the workspace and finds no output changed, and in merged mode
    the merged manifest file's md5 equals the ``dataset_md5`` tag.

    Raises:
        RestoreError: the version was never pinned or not pushed (its ``dvc.why``), the remote lacks an object
            (DVC's message names it), or a hash differs (named).
    """
    start = time.perf_counter()
    info = mlflow_adapter.get_version(params, version)
    tags = info.tags
    if tags.get(RESTORABLE) != "true":
        why = tags.get("dvc.why", "it was never pinned (registered before DVC pinning, or outside a DVC project)")
        raise RestoreError(f"version {version} is not restorable: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in dvc.PINNED_FILES:
            local = mlflow_adapter.download_run_file(params, info.run_id, f"dvc/{name}", Path(tmp))
            write_bytes_atomic(root / name, local.read_bytes())
    expected = pinned_md5s(tags)
    pulled = dvc.pull(root)
    if not pulled.ok:
        missing = [f"{path} (md5 {md5})" for path, md5 in expected.items() if path in (pulled.error or "")]
        named = f"; the remote lacks {', '.join(missing)}" if missing else ""
        raise RestoreError(f"version {version}: dvc pull from {pulled.remote} failed: {pulled.error}{named}")
    restored = load_params(root / dvc.EFFECTIVE_PARAMS)
    parent = tags.get("parent_version")
    _restore_parent(params, restored, None if parent in (None, "none") else parent)  # "none": trained from scratch
    outputs = dvc.lock_outs(root)
    problems = [
        f"{path}: tag {md5}, dvc.lock {outputs.get(path)}" for path, md5 in expected.items() if outputs.get(path) != md5
    ]
    problems += dvc.changed_outputs(root)
    manifest = restored.base.paths.merged / MANIFEST
    if tags.get("dataset_mode") == "merged" and (md5 := file_md5(manifest)) != tags.get("dataset_md5"):
        problems.append(f"{manifest}: md5 {md5}, tag dataset_md5 {tags.get('dataset_md5')}")
    if problems:
        raise RestoreError(f"version {version} restored with differences: " + "; ".join(problems))
    seconds = time.perf_counter() - start
    log.info(
        "restored version %s (pin %s): %d outputs, every hash checked, in %.1f s",
        version,
        tags.get("dvc.commit", "?")[:10],
        len(outputs),
        seconds,
    )
    return Restored(version=version, commit=tags.get("dvc.commit", ""), outputs=outputs, seconds=round(seconds, 2))


def collect_garbage(params: Params, *, root: Path = Path("."), dry: bool = False) -> dvc.Collected:
    """Keep the data of every registered version (and the workspace's), drop the rest, locally and in the remote.

    A pin whose version is no longer registered is deleted first; then every object that neither the workspace
    nor a registered version's pin uses is removed from ``.dvc/cache`` and the remote (``dry``: only counted).
    """
    versions = mlflow_adapter.all_versions(params)
    kept = {v.tags["dvc.ref"]: v.tags["dvc.commit"] for v in versions if "dvc.ref" in v.tags and "dvc.commit" in v.tags}
    for ref in sorted(set(dvc.pin_refs(root)) - set(kept)):
        log.info("gc: pin %s belongs to no registered version%s", ref, "" if dry else ": deleted")
        if not dry:
            dvc.drop_pin(root, ref)
    return dvc.gc(root, sorted(set(kept.values())), cloud=True, dry=dry)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--restore", metavar="VERSION", default=None, help="restore this version's data and engines instead"
    )
    parser.add_argument(
        "--gc", action="store_true", help="remove DVC data no registered version (nor the workspace) uses"
    )
    parser.add_argument("--dry", action="store_true", help="with --gc: count what would go, remove nothing")


def _dispatch(params: Params, args: argparse.Namespace) -> RegistryResult | Restored | dvc.Collected:
    if args.gc:
        return collect_garbage(params, dry=args.dry)
    return restore(params, args.restore) if args.restore else run(params)


def _summary(result: RegistryResult | Restored | dvc.Collected) -> str:
    if isinstance(result, dvc.Collected):
        return json.dumps(asdict(result))
    if isinstance(result, Restored):
        return json.dumps({"restored": result.version, "pin": result.commit, "outputs": result.outputs})
    return json.dumps({"name": result.name, "version": result.version, "aliases": result.aliases})


def main(argv: list[str] | None = None) -> RegistryResult | Restored | dvc.Collected:
    """``python -m tasks.registry [--params P ...] [--restore VERSION | --gc [--dry]]``."""
    return stage_main(
        "registry",
        __doc__,
        run=_dispatch,
        arguments=_arguments,
        summary=_summary,
        argv=argv,
    )


if __name__ == "__main__":
    main()
