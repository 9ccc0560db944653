"""Runs made by the flows are recorded in DVC as ``dvc repro`` would record them (tasks/adapters/dvc.py).

A real git + DVC repo in a temp folder with this project's dvc.yaml and stage code: the world stage function runs
the way a flow runs it (with a flow override that params.yaml does not have), :func:`record` commits it, and then
``dvc status`` is clean, ``dvc repro world`` runs nothing, and ``dvc.lock`` names the *effective* value.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks import world
from tasks.adapters import dvc
from tasks.config import load_params
from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


def sh(*cmd: str, cwd: Path) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(PROJECT_ROOT / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "visionloop.env"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    data = tiny_params_dict(Path("."))
    data["base"]["paths"] = {k: str(Path(v)) for k, v in data["base"]["paths"].items()}
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (root / ".gitignore").write_text("__pycache__/\n/params.effective.yaml\n")
    sh("git", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init", cwd=root)
    monkeypatch.chdir(root)
    monkeypatch.setenv(dvc.REMOTE_ENV, str(tmp_path / "remote"))
    return root


def test_a_flow_run_is_recorded_with_its_effective_params(repo):
    params = load_params("params.yaml", overrides={"world": {"golden_images": 5}})  # a flow override
    world.run(params)
    recorded = dvc.record(params, ["world", "not-a-dvc-stage"])
    assert recorded.stages == ("params", "world") and not recorded.skipped and recorded.reason is None

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["world"]["params"]["params.effective.yaml"]["world"]["golden_images"] == 5  # what ran, not 8
    assert "up to date" in sh(sys.executable, "-m", "dvc", "status", "params", "world", cwd=repo)
    again = sh(sys.executable, "-m", "dvc", "repro", "world", cwd=repo)
    assert "Running stage" not in again
    cached = list((repo / ".dvc" / "cache").rglob("*"))
    assert any(p.is_file() for p in cached), "the world's outputs are in the DVC cache"

    # the next plain `dvc repro` after a params.yaml change re-runs from params.yaml, as DVC would
    data = yaml.safe_load((repo / "params.yaml").read_text())
    data["world"]["golden_images"] = 6
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert "params" in sh(sys.executable, "-m", "dvc", "status", "params", cwd=repo)


def test_a_stage_that_cannot_be_committed_is_skipped_with_its_reason(repo):
    params = load_params("params.yaml")
    recorded = dvc.record(params, ["world"])  # the world stage never ran: its outputs are missing
    assert recorded.stages == ("params",)
    assert recorded.skipped == {"world": "output 'data/world' does not exist"}


def test_a_run_whose_paths_this_project_does_not_track_is_not_recorded(repo, tmp_path):
    elsewhere = tiny_params_dict(tmp_path / "elsewhere")  # a run writing outside the project (e.g. a test)
    params = load_params("params.yaml", overrides={"base": {"paths": elsewhere["base"]["paths"]}})
    recorded = dvc.record(params, ["world"])
    assert recorded.stages == () and "are not the ones" in (recorded.reason or "")
    assert "world" in (recorded.reason or "")
    assert not (repo / "dvc.lock").exists() and not (repo / "params.effective.yaml").exists()


def test_outside_a_dvc_project_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params(PROJECT_ROOT / "params.yaml")
    recorded = dvc.record(params, ["world"])
    assert recorded.stages == () and "not a DVC project" in (recorded.reason or "")
    assert not (tmp_path / "params.effective.yaml").exists()


def test_a_pin_commits_the_lock_on_its_own_ref_and_the_push_fills_the_remote(repo, tmp_path):
    params = load_params("params.yaml")
    world.run(params)
    dvc.record(params, ["world"])
    head, status = sh("git", "rev-parse", "HEAD", cwd=repo), sh("git", "status", "--porcelain", cwd=repo)

    pinned = dvc.pin(repo, "detector-v1", "visionloop: detector v1")
    assert pinned.ref == "refs/visionloop/pins/detector-v1" and pinned.dirty == ()
    assert sh("git", "show", f"{pinned.commit}:dvc.lock", cwd=repo).strip() == (repo / "dvc.lock").read_text().strip()
    assert sh("git", "rev-parse", f"{pinned.commit}^", cwd=repo) == head  # on top of the code it ran
    assert sh("git", "rev-parse", "HEAD", cwd=repo) == head, "the user's branch did not move"
    assert sh("git", "status", "--porcelain", cwd=repo) == status, "nor their index or working tree"
    assert "pipeline@visionloop.invalid" in sh("git", "log", "-1", "--format=%ae", pinned.commit, cwd=repo)

    pushed = dvc.push(repo)
    assert pushed.ok and pushed.objects > 0 and pushed.remote == dvc.REMOTE_NAME
    world_md5 = dvc.lock_outs(repo, ["world"])["data/world"]
    assert world_md5.endswith(".dir")
    stored = {p.parent.name + p.name for p in (tmp_path / "remote").rglob("*") if p.is_file()}
    assert world_md5 in stored, "the remote holds the world folder's listing (and its files)"


def test_a_pin_names_uncommitted_changes(repo):
    params = load_params("params.yaml")
    dvc.record(params, [])
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "# edited\n")
    pinned = dvc.pin(repo, "detector-v2", "dirty")
    assert pinned.dirty == ("params.yaml",)
    assert "dirty (tracked files that differed from HEAD): params.yaml" in sh(
        "git", "log", "-1", "--format=%B", pinned.commit, cwd=repo
    )


def test_an_unreachable_remote_fails_the_push_and_says_why(repo, tmp_path, monkeypatch):
    params = load_params("params.yaml")
    world.run(params)
    dvc.record(params, ["world"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(dvc.REMOTE_ENV, str(blocker / "remote"))
    pushed = dvc.push(repo)
    assert not pushed.ok and pushed.error


def test_no_pin_outside_a_git_checkout(tmp_path):
    with pytest.raises(dvc.PinError, match="git rev-parse"):
        dvc.pin(tmp_path, "detector-v1", "no git here")
    with pytest.raises(dvc.PinError, match="letters, digits"):
        dvc.pin(tmp_path, "bad name/../x", "no")


def test_a_failed_push_leaves_the_version_not_restorable_until_the_next_pin_pushes_it(repo, tmp_path, monkeypatch):
    from tasks import registry
    from tasks.adapters import mlflow as mlflow_adapter

    params = load_params("params.yaml", overrides={"registry": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    world.run(params)
    dvc.record(params, ["world"])
    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    versions = []
    for n in (1, 2):
        with mlflow_adapter.mlflow_run(params, run_name=f"train-{n}") as run_id:
            pass
        versions.append(client.create_model_version(params.registry.model_name, "file:///x", run_id).version)

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(dvc.REMOTE_ENV, str(blocker / "remote"))
    first = registry.pin(params, versions[0], name="detector-v1")
    assert first[registry.RESTORABLE] == "false" and "retried by the next pin" in first["dvc.why"]
    assert registry.pinned_md5s(first)["data/world"].endswith(".dir") and first["dvc.commit"]
    assert not [k for k in first if k.startswith("dvc.md5.")], "one dvc.md5 tag, not one per output"

    monkeypatch.setenv(dvc.REMOTE_ENV, str(tmp_path / "remote"))  # the remote is back
    second = registry.pin(params, versions[1], name="detector-v2")
    assert second[registry.RESTORABLE] == "true"
    assert mlflow_adapter.get_version(params, versions[0]).tags[registry.RESTORABLE] == "true"
    assert mlflow_adapter.versions_tagged(params, registry.RESTORABLE, "false") == []
    logged = client.list_artifacts(mlflow_adapter.get_version(params, versions[1]).run_id, "dvc")
    assert {Path(a.path).name for a in logged} == {"dvc.lock", "params.effective.yaml"}


def registered(params, n: int = 1) -> list[str]:
    """``n`` model versions of empty training runs (what restore needs is the pin, not a real model)."""
    from tasks.adapters import mlflow as mlflow_adapter

    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    versions = []
    for i in range(n):
        with mlflow_adapter.mlflow_run(params, run_name=f"train-{i}") as run_id:
            pass
        versions.append(client.create_model_version(params.registry.model_name, "file:///x", run_id).version)
    return versions


def test_a_second_clone_restores_a_version_byte_for_byte(repo, tmp_path, monkeypatch):
    from tasks import registry

    store = {"registry": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}}
    params = load_params("params.yaml", overrides=store | {"world": {"golden_images": 5}})
    world.run(params)
    dvc.record(params, ["world"])
    (version,) = registered(params)
    assert registry.pin(params, version, name="detector-v1")[registry.RESTORABLE] == "true"
    original = {p.relative_to(repo): p.read_bytes() for p in (repo / "data" / "world").rglob("*") if p.is_file()}

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    monkeypatch.chdir(clone)
    assert not (clone / "data" / "world").exists()
    restored = registry.restore(load_params("params.yaml", overrides=store), version, root=clone)
    assert restored.outputs["data/world"] == dvc.lock_outs(repo)["data/world"]
    again = {p.relative_to(clone): p.read_bytes() for p in (clone / "data" / "world").rglob("*") if p.is_file()}
    assert again == original
    assert load_params(clone / "params.effective.yaml").world.golden_images == 5  # the params that made them

    assert dvc.changed_outputs(clone) == []
    assert "up to date" in sh(sys.executable, "-m", "dvc", "status", "params", "world", cwd=clone), "reports too"
    next(iter((clone / "data" / "world").rglob("*.png"))).write_bytes(b"tampered")
    assert dvc.changed_outputs(clone) == ["world: data/world (modified)"], "the check sees a changed byte"


def test_restore_fails_naming_what_is_missing(repo, tmp_path, monkeypatch):
    from tasks import registry

    store = {"registry": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}}
    params = load_params("params.yaml", overrides=store)
    world.run(params)
    dvc.record(params, ["world"])
    pinned, never = registered(params, 2)
    registry.pin(params, pinned, name="detector-v1")
    with pytest.raises(registry.RestoreError, match="version 2 is not restorable: it was never pinned"):
        registry.restore(params, never)

    for stored in (tmp_path / "remote").rglob("*"):  # the remote loses what the version names
        if stored.is_file():
            stored.unlink()
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    monkeypatch.chdir(clone)
    md5 = dvc.lock_outs(repo)["data/world"]
    with pytest.raises(registry.RestoreError, match=rf"the remote lacks data/world \(md5 {md5}\)"):
        registry.restore(params, pinned, root=clone)


def test_gc_keeps_what_registered_versions_and_the_workspace_use_and_nothing_else(repo, tmp_path, monkeypatch):
    from tasks import registry
    from tasks.adapters import mlflow as mlflow_adapter

    store = {"registry": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}}

    def run_world(golden: int) -> str:
        params = load_params("params.yaml", overrides=store | {"world": {"golden_images": golden}})
        shutil.rmtree(repo / "data" / "world", ignore_errors=True)
        world.run(params)
        dvc.record(params, ["world"])
        return dvc.lock_outs(repo)["data/world"]

    params = load_params("params.yaml", overrides=store)
    v1, v2 = registered(params, 2)
    kept_md5 = run_world(5)
    registry.pin(params, v1, name="detector-v1")
    dropped_md5 = run_world(6)
    registry.pin(params, v2, name="detector-v2")
    workspace_md5 = run_world(7)  # a run not registered (yet): the workspace keeps it
    mlflow_adapter.client(params).delete_model_version(params.registry.model_name, v2)  # v2 is gone

    def listings(where: Path) -> set[str]:
        return {p.parent.name + p.name for p in where.rglob("*.dir")}

    remote, cache = tmp_path / "remote", repo / ".dvc" / "cache"
    assert {kept_md5, dropped_md5} <= listings(remote) and {kept_md5, dropped_md5, workspace_md5} <= listings(cache)
    dry = registry.collect_garbage(params, dry=True)
    assert dry.removed_local > 0 and dropped_md5 in listings(remote), "a dry run removes nothing"

    collected = registry.collect_garbage(params)
    assert collected.removed_local > 0 and collected.removed_remote > 0
    assert kept_md5 in listings(remote) and dropped_md5 not in listings(remote)
    assert {kept_md5, workspace_md5} <= listings(cache) and dropped_md5 not in listings(cache)
    assert set(dvc.pin_refs(repo)) == {"refs/visionloop/pins/detector-v1"}, "the dropped version's pin went too"


PUSH = "from pathlib import Path; from tasks.adapters import dvc; r = dvc.push(Path('.')); print(r.ok, r.error)"


def test_a_push_waits_while_another_process_holds_dvcs_lock(repo):
    from dvc.repo import Repo

    params = load_params("params.yaml")
    world.run(params)
    dvc.record(params, ["world"])
    env = os.environ | {"PYTHONPATH": str(repo)}
    with Repo(str(repo)) as held, held.lock:  # another cycle's dvc operation, holding the lock for 5 s
        child = subprocess.Popen([sys.executable, "-c", PUSH], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(5)
        assert child.poll() is None, "the push waits for the lock instead of failing"
    out, _ = child.communicate(timeout=120)
    assert out.strip().splitlines()[-1] == "True None"
