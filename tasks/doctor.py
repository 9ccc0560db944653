"""Stage ``doctor``: are the stores consistent with each other? (``make doctor``; also run after a crash).

Contract:
    inputs: the label ledger and the Label Studio project it names, ``<merged>/manifest.parquet`` and its shards
        and holdout images, the MLflow registry and the alias audit trail (``promote.audit_log``), the prediction
        log, and every folder of ``base.paths`` (plus the audit log's) for leftover temp files;
    params: ``base``, ``label``, ``registry``, ``promote``, ``doctor`` (which checks run, which tags a version must
        carry, whether Label Studio is checked without ``LABEL_STUDIO_URL``);
    outputs: ``<reports>/doctor.json`` (:class:`~tasks.contracts.reports.doctor.DoctorReport`): each check ``ok``,
        ``problems`` or ``skipped: <why>`` and every finding with its store, item, problem and fixing command;
        ``python -m tasks.doctor`` exits 1 when anything is found;
    side effects: none besides the report: it reads through the contracts' readers and the adapters, never repairs,
        and never creates a store (an MLflow SQLite file that does not exist is reported, not made).

The checks:
    ``labels``: every Label Studio ledger row's task exists in the recorded project, every task of that project has
        a ledger row, and no image is a task twice (skipped, and said so, when Label Studio is not configured);
    ``merged``: every manifest row's shard exists with its MD5 and holds the row's image with its SHA-256 (holdout
        rows: the frozen file), no shard file is unlisted, no image is merged twice;
    ``registry``: the audit trail is a chain per alias and its last move per alias is where MLflow's alias points;
        every version carries ``doctor.required_tags``; no training run has two versions;
    ``prediction_log``: every part reads with the log's reader; no image is logged twice by one model;
    ``production``: ``base.storage.production`` (S3) answers a listing (a failure names the endpoint, never a
        secret); with production local, skipped until ``base.paths.production`` exists;
    ``temp_files``: no hidden ``.*.tmp`` file (an atomic write a crash interrupted) under the data roots.
"""

from __future__ import annotations

import argparse
import logging
import os
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from tasks.adapters import log_store
from tasks.adapters.s3 import S3Error
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import audit, prediction_log
from tasks.contracts.ledger import ledger_path, read_ledger
from tasks.contracts.merged_manifest import MANIFEST, SHARDS, ManifestError, read_manifest
from tasks.contracts.model_version import CHALLENGER, CHAMPION, PREVIOUS, TRAIN_RUN_ID
from tasks.contracts.reports import write_report
from tasks.contracts.reports.doctor import DoctorReport, Finding
from tasks.core.hashing import file_md5, file_sha256
from tasks.io import pid_alive

log = logging.getLogger(__name__)

OK, PROBLEMS = "ok", "problems"
NOT_CONFIGURED = "skipped: Label Studio not configured (LABEL_STUDIO_URL unset; doctor.labelstudio_without_env: true)"
Check = Callable[[Params], tuple[str, list[Finding]]]


def _command(params: Params, stage: str, extra: str = "") -> str:
    files = " ".join(f"--params {p}" for p in params.sources) or "--params params.yaml"
    return f"python -m tasks.{stage} {files}{' ' + extra if extra else ''}"


def _status(findings: list[Finding]) -> tuple[str, list[Finding]]:
    return (PROBLEMS if findings else OK), findings


# --------------------------------------------------------------------------------------------- labels


def check_labels(params: Params) -> tuple[str, list[Finding]]:
    """Label ledger ↔ the Label Studio project: one task per ledger row, one ledger row per task, no image twice."""
    from tasks.adapters.labelstudio import (
        URL_ENV,
        LabelProjectNotReady,
        LabelStudioBackend,
        LabelStudioError,
        projects_path,
    )

    if params.label.backend != "labelstudio":
        return f"skipped: label.backend is {params.label.backend}", []
    if not os.environ.get(URL_ENV) and not params.doctor.labelstudio_without_env:
        return NOT_CONFIGURED, []
    ledger = ledger_path(params)
    rows = [r for r in read_ledger(ledger).values() if r["backend"] == "labelstudio"]
    try:
        backend = LabelStudioBackend(params.label, params.base.classes, record=projects_path(params), create=False)
    except LabelProjectNotReady as exc:
        if not rows:
            return OK, []
        fix = f"re-run the label stage for the cycle ({_command(params, 'label', '--cycle <cycle>')})"
        return _status([Finding("labels", str(ledger), f"{len(rows)} row(s) name Label Studio tasks, but {exc}", fix)])
    except LabelStudioError as exc:
        return _status([Finding("labelstudio", "server", str(exc), "make labelstudio-up (or set LABEL_STUDIO_URL)")])
    project = int(backend.project_id or 0)
    tasks = backend.list_tasks(project, fields="task_only")
    return _status(_ledger_vs_tasks(params, ledger, [r for r in rows if r["project_id"] == project], project, tasks))


def _ledger_vs_tasks(params: Params, ledger: Path, rows: list, project: int, tasks: list) -> list[Finding]:
    findings: list[Finding] = []
    by_image: dict[str, list[int]] = defaultdict(list)
    for task in tasks:
        by_image[str((task.data or {}).get("image_sha256"))].append(int(task.id))
    task_ids = {int(t.id) for t in tasks}
    ledger_ids = {r["task_id"] for r in rows}
    relabel = _command(params, "label", "--cycle {cycle}")
    for sha, ids in sorted(by_image.items()):
        if len(ids) > 1:
            keep = next((r["task_id"] for r in rows if r["image_sha256"] == sha), min(ids))
            extra = sorted(set(ids) - {keep})
            findings.append(
                Finding(
                    "labelstudio",
                    f"project {project} image {sha[:12]}",
                    f"imported {len(ids)} times (tasks {sorted(ids)})",
                    f"delete tasks {extra} in the Label Studio Data Manager (task {keep} is the ledger's)",
                )
            )
    for row in rows:
        item = f"{ledger} image {row['image_id']} (cycle {row['cycle']})"
        if row["task_id"] is None:
            findings.append(Finding("labels", item, "queued without a task id", relabel.format(cycle=row["cycle"])))
        elif row["task_id"] not in task_ids:
            problem = f"task {row['task_id']} is not in Label Studio project {project}"
            findings.append(Finding("labels", item, problem, relabel.format(cycle=row["cycle"])))
    for task_id in sorted(task_ids - ledger_ids):
        findings.append(
            Finding(
                "labelstudio",
                f"project {project} task {task_id}",
                f"no row of {ledger} names it (an import the ledger never recorded)",
                f"re-run the label stage of its cycle ({relabel.format(cycle='<cycle>')}) or delete the task",
            )
        )
    return findings


# --------------------------------------------------------------------------------------------- merged data


def check_merged(params: Params) -> tuple[str, list[Finding]]:
    """Merged manifest ↔ shards: every row's file is there with its hash, no unlisted shard, no image twice."""
    merged = params.base.paths.merged
    manifest = merged / MANIFEST
    remerge = _command(params, "merge")
    try:
        rows = read_manifest(manifest)
    except (ManifestError, OSError, ValueError) as exc:
        return _status([Finding("merged", str(manifest), f"unreadable: {exc}", f"dvc checkout {manifest}; {remerge}")])
    findings: list[Finding] = []
    by_shard: dict[str, list] = defaultdict(list)
    for row in rows:
        if row.shard:
            by_shard[row.shard].append(row)
        elif row.holdout_path:
            path = Path(row.holdout_path)
            if not path.is_file() or file_sha256(path) != row.sha256:
                problem = "missing" if not path.is_file() else f"sha256 differs from the manifest's {row.sha256[:12]}"
                findings.append(Finding("merged", f"holdout {path}", problem, f"dvc checkout {path.parent}"))
    for shard, shard_rows in sorted(by_shard.items()):
        findings += _check_shard(merged / shard, shard_rows, manifest)
    listed = {(merged / s).resolve() for s in by_shard}
    for path in sorted((merged / SHARDS).glob("*.tar")) if (merged / SHARDS).is_dir() else []:
        if path.resolve() not in listed:
            findings.append(Finding("merged", str(path), f"shard not listed in {manifest}", f"rm {path}; {remerge}"))
    for sha, count in sorted(Counter(r.sha256 for r in rows).items()):
        if count > 1:
            ids = sorted(r.image_id for r in rows if r.sha256 == sha)
            findings.append(Finding("merged", f"image {sha[:12]} ({ids})", f"merged {count} times", remerge))
    return _status(findings)


def _check_shard(path: Path, rows: list, manifest: Path) -> list[Finding]:
    fix = f"dvc checkout {path} (or dvc pull)"
    if not path.is_file():
        return [Finding("merged", str(path), f"shard listed in {manifest} is missing", fix)]
    if file_md5(path) != rows[0].shard_md5:
        return [Finding("merged", str(path), f"md5 differs from the manifest's {rows[0].shard_md5}", fix)]
    try:
        with tarfile.open(path) as tar:
            hashes = {}
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None and member.name.startswith("images/"):
                    hashes[member.name.removeprefix("images/")] = _sha256_stream(handle)
    except (tarfile.TarError, OSError) as exc:
        return [Finding("merged", str(path), f"not a readable tar ({exc})", fix)]
    return [
        Finding("merged", f"{path}:images/{row.file}", "missing or its sha256 differs from the manifest's", fix)
        for row in rows
        if hashes.get(row.file) != row.sha256
    ]


def _sha256_stream(handle: object) -> str:
    import hashlib

    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):  # type: ignore[attr-defined]
        digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- registry


def _store_missing(params: Params) -> Path | None:
    """The SQLite file of a ``sqlite:///`` tracking URI when it does not exist (the client would create it)."""
    from tasks.adapters.mlflow import tracking_uri

    uri = tracking_uri(params)
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    return None if path.is_file() else path


def check_registry(params: Params) -> tuple[str, list[Finding]]:
    """Registry ↔ audit trail: chains per alias end where MLflow's aliases point; versions carry their lineage."""
    from tasks.adapters import mlflow as mlflow_adapter

    trail = [r for r in audit.read_audit(params.promote.audit_log) if r.model == params.registry.model_name]
    missing = _store_missing(params)
    if missing is not None:
        if not trail:
            return f"skipped: no MLflow store at {missing} yet", []
        problem = f"the audit trail records {len(trail)} move(s) but the store {missing} does not exist"
        return _status([Finding("registry", str(missing), problem, "set MLFLOW_TRACKING_URI to the registry's store")])
    try:
        versions = mlflow_adapter.all_versions(params)
        aliases = {name: mlflow_adapter.find_alias(params, name) for name in (CHAMPION, CHALLENGER, PREVIOUS)}
    except VisionloopError as exc:
        return _status([Finding("registry", mlflow_adapter.tracking_uri(params), str(exc), "start the MLflow store")])
    current = {name: (info.version if info else None) for name, info in aliases.items()}
    findings = _audit_vs_aliases(params, trail, current)
    findings += _version_lineage(params, versions)
    return _status(findings)


def _audit_vs_aliases(params: Params, trail: list, current: dict[str, str | None]) -> list[Finding]:
    findings: list[Finding] = []
    where = str(params.promote.audit_log)
    last: dict[str, str | None] = {}
    for record in trail:
        if record.alias is None:
            continue
        cleared = record.alias == CHALLENGER and record.from_version is None  # a promotion clears it unrecorded
        if record.alias in last and record.from_version != last[record.alias] and not cleared:
            problem = (
                f"{record.ts} {record.action} moves {record.alias} from v{record.from_version}, but the move "
                f"before it left it at v{last[record.alias]} (a move without its audit record)"
            )
            findings.append(Finding("audit", f"{where} alias {record.alias}", problem, "check the MLflow UI"))
        last[record.alias] = record.to_version
    pending = audit.pending_path(params.promote.audit_log)
    if pending.is_file():
        problem = "a promote, rollback or challenge was interrupted between moving aliases and recording the moves"
        findings.append(Finding("audit", str(pending), problem, _command(params, "promote", "--recover")))
    fix = f"{_command(params, 'promote', '--rollback --to <version>')} or move it back in the MLflow UI"
    for alias, version in current.items():
        recorded = last.get(alias)
        if alias == CHALLENGER and version is None:
            continue  # a promotion clears the challenger without a record of its own
        if version != recorded:
            problem = f"MLflow says v{version}, the audit trail's last move says v{recorded} (moved without a record)"
            findings.append(Finding("registry", f"alias {alias}", problem, fix))
    return findings


def _version_lineage(params: Params, versions: list) -> list[Finding]:
    findings: list[Finding] = []
    runs: dict[str, list[str]] = defaultdict(list)
    for info in sorted(versions, key=lambda v: int(v.version)):
        lacking = [tag for tag in params.doctor.required_tags if not info.tags.get(tag)]
        if lacking:
            fix = f"re-run the registry stage of its training run {info.run_id} ({_command(params, 'registry')})"
            findings.append(Finding("registry", f"version {info.version}", f"lacks tags {lacking}", fix))
        runs[info.tags.get(TRAIN_RUN_ID) or info.run_id].append(info.version)
    for run_id, numbers in sorted(runs.items()):
        if run_id and len(numbers) > 1:
            problem = f"training run {run_id} has {len(numbers)} versions {numbers} (one run is one version)"
            fix = f"archive the later ones in the MLflow UI ({numbers[1:]}), keep v{numbers[0]}"
            findings.append(Finding("registry", f"versions {numbers}", problem, fix))
    return findings


# --------------------------------------------------------------------------------------------- prediction log


def check_prediction_log(params: Params) -> tuple[str, list[Finding]]:
    """Every part of the prediction log reads with its reader; no image is logged twice by one model."""
    import pyarrow.compute as pc

    try:
        root = log_store.log_root(params)
        table = prediction_log.read(root)
    except (prediction_log.PredictionLogError, log_store.LogStoreError, S3Error) as exc:
        fix = "move the file named aside, re-run predict"
        return _status([Finding("prediction_log", log_store.describe(params), str(exc), fix)])
    keys = ["image_sha256", "model_name", "model_version", "shadow"]
    grouped = table.group_by(keys).aggregate([([], "count_all"), ("n_detections", "max"), ("batch", "distinct")])
    expected = pc.max_element_wise(grouped["n_detections_max"], 1)
    twice = grouped.filter(pc.greater(grouped["count_all"], expected))
    findings = [
        Finding(
            "prediction_log",
            f"image {row['image_sha256'][:12]} model {row['model_name']} v{row['model_version']}",
            f"logged more than once ({row['count_all']} rows for {row['n_detections_max']} detections; batches "
            f"{row['batch_distinct']})",
            f"remove the copied part file under {root} (one part per batch and model), then re-run predict",
        )
        for row in twice.to_pylist()
    ]
    return _status(findings)


# --------------------------------------------------------------------------------------------- temp files


def data_roots(params: Params) -> list[Path]:
    """Every folder of ``base.paths`` and the audit log's, without the ones inside another."""
    folders = {Path(p).resolve() for p in params.base.paths.model_dump().values()}
    folders.add(params.promote.audit_log.parent.resolve())
    return sorted(f for f in folders if not any(o != f and o in f.parents for o in folders))


def check_temp_files(params: Params) -> tuple[str, list[Finding]]:
    """No leftover of an interrupted write under any data root: a hidden ``.*.tmp`` file (atomic writes), a
    ``.<folder>.staging`` / ``.<folder>.old`` folder (folder replaces: world, production batches) or a Prometheus
    textfile's temp file (``<textfile>.<pid>.<thread>``) whose writer is gone."""
    interrupted = "left over by a write that was interrupted (never read by anything)"
    findings = [Finding("files", str(path), interrupted, f"rm {path}") for path in _temp_files(data_roots(params))]
    for folder in _replace_leftovers(data_roots(params)):
        target = folder.with_name(folder.name[1:].rsplit(".", 1)[0])
        if folder.name.endswith(".old") and not target.exists():
            problem = f"the previous {target.name} folder, set aside by an interrupted replace; {target} is missing"
            findings.append(Finding("files", str(folder), problem, f"mv {folder} {target}"))
        else:
            findings.append(Finding("files", str(folder), f"{interrupted}: a folder replace", f"rm -r {folder}"))
    textfile = params.base.paths.reports / params.monitor.metrics.textfile
    if textfile.parent.is_dir():
        for path in sorted(textfile.parent.glob(f"{textfile.name}.*.*")):
            pid = path.name[len(textfile.name) + 1 :].split(".")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                findings.append(Finding("files", str(path), f"{interrupted}: the metrics textfile", f"rm {path}"))
    return _status(findings)


def _temp_files(roots: Iterable[Path]) -> list[Path]:
    found = []
    for root in roots:
        if root.is_dir():
            found += [p for p in root.rglob(".*.tmp") if p.is_file()]
    return sorted(found)


def _replace_leftovers(roots: Iterable[Path]) -> list[Path]:
    found = []
    for root in roots:
        if root.is_dir():
            found += [p for pattern in (".*.staging", ".*.old") for p in root.rglob(pattern) if p.is_dir()]
    return sorted(found)


def check_production(params: Params) -> tuple[str, list[Finding]]:
    """The production location is there: the S3 prefix answers a listing, or the local folder exists."""
    from tasks.adapters import image_store

    location = params.base.storage.production
    if location is None:
        folder = params.base.paths.production
        return (OK, []) if folder.is_dir() else (f"skipped: no production folder {folder} yet", [])
    try:
        log.info("doctor: production %s", image_store.check_location(location))
    except S3Error as exc:
        fix = "start the S3 endpoint or fix AWS_ENDPOINT_URL_S3 / credentials / base.storage.production"
        return _status([Finding("production", location, str(exc), fix)])
    return OK, []


CHECKS: dict[str, Check] = {
    "labels": check_labels,
    "merged": check_merged,
    "registry": check_registry,
    "prediction_log": check_prediction_log,
    "production": check_production,
    "temp_files": check_temp_files,
}


def run(params: Params) -> DoctorReport:
    """Run ``doctor.checks`` and write ``<reports>/doctor.json``; the report's ``ok`` is False on any finding."""
    checks: dict[str, str] = {}
    findings: list[Finding] = []
    for name in params.doctor.checks:
        status, found = CHECKS[name](params)
        checks[name] = status
        findings += found
        log.info("doctor: %s %s%s", name, status, f" ({len(found)} finding(s))" if found else "")
    report = DoctorReport(ok=not findings, checks=checks, findings=findings)
    write_report(params.base.paths.reports, "doctor", report, params)
    return report


def format_report(report: DoctorReport) -> str:
    """One line per check, then one per finding (store, item, problem, fix)."""
    lines = [f"{name:<15} {status}" for name, status in report.checks.items()]
    lines += [f"[{f.store}] {f.item}: {f.problem}\n    fix: {f.fix}" for f in report.findings]
    lines.append("doctor: consistent" if report.ok else f"doctor: {len(report.findings)} problem(s) found")
    return "\n".join(lines)


def _run_cli(params: Params, args: argparse.Namespace) -> DoctorReport:
    return run(params)


def main(argv: list[str] | None = None) -> DoctorReport:
    """``python -m tasks.doctor [--params P ...]``: exit 1 when a store is inconsistent."""
    report: DoctorReport = stage_main("doctor", __doc__, run=_run_cli, summary=format_report, argv=argv)
    if not report.ok:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
