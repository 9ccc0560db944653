"""``make doctor`` (tasks/doctor.py): clean on a consistent store, and a finding for each kind of inconsistency.

The store is real and tiny: a world, a labeled cycle merged into shards and a holdout, a prediction log, a SQLite
MLflow registry with two versions carrying their lineage, promoted twice through the promote stage (so the audit
trail is the stage's own). Each case breaks one thing the way a crash or a hand edit would and expects the doctor
to name the store and the item, with a fix, and to exit 1. The Label Studio cases run against the real server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks import doctor, label, merge, promote
from tasks.adapters import labelstudio
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import LabelParams, Params
from tasks.contracts.ledger import ledger_path, read_ledger, write_ledger
from tasks.contracts.merged_manifest import MANIFEST, manifest_bytes, read_manifest
from tasks.contracts.reports import load_report_json
from tasks.contracts.reports.promote import AuditRecord
from tasks.io import write_bytes_atomic
from tests.conftest import tiny_params_dict
from tests.integration.conftest import CYCLE, Server, build_cycle, labelstudio_env, make_params, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

LINEAGE = {"dataset_md5": "d" * 32, "git_commit": "c" * 40, "params_hash": "p" * 16, "model_family": "yolo"}


def label_cycle(params: Params, cycle: str) -> None:
    """A labeled cycle as validate leaves it: the first batch's images with their oracle labels."""
    paths = params.base.paths
    batch = sorted(p.name for p in paths.production.iterdir() if p.is_dir())[0]
    for kind in ("images", "labels"):
        source = (paths.production if kind == "images" else paths.oracle) / batch / kind
        shutil.copytree(source, paths.labels / cycle / kind)


def register_versions(params: Params, count: int = 3) -> None:
    """Versions from their own training runs, tagged with their lineage, moved as the loop moves them: v1 promoted,
    v2 challenger then promoted (which clears the challenger without a record), v3 challenger."""
    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    experiment = client.get_experiment_by_name("Default").experiment_id
    for _ in range(count):
        run = client.create_run(experiment).info.run_id
        version = client.create_model_version(
            params.registry.model_name, source=str(params.base.paths.models), run_id=run
        )
        mlflow_adapter.set_version_tags(params, str(version.version), LINEAGE | {"train_run_id": run})
    promote.promote(params, version="1", why="first", who="test")
    promote.challenge(params, version="2", why="candidate", who="test")
    promote.promote(params, version="2", why="second", who="test")
    promote.challenge(params, version="3", why="candidate", who="test")


def _tiny(root: Path) -> Params:
    return Params.model_validate(tiny_params_dict(root, merge={"holdout_fraction": 0.25}))


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry and its audit trail, made once (a fresh MLflow SQLite store costs ~13 s); tests copy them."""
    root = tmp_path_factory.mktemp("registry-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        register_versions(_tiny(root))
    return root


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_template: Path) -> Params:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _tiny(tmp_path)
    build_cycle(params)  # world, champion predictions in the log, a sample manifest
    label_cycle(params, "c1")
    merge.run(params, cycle="c1")
    for name in ("mlflow.db", "data/audit/aliases.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(registry_template / name, tmp_path / name)
    return params


# ----------------------------------------------------------------------------------------- injections


def _rows(params: Params) -> list:
    return read_manifest(params.base.paths.merged / MANIFEST)


def _first_shard(params: Params) -> Path:
    return params.base.paths.merged / next(r.shard for r in _rows(params) if r.shard)


def _log_part(params: Params) -> Path:
    return sorted(params.base.paths.predictions.rglob("*.parquet"))[0]


def shard_missing(params: Params) -> None:
    _first_shard(params).unlink()


def shard_corrupt(params: Params) -> None:
    with _first_shard(params).open("ab") as handle:
        handle.write(b"\0" * 512)


def shard_orphan(params: Params) -> None:
    shutil.copy(_first_shard(params), params.base.paths.merged / "shards" / "left-over.tar")


def image_merged_twice(params: Params) -> None:
    rows = _rows(params)
    write_bytes_atomic(params.base.paths.merged / MANIFEST, manifest_bytes([*rows, rows[-1]]))


def holdout_changed(params: Params) -> None:
    path = Path(next(r.holdout_path for r in _rows(params) if r.holdout_path))
    path.write_bytes(path.read_bytes() + b"\0")


def alias_moved_without_record(params: Params) -> None:
    mlflow_adapter.set_alias(params, "champion", "1")


def version_without_lineage(params: Params) -> None:
    client = mlflow_adapter.client(params)
    client.create_model_version(params.registry.model_name, source=str(params.base.paths.models))


def second_version_of_a_run(params: Params) -> None:
    first = mlflow_adapter.get_version(params, "1")
    client = mlflow_adapter.client(params)
    version = client.create_model_version(params.registry.model_name, source=first.source, run_id=first.run_id)
    mlflow_adapter.set_version_tags(params, str(version.version), first.tags)


def audit_chain_broken(params: Params) -> None:
    record = {
        "ts": "2026-11-30T00:00:00.000+00:00",
        "who": "hand",
        "action": "promote",
        "model": params.registry.model_name,
        "alias": "champion",
        "from_version": "1",  # the trail left it at v2
        "to_version": "2",
        "why": "hand edit",
    }
    with params.promote.audit_log.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def alias_move_interrupted(params: Params) -> None:
    """A promotion killed after writing its moves ahead and moving the champion, before its audit line."""
    model, ts = params.registry.model_name, "2026-12-01T00:00:00.000+00:00"
    champion = mlflow_adapter.get_alias(params, "champion").version
    record = AuditRecord(ts, "killed@host", "promote", model, "champion", champion, "1", "killed")
    promote.write_ahead(params, [record])
    mlflow_adapter.set_alias(params, "champion", "1")


def log_part_copied(params: Params) -> None:
    part = _log_part(params)
    shutil.copy(part, part.with_name("copy-" + part.name))


def log_part_unreadable(params: Params) -> None:
    part = _log_part(params)
    part.with_name("torn.parquet").write_bytes(part.read_bytes()[:100])


def temp_file_left(params: Params) -> None:
    folder = _log_part(params).parent
    (folder / f".{_log_part(params).name}.99999999.abc.tmp").write_bytes(b"half")


def folder_replace_interrupted(params: Params) -> None:
    """World killed between its two renames: the old production folder set aside, the new one not yet in place."""
    production = params.base.paths.production
    production.rename(production.with_name(f".{production.name}.old"))


def staging_folder_left(params: Params) -> None:
    staging = params.base.paths.production.with_name(f".{params.base.paths.production.name}.staging")
    (staging / "batch").mkdir(parents=True)


def metrics_temp_left(params: Params) -> None:
    textfile = params.base.paths.reports / params.monitor.metrics.textfile
    textfile.parent.mkdir(parents=True, exist_ok=True)
    (textfile.parent / f"{textfile.name}.{_dead_pid()}.140000").write_text("half")


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


CASES: list[tuple[str, Callable[[Params], None], str, str]] = [
    ("shard missing", shard_missing, "merged", "is missing"),
    ("shard corrupt", shard_corrupt, "merged", "md5 differs"),
    ("shard not listed", shard_orphan, "merged", "not listed"),
    ("image merged twice", image_merged_twice, "merged", "merged 2 times"),
    ("holdout image changed", holdout_changed, "merged", "sha256 differs"),
    ("alias moved without a record", alias_moved_without_record, "registry", "moved without a record"),
    ("version without lineage", version_without_lineage, "registry", "lacks tags"),
    ("two versions of one run", second_version_of_a_run, "registry", "has 2 versions"),
    ("audit chain broken", audit_chain_broken, "audit", "a move without its audit record"),
    ("alias move interrupted", alias_move_interrupted, "audit", "was interrupted"),
    ("log part copied", log_part_copied, "prediction_log", "logged more than once"),
    ("log part unreadable", log_part_unreadable, "prediction_log", "torn.parquet"),
    ("temp file left", temp_file_left, "files", "interrupted"),
    ("folder replace interrupted", folder_replace_interrupted, "files", "is missing"),
    ("staging folder left", staging_folder_left, "files", "a folder replace"),
    ("metrics temp file left", metrics_temp_left, "files", "the metrics textfile"),
]


def test_a_consistent_store_is_clean_and_label_studio_is_reported_skipped(store, capsys):
    report = doctor.main(["--params", str(_params_file(store))])
    assert report.ok and report.findings == []
    assert report.checks["labels"].startswith("skipped: Label Studio not configured")  # never silently "ok"
    assert {report.checks[name] for name in ("merged", "registry", "prediction_log", "temp_files")} == {"ok"}
    written = load_report_json(store.base.paths.reports, "doctor")
    assert written["ok"] is True and "labels" in written["checks"]
    assert "doctor: consistent" in capsys.readouterr().out


@pytest.mark.parametrize(("case", "inject", "store_name", "problem"), CASES, ids=[c[0] for c in CASES])
def test_each_inconsistency_is_found_with_its_fix(store, case, inject, store_name, problem):
    inject(store)
    with pytest.raises(SystemExit) as exited:
        doctor.main(["--params", str(_params_file(store))])
    assert exited.value.code == 1
    report = load_report_json(store.base.paths.reports, "doctor")
    assert not report["ok"]
    found = [f for f in report["findings"] if f["store"] == store_name]
    assert found, f"{case}: no {store_name} finding in {report['findings']}"
    assert any(problem in f["problem"] or problem in f["item"] for f in found), found
    assert all(f["fix"] and f["item"] for f in report["findings"])


def test_the_fix_for_an_interrupted_alias_move_records_it(store):
    alias_move_interrupted(store)
    records = promote.main(["--params", str(_params_file(store)), "--recover"])
    assert [(r.alias, r.to_version) for r in records] == [("champion", "1")]
    assert records[0].why.endswith("(moved by an interrupted run, recorded by its re-run)")
    assert doctor.run(store).ok, doctor.format_report(doctor.run(store))


def test_a_missing_registry_is_skipped_not_created(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = Params.model_validate(tiny_params_dict(tmp_path))
    report = doctor.run(params)
    assert report.ok and report.checks["registry"].startswith("skipped: no MLflow store")
    assert not (tmp_path / "mlflow.db").exists()


def _params_file(params: Params) -> Path:
    import yaml

    path = params.base.paths.reports.parent / "doctor-params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------- Label Studio


@pytest.fixture(scope="module")
def labeled(server: Server, labelstudio_env: Server) -> Params:  # noqa: F811 (fixtures imported above)
    params = build_cycle(make_params(server.root, title="visionloop-doctor"))
    label.run(params, cycle=CYCLE)
    return params


def _ls_findings(params: Params) -> list:
    status, findings = doctor.check_labels(params)
    assert status == ("problems" if findings else "ok")
    return findings


def test_label_studio_agrees_with_the_ledger_after_the_label_stage(labeled):
    assert _ls_findings(labeled) == []


def test_a_task_without_ledger_row_and_a_row_without_task_are_found(labeled):
    path = ledger_path(labeled)
    saved = path.read_bytes()
    rows = read_ledger(path)
    dropped, changed = sorted(rows)[:2]
    task_id = rows[dropped]["task_id"]
    del rows[dropped]
    rows[changed] = {**rows[changed], "task_id": 99_999_999}
    try:
        write_ledger(path, rows)
        found = _ls_findings(labeled)
    finally:
        write_bytes_atomic(path, saved)
    items = [(f.store, f.item, f.problem) for f in found]
    assert any(store == "labelstudio" and f"task {task_id}" in item for store, item, _ in items), items
    assert any(store == "labels" and "99999999" in problem for store, _, problem in items), items


def test_an_image_imported_twice_is_found(labeled):
    client = labelstudio.connect(LabelParams())
    backend = labelstudio.LabelStudioBackend(
        labeled.label, labeled.base.classes, record=labelstudio.projects_path(labeled), create=False, client=client
    )
    first = backend.list_tasks(int(backend.project_id or 0), fields="task_only")[0]
    made = client.projects.import_tasks(
        id=int(backend.project_id or 0), request=[{"data": dict(first.data)}], return_task_ids=True
    )
    try:
        found = _ls_findings(labeled)
    finally:
        for task_id in made.task_ids or []:
            client.tasks.delete(id=str(task_id))
    assert any("imported 2 times" in f.problem for f in found), found
    assert _ls_findings(labeled) == []
