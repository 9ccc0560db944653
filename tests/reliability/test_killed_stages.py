"""Killed stages: every stage that writes, SIGKILLed half-way and run again, ends as a clean run ends.

Each stage runs as its own process (``python -m tasks.env exec -- python -m tasks.<stage> --params F``) on a tiny
world under ``tmp_path``. It is killed two ways:

* at a seeded hook point: ``VISIONLOOP_KILL_BEFORE_RENAME=<file name>`` makes :func:`tasks.io.atomic_open` SIGKILL
  the process when that file is fully written but not yet renamed into place (the worst moment of a write);
* after a seeded random number of seconds (a SIGKILL to its process group), wherever it happens to be.

After every kill the files a reader can see must be whole (every visible Parquet, JSON, tar and PNG opens). Then
the stage runs again to completion and its output must equal a clean run's (compared with what varies between runs
left out: timestamps, wall times), with no duplicate log row, merged image, model version, alias move or Label
Studio task, and ``tasks.doctor`` must report the stores consistent (no leftover temp file either).

The registries are real SQLite MLflow stores (one made per module and copied: a fresh store costs ~13 s); the label
stage talks to the real Label Studio of the session fixtures. Training and export kills are ``slow``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tasks import doctor, promote, world
from tasks.adapters import labelstudio
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.ledger import ledger_path, read_ledger
from tasks.contracts.merged_manifest import MANIFEST, read_manifest
from tasks.contracts.model_version import CHAMPION, PREVIOUS
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.promote import AuditRecord
from tasks.contracts.reports.train import TrainResult
from tasks.core.hashing import file_sha256
from tasks.env import PROJECT_ROOT
from tasks.io import KILL_BEFORE_RENAME_ENV
from tests.conftest import tiny_params_dict
from tests.integration.conftest import CYCLE, Server, build_cycle, labelstudio_env, make_params, server  # noqa: F401
from tests.integration.test_predict_shadow import CHAMPION_ROWS, SHADOW_ROWS, constant_detector

# ~3 min in all: every stage killed and resumed for real; CI runs them in its slow part (make test-slow-reliability)
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 12
LINEAGE = {"dataset_md5": "d" * 32, "git_commit": "c" * 40, "params_hash": "p" * 16, "model_family": "yolo"}


# ----------------------------------------------------------------------------------------- running and killing


@dataclass(frozen=True)
class Ran:
    returncode: int
    wall_s: float
    output: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def run_stage(
    params_file: Path, stage: str, *args: str, kill_at: str | None = None, kill_after: float | None = None
) -> Ran:
    """Run ``python -m tasks.<stage>`` in its own process group; SIGKILL it at a hook point or after some seconds."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    for name in (KILL_BEFORE_RENAME_ENV, "MLFLOW_TRACKING_URI"):  # MLflow sets the latter in this process: params win
        env.pop(name, None)
    if kill_at is not None:
        env[KILL_BEFORE_RENAME_ENV] = kill_at
    command = [sys.executable, "-m", "tasks.env", "exec", "--", sys.executable, "-m", f"tasks.{stage}"]
    command += ["--params", str(params_file), *args]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=params_file.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=kill_after if kill_after is not None else 900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    return Ran(proc.returncode, time.perf_counter() - start, output)


def completed(params_file: Path, stage: str, *args: str) -> Ran:
    ran = run_stage(params_file, stage, *args)
    assert ran.returncode == 0, f"{stage} failed (exit {ran.returncode}):\n{ran.output[-3000:]}"
    return ran


def kill_times(clean_wall_s: float, count: int, seed: int) -> list[float]:
    """``count`` seeded moments spread over a clean run's wall time (imports included)."""
    rng = random.Random(seed)
    return [round(rng.uniform(0.3, max(0.5, clean_wall_s * 0.95)), 2) for _ in range(count)]


def visible_files(root: Path) -> list[Path]:
    """Files a reader lists: no hidden (``.``-prefixed) file or folder on the way."""
    if not root.exists():
        return []
    return sorted(
        p for p in root.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts)
    )


def assert_no_partial_files(params: Params) -> None:
    """Every visible Parquet, JSON, tar and image under the data roots opens: a reader never sees half a file."""
    for root in doctor.data_roots(params):
        for path in visible_files(root):
            try:
                if path.suffix == ".parquet":
                    pq.read_metadata(path)
                elif path.suffix == ".json":
                    json.loads(path.read_text())
                elif path.suffix == ".tar":
                    with tarfile.open(path) as tar:
                        tar.getmembers()
                elif path.suffix in (".png", ".jpg"):
                    with Image.open(path) as image:
                        image.load()
            except Exception as exc:  # any failure to open is a partial file
                raise AssertionError(f"{path}: visible to readers but not whole ({exc})") from exc


def assert_doctor_clean(params: Params) -> None:
    report = doctor.run(params)
    assert report.ok, "doctor:\n" + doctor.format_report(report)


def root_of(params: Params) -> Path:
    return params.base.paths.reports.parent  # tiny_params_dict puts every path below one root


def rows_without_root(params: Params, rows: list[dict[str, Any]], *, drop: tuple[str, ...] = ()) -> list[tuple]:
    """Rows as sorted tuples of strings, the root folder replaced (clean and killed runs live in different roots)."""
    root = str(root_of(params))
    return sorted(
        tuple(f"{k}={str(v).replace(root, '<root>')}" for k, v in row.items() if k not in drop) for row in rows
    )


def tree_digest(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of the visible files under ``root`` (names in ``skip`` left out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in visible_files(root)
        if p.name not in skip
    }


# ----------------------------------------------------------------------------------------- worlds and registries


def write_params(root: Path, **sections: dict[str, Any]) -> tuple[Params, Path]:
    data = tiny_params_dict(root, **sections)
    path = root / "params.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Params.model_validate(data), path


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow store with two constant ONNX detectors, each from its own run and tagged; v1 promoted champion."""
    root = tmp_path_factory.mktemp("registry")
    params, _ = write_params(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = mlflow_adapter.client(params)
        client.create_registered_model(params.registry.model_name)
        experiment = client.get_experiment_by_name("Default").experiment_id
        for version, rows in (("1", CHAMPION_ROWS), ("2", SHADOW_ROWS)):
            source = constant_detector(root / "sources" / f"v{version}" / "model.onnx", rows).parent
            run = client.create_run(experiment).info.run_id
            made = client.create_model_version(params.registry.model_name, source=str(source), run_id=run)
            assert str(made.version) == version
            mlflow_adapter.set_version_tags(params, version, LINEAGE | {"train_run_id": run})
        promote.promote(params, version="1", why="first champion", who="test")
    return root


def with_registry(template: Path, root: Path) -> None:
    """Copy the template's store and audit trail under ``root`` (its params name them there)."""
    for name in ("mlflow.db", "data/audit/aliases.jsonl"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template / name, root / name)


@pytest.fixture(autouse=True)
def _no_outside_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(KILL_BEFORE_RENAME_ENV, raising=False)


# ----------------------------------------------------------------------------------------- the kill-and-resume loop


@dataclass(frozen=True)
class Stage:
    """How to kill one stage: its command, the files to kill at, how to prepare a root and compare the results."""

    name: str
    args: tuple[str, ...]
    hooks: tuple[str, ...]  # file names written through atomic_open, in the order the stage writes them
    prepare: Callable[[Path, Path], tuple[Params, Path]]  # (root, registry template) -> params, params file
    result: Callable[[Params], Any]  # what must equal a clean run's (deterministic parts only)
    timed_kills: int = 1


def kill_and_resume(stage: Stage, tmp_path: Path, template: Path, *, seed: int = SEED) -> None:
    clean_params, clean_file = stage.prepare(tmp_path / "clean", template)
    clean = completed(clean_file, stage.name, *stage.args)
    expected = stage.result(clean_params)
    assert_doctor_clean(clean_params)
    plans = [("hook", name) for name in stage.hooks]
    plans += [("time", t) for t in kill_times(clean.wall_s, stage.timed_kills, seed)]
    params, params_file = stage.prepare(tmp_path / "killed", template)
    killed_at_hook = 0
    for how, where in plans:  # kills pile up on one store: each resumes from what the last kill left
        if how == "hook":
            ran = run_stage(params_file, stage.name, *stage.args, kill_at=str(where))
            killed_at_hook += ran.killed
            assert ran.killed or ran.returncode == 0, f"{stage.name} at {where}: exit {ran.returncode}\n{ran.output}"
        else:
            ran = run_stage(params_file, stage.name, *stage.args, kill_after=float(where))
        assert_no_partial_files(params)
    assert killed_at_hook == len(stage.hooks), f"{stage.name}: a hook point was never reached ({stage.hooks})"
    completed(params_file, stage.name, *stage.args)
    assert_no_partial_files(params)
    assert stage.result(params) == expected, f"{stage.name}: the resumed run's output differs from a clean run's"
    assert_doctor_clean(params)


# ----------------------------------------------------------------------------------------- the stages


def prepare_world(root: Path, template: Path) -> tuple[Params, Path]:
    return write_params(root)


def world_result(params: Params) -> dict[str, str]:
    return tree_digest(params.base.paths.world)


def prepare_predict(root: Path, template: Path) -> tuple[Params, Path]:
    params, path = write_params(root, predict={"batch_size": 3})
    world.run(params)
    with_registry(template, root)
    return params, path


def log_result(params: Params) -> list[tuple]:
    """The log's rows without what varies per run (``ts``, ``latency_ms``), sorted; duplicates would show."""
    table = prediction_log.read(params.base.paths.predictions)
    return rows_without_root(params, table.to_pylist(), drop=("ts", "latency_ms"))


def prepare_sample(root: Path, template: Path) -> tuple[Params, Path]:
    params, path = prepare_predict(root, template)
    completed(path, "predict")
    return params, path


def sample_result(params: Params) -> list[tuple]:
    return rows_without_root(params, pq.read_table(params.base.paths.samples / "c1" / "manifest.parquet").to_pylist())


def prepare_merge(root: Path, template: Path) -> tuple[Params, Path]:
    params, path = write_params(root, merge={"holdout_fraction": 0.25, "shard_size": 10})
    world.run(params)
    paths = params.base.paths
    for batch in sorted(p.name for p in paths.production.iterdir() if p.is_dir()):
        for kind, source in (("images", paths.production), ("labels", paths.oracle)):
            shutil.copytree(source / batch / kind, paths.labels / f"c-{batch}" / kind, dirs_exist_ok=True)
    return params, path


def merge_result(params: Params) -> tuple[dict[str, str], list[tuple]]:
    """Shards and holdouts byte for byte; the manifest row by row (its holdout paths name the root)."""
    paths = params.base.paths
    files = tree_digest(paths.merged, skip=(MANIFEST,)) | {
        f"holdouts/{k}": v for k, v in tree_digest(paths.holdouts).items()
    }
    rows = [vars(row) for row in read_manifest(paths.merged / MANIFEST)]
    return files, rows_without_root(params, rows)


def prepare_validate(root: Path, template: Path) -> tuple[Params, Path]:
    params, path = prepare_merge(root, template)
    labels = params.base.paths.labels / "c-2026-11-02" / "labels"
    bad = sorted(labels.glob("*.txt"))[0]
    bad.write_text("9 0.5 0.5 0.2 0.2\n")  # class 9 of 6: this image goes to quarantine
    return params, path


def validate_result(params: Params) -> dict[str, str]:
    paths = params.base.paths
    labels = {f"labels/{k}": v for k, v in tree_digest(paths.labels / "c-2026-11-02").items()}
    quarantined = tree_digest(paths.quarantine / "c-2026-11-02", skip=("quarantine.json",))
    return labels | {f"quarantine/{k}": v for k, v in quarantined.items()}


def prepare_promote(root: Path, template: Path) -> tuple[Params, Path]:
    params, path = write_params(root)
    with_registry(template, root)
    return params, path


def registry_state(params: Params) -> tuple[dict[str, str | None], list[tuple]]:
    aliases = {a: getattr(mlflow_adapter.find_alias(params, a), "version", None) for a in (CHAMPION, PREVIOUS)}
    trail = [(r.action, r.alias, r.from_version, r.to_version) for r in promote.read_audit(params)]
    return aliases, trail


def monitor_result(params: Params) -> tuple[Any, ...]:
    """The judged windows and flagged batches; one monitor run in MLflow per champion version, its series once."""
    report = load_report(params.base.paths.reports, "monitor")
    client = mlflow_adapter.client(params)
    experiment = client.get_experiment_by_name(params.monitor.experiment)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    history = [len(client.get_metric_history(r.info.run_id, "images")) for r in runs]
    windows = [(w.date, w.images, w.drifted) for w in report.windows]
    return report.model_version, windows, report.flagged_batches, len(runs), history


STAGES = [
    Stage("world", (), ("manifest.json", "world.json"), prepare_world, world_result),
    Stage("predict", (), ("predict.json",), prepare_predict, log_result),
    Stage("sample", ("--cycle", "c1"), ("manifest.parquet", "sample.json"), prepare_sample, sample_result),
    Stage("merge", (), ("manifest.parquet", "merge.json"), prepare_merge, merge_result),
    Stage(
        "validate",
        ("--cycle", "c-2026-11-02"),
        ("quarantine.json", "validate.json"),
        prepare_validate,
        validate_result,
    ),
    Stage(
        "promote",
        ("--version", "2", "--decision", "promote"),
        ("promote.json",),
        prepare_promote,
        registry_state,
    ),
]
MONITOR = Stage("monitor", (), ("monitor.json",), prepare_sample, monitor_result)


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_a_killed_stage_resumes_to_a_clean_runs_result(stage, tmp_path, registry_template):
    kill_and_resume(stage, tmp_path, registry_template)


KILLED_AFTER = {
    "nothing moved yet": {},
    "previous moved": {PREVIOUS: "1"},
    "previous and champion moved": {PREVIOUS: "1", CHAMPION: "2"},
}


def planned_promotion(params: Params) -> list[AuditRecord]:
    """The moves ``promote --version 2`` plans from the template (champion v1, no previous), as it writes them ahead."""
    model, ts = params.registry.model_name, "2026-12-01T00:00:00.000+00:00"
    return [
        AuditRecord(ts, "killed@host", "promote", model, PREVIOUS, None, "1", "replaced by v2"),
        AuditRecord(ts, "killed@host", "promote", model, CHAMPION, "1", "2", "cli"),
    ]


@pytest.mark.parametrize("moved", list(KILLED_AFTER.values()), ids=list(KILLED_AFTER))
def test_promote_killed_between_its_alias_moves_and_its_audit_record_resumes(moved, tmp_path, registry_template):
    """The one window a timed kill rarely hits: moves written ahead, aliases (partly) moved, no audit line yet."""
    clean, clean_file = prepare_promote(tmp_path / "clean", registry_template)
    completed(clean_file, "promote", "--version", "2", "--decision", "promote")
    params, params_file = prepare_promote(tmp_path / "killed", registry_template)
    promote.write_ahead(params, planned_promotion(params))
    for alias, version in moved.items():  # what promote's own moves left when the process died
        mlflow_adapter.set_alias(params, alias, version)
    completed(params_file, "promote", "--version", "2", "--decision", "promote")
    assert registry_state(params) == registry_state(clean)
    recorded = [r.alias for r in promote.read_audit(params) if r.why.endswith("recorded by its re-run)")]
    assert recorded == list(moved), "the re-run records exactly the moves the killed run made"
    assert not promote.pending_path(params).exists()
    assert_doctor_clean(params)


def test_an_alias_another_clone_moved_is_not_recorded_as_this_checkouts_move(tmp_path, registry_template):
    """Clones sharing one MLflow server keep their own trails: a move this checkout did not write ahead is not its."""
    params, params_file = prepare_promote(tmp_path / "clone", registry_template)
    mlflow_adapter.set_alias(params, CHAMPION, "2")  # another clone promoted v2 (and recorded it in its own trail)
    completed(params_file, "promote", "--version", "2", "--decision", "promote")
    assert [r.why for r in promote.read_audit(params) if "interrupted run" in r.why] == []


# ----------------------------------------------------------------------------------------- registry (MLflow)


def prepare_registry(root: Path, template: Path) -> tuple[Params, Path]:
    """A trained-and-exported candidate as train and export leave it: reports, checkpoint, ONNX, its MLflow run."""
    params, path = write_params(root)
    world.run(params)
    with_registry(template, root)
    models, reports = params.base.paths.models, params.base.paths.reports
    weights = models / "train" / "best.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"checkpoint")
    constant_detector(models / "export" / "model.onnx", CHAMPION_ROWS)
    client = mlflow_adapter.client(params)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id
    train = TrainResult(str(weights), "yolo", "AGPL-3.0", "scratch:yolo26n.yaml", 1, {}, run, 1.0)
    write_report(reports, "train", train, params)
    return params, path


def registry_result(params: Params) -> list[tuple[str, list[str]]]:
    """Versions (number, sorted tag names): the candidate is version 3, once, with its lineage."""
    versions = sorted(mlflow_adapter.all_versions(params), key=lambda v: int(v.version))
    return [(v.version, sorted(k for k in v.tags if k not in ("git_commit",))) for v in versions]


REGISTRY = Stage("registry", (), ("registry.json",), prepare_registry, registry_result)


@pytest.mark.slow  # ~30 s: MLflow logs the pyfunc model on every run
def test_a_killed_registration_resumes_to_one_version(tmp_path, registry_template):
    kill_and_resume(REGISTRY, tmp_path, registry_template)


@pytest.mark.slow  # ~40 s: the baseline is computed on the first run that gets far enough
def test_a_killed_monitor_resumes_to_one_run_and_one_series(tmp_path, registry_template):
    kill_and_resume(MONITOR, tmp_path, registry_template)


# ----------------------------------------------------------------------------------------- label (Label Studio)


@pytest.fixture
def label_stage(server: Server, labelstudio_env: Server) -> Stage:  # noqa: F811 (fixtures imported above)
    def prepare(root: Path, template: Path) -> tuple[Params, Path]:
        where = server.root / "killed-stages" / root.name
        params = build_cycle(make_params(where, title=f"killed-stages-{root.name}"))
        path = where / "params.yaml"
        path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        return params, path

    def result(params: Params) -> dict[str, Any]:
        backend = labelstudio.LabelStudioBackend(
            params.label, params.base.classes, record=labelstudio.projects_path(params), create=False
        )
        tasks = backend.list_tasks(int(backend.project_id or 0), fields="task_only")
        rows = read_ledger(ledger_path(params)).values()
        return {
            "projects": len(backend.list_projects(params.label.project_title)),
            "tasks": sorted(str(t.data["image_sha256"]) for t in tasks),
            "ledger": sorted((r["image_sha256"], r["status"], r["cycle"]) for r in rows),
        }

    hooks = ("projects.json", "ledger.parquet", "label.json")
    return Stage("label", ("--cycle", CYCLE), hooks, prepare, result)


def test_a_killed_label_stage_imports_nothing_twice(label_stage, tmp_path, registry_template):
    kill_and_resume(label_stage, tmp_path, registry_template)


# ----------------------------------------------------------------------------------------- slow: more seeds, training


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("stage", [*STAGES, REGISTRY, MONITOR], ids=[s.name for s in [*STAGES, REGISTRY, MONITOR]])
def test_many_seeded_kills(stage, seed, tmp_path, registry_template):
    """Four kills at seeded random moments per run, hooks left out: wherever they land, the re-run resumes."""
    timed = Stage(stage.name, stage.args, (), stage.prepare, stage.result, timed_kills=4)
    kill_and_resume(timed, tmp_path, registry_template, seed=seed)


def prepare_train(root: Path, template: Path) -> tuple[Params, Path]:
    params, path = write_params(root, export={"targets": ["onnx"]})
    world.run(params)
    return params, path


def checkpoint_result(params: Params) -> tuple[bool, bool]:
    """Training is not bit-reproducible: the report must name a whole checkpoint (its recorded hash) and a run."""
    report = load_report(params.base.paths.reports, "train")
    weights = Path(report.weights)
    return weights.is_file() and file_sha256(weights) == report.checkpoint_sha256, bool(report.mlflow_run_id)


def prepare_export(root: Path, template: Path) -> tuple[Params, Path]:
    params, path = prepare_train(root, template)
    completed(path, "train")
    return params, path


def export_result(params: Params) -> tuple[str | None, bool]:
    report = load_report(params.base.paths.reports, "export")
    selected = report.selected or {}
    return selected.get("target"), bool(selected) and Path(selected["path"]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    [
        Stage("train", (), ("train.json",), prepare_train, checkpoint_result, timed_kills=2),
        Stage("export", (), ("export.json",), prepare_export, export_result, timed_kills=2),
    ],
    ids=["train", "export"],
)
def test_killed_training_and_export_resume(stage, tmp_path, registry_template):
    kill_and_resume(stage, tmp_path, registry_template)
