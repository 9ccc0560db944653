"""Privacy: ``make forget IMAGE=...`` takes one image out of every store, and the retention policy (default off).

One image of a tiny world reaches the stores it can reach without a model: the prediction log, a sample manifest,
the label ledger and label folder, quarantine (a re-labeled copy in a second cycle), the merged shards and
manifest (real merge stage), the raw production batch and oracle, the DVC cache and a local DVC remote (a real
git + DVC repo, recorded and pushed by the real adapter), and the MLflow store (a SQLite store with the monitor
baseline parquet, the image file and a table of ids as artifacts). After the forget, every file of every store is
grepped for the image's bytes, its hash and its id (Parquet files decoded), and a second image is untouched.
Label Studio's side (deleting the task) needs the real server: ``tests/integration/test_forget_labelstudio.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from tasks import forget, merge
from tasks.adapters import dvc
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.ledger import QUEUED, LedgerRow, ledger_path, write_ledger
from tasks.contracts.quarantine import Reason, quarantine
from tasks.contracts.yolo_labels import list_images
from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict
from tests.integration.conftest import CYCLE, build_cycle

SECOND_CYCLE = "cycle-002"
NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


def sh(*cmd: str, cwd: Path) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def ledger_row(image: Path, batch: str, cycle: str) -> LedgerRow:
    return LedgerRow(
        image_sha256=prediction_log.sha256_file(image), image_id=image.stem, image_uri=image.resolve().as_uri(),
        batch=batch, cycle=cycle, status=QUEUED, backend="files", project_id=None, task_id=None,
        annotation_id=None, annotation_updated_at=None, task_updated_at=None, n_boxes=None, phash=None,
        queued_at=NOW, updated_at=NOW,
    )  # fmt: skip


def label_copy(params: Params, image: Path, batch: str, cycle: str) -> None:
    folder = params.base.paths.labels / cycle
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(image, folder / "images" / image.name)
    shutil.copy2(params.base.paths.oracle / batch / "labels" / f"{image.stem}.txt", folder / "labels")


def log_to_mlflow(params: Params, target: Path, other: Path, root: Path) -> None:
    mlflow.set_tracking_uri(params.registry.tracking_uri)
    experiment = mlflow.create_experiment("forget-it", artifact_location=(root / "mlartifacts").resolve().as_uri())
    rows = prediction_log.read(params.base.paths.predictions)
    ids = pc.is_in(rows["image_id"], value_set=prediction_log.pa.array([target.stem, other.stem]))
    baseline = root / "baseline.parquet"
    pq.write_table(rows.filter(ids), baseline)
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_artifact(str(baseline), artifact_path="monitor")
        mlflow.log_artifact(str(target), artifact_path="samples")
        mlflow.log_artifact(str(other), artifact_path="samples")
        mlflow.log_table({"image_id": [target.stem, other.stem], "score": [0.1, 0.2]}, artifact_file="tables/ids.json")
    baseline.unlink()


@pytest.fixture
def world_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Params, Path]:
    """A git + DVC repo holding a tiny world whose first production image reached every store but Label Studio."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(PROJECT_ROOT / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "visionloop.env"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    data = tiny_params_dict(Path("."))
    data["base"]["paths"] = {k: str(Path(v)) for k, v in data["base"]["paths"].items()}
    data["merge"]["holdout_fraction"] = 0.25
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (root / ".gitignore").write_text("__pycache__/\n/params.effective.yaml\n/mlflow.db\n/mlartifacts\n")
    sh("git", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init", cwd=root)
    monkeypatch.chdir(root)
    monkeypatch.setenv(dvc.REMOTE_ENV, str(tmp_path / "remote"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = build_cycle(Params.model_validate(data))  # world, prediction log, sample manifest of CYCLE
    batch = sorted(p.name for p in params.base.paths.production.iterdir() if p.is_dir())[0]
    images = list_images(params.base.paths.production / batch / "images")
    target = images[0]
    for image in images:
        label_copy(params, image, batch, CYCLE)
    label_copy(params, target, batch, SECOND_CYCLE)  # labeled again in a later cycle, and quarantined there
    rows = {r["image_sha256"]: r for r in (ledger_row(i, batch, CYCLE) for i in images)}
    write_ledger(ledger_path(params), rows)
    reason = Reason("labels", "class_in_set", "expect_column_values_to_be_in_set", "class_id", 1, "bad class")
    quarantine(
        {target.name: [reason]},
        cycle_dir=params.base.paths.labels / SECOND_CYCLE,
        quarantine_dir=params.base.paths.quarantine / SECOND_CYCLE,
        cycle=SECOND_CYCLE,
        run_at=NOW.isoformat(),
    )
    merge.run(params, cycle=CYCLE)
    recorded = dvc.record(params, ["world", "merge"])
    assert set(recorded.stages) == {"params", "world", "merge"}, recorded
    assert dvc.push(root).ok
    log_to_mlflow(params, target, images[1], root)
    return params, root


def traces(folder: Path, needles: list[bytes]) -> list[str]:
    """Files under ``folder`` holding one of ``needles`` in their bytes or, for Parquet, in their decoded values."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts):
        blob = path.read_bytes()
        text = blob
        if blob[:4] == b"PAR1":
            text = blob + str(pq.read_table(path).to_pylist()).encode()
        if any(n in text for n in needles):
            found.append(str(path.relative_to(folder)))
    return found


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# long: one scenario, every store checked before and after
def test_a_forgotten_image_is_nowhere_and_every_other_image_is_untouched(world_repo, tmp_path):
    params, root = world_repo
    batch = sorted(p.name for p in params.base.paths.production.iterdir() if p.is_dir())[0]
    images = list_images(params.base.paths.production / batch / "images")
    target, other = images[0], images[1]
    pixels, sha, image_id = target.read_bytes(), prediction_log.sha256_file(target), target.stem
    needles = [pixels, sha.encode(), image_id.encode()]
    stores = [root, tmp_path / "remote"]
    before = {str(s): traces(s, needles) for s in stores}
    assert any(p.startswith("data/predictions") for p in before[str(root)]), before
    for where in ("data/samples", "data/labels", "data/quarantine", "data/merged", "mlartifacts", ".dvc/cache"):
        assert any(p.startswith(where) for p in before[str(root)]), f"the image never reached {where}"
    assert before[str(tmp_path / "remote")], "the image never reached the DVC remote"
    data_before = snapshot(root / "data")
    other_bytes, other_rows = other.read_bytes(), _rows_of(params, other.stem)

    report = forget.run(params, image=image_id)

    assert report.mode == "forget" and report.image_sha256 == sha and not report.left, report
    own = {"reports/forget.json", str(params.forget.audit_log)}  # they hold the hash by design, never pixels or id
    for store in stores:
        left = [p for p in traces(store, needles) if p not in own]
        assert not left, f"{store}: the image is still in {left}"
    for path in own:
        assert not traces(root / Path(path).parent, [pixels, image_id.encode()]), f"{path} holds pixels or the id"
    assert {"merged", "files", "dvc", "mlflow"} <= set(report.removed), report.removed

    # never discard: the other image keeps its bytes, log rows and merged row; untouched files stay byte-identical
    assert other.read_bytes() == other_bytes and _rows_of(params, other.stem) == other_rows
    manifest = pq.read_table(params.base.paths.merged / "manifest.parquet").to_pylist()
    assert other.stem in {r["image_id"] for r in manifest} and image_id not in {r["image_id"] for r in manifest}
    data_after = snapshot(root / "data")
    changed = {p for p in data_before if data_after.get(p) != data_before[p]}
    touched = {p for p in changed if "manifest.parquet" in p or "/shards/" in p or "ledger" in p or "date=" in p}
    touched |= {p for p in changed if image_id in p or p.endswith(("sources.csv", "quarantine.json"))}
    assert changed == touched, f"files changed that never held the image: {sorted(changed - touched)}"
    assert "up to date" in sh(sys.executable, "-m", "dvc", "status", "world", "merge", cwd=root)  # recommitted

    again = forget.run(params, image=image_id)  # idempotent: the trail knows it, every store is checked again
    assert again.mode == "already_forgotten" and not again.left
    with pytest.raises(forget.ImageNotFoundError, match="no store holds it"):
        forget.run(params, image="2099-01-01_never")


def _rows_of(params: Params, image_id: str) -> list[dict[str, object]]:
    table = prediction_log.read(params.base.paths.predictions)
    return table.filter(pc.equal(table["image_id"], image_id)).drop_columns(["ts"]).to_pylist()


def test_retention_drops_old_log_partitions_and_production_batches_and_is_off_by_default(tmp_path):
    params = build_cycle(Params.model_validate(tiny_params_dict(tmp_path)))
    paths = params.base.paths
    batches = sorted(p.name for p in paths.production.iterdir() if p.is_dir())
    newest = dt.date.fromisoformat(batches[-1][:10])
    everything = snapshot(tmp_path / "data")

    off = forget.run(params, retention=True, today=newest + dt.timedelta(days=400))
    assert off.mode == "retention" and off.removed == {} and snapshot(tmp_path / "data") == everything

    policy = {"prediction_log_days": 1, "production_image_days": 1}
    data = params.model_dump()
    data["forget"]["retention"] = policy
    on = Params.model_validate(data)
    report = forget.run(on, retention=True, today=newest + dt.timedelta(days=1))
    dates = sorted(p.name for p in paths.predictions.iterdir() if p.is_dir())
    assert dates == [f"date={newest}"], dates
    assert sorted(p.name for p in paths.production.iterdir() if p.is_dir()) == [batches[-1]]
    assert len(report.removed["prediction_log"]) == len(batches) - 1 == len(report.removed["production"])
    assert forget.privacy_audit.read_entries(params.forget.audit_log)[-1]["mode"] == "retention"
