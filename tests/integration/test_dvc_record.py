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
    monkeypatch.chdir(root)
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


def test_outside_a_dvc_project_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params(PROJECT_ROOT / "params.yaml")
    recorded = dvc.record(params, ["world"])
    assert recorded.stages == () and "not a DVC project" in (recorded.reason or "")
    assert not (tmp_path / "params.effective.yaml").exists()
