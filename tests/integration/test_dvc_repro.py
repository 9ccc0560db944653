"""`dvc repro` runs the same stage modules on a fresh repo; a second repro is a no-op and status is clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict

# ~1.5 min: dvc repro end to end twice; CI runs it in its slow part (make test-slow-reliability)
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def sh(*cmd: str, cwd: Path) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvcrepo")
    shutil.copytree(PROJECT_ROOT / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "visionloop.env"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    data = tiny_params_dict(Path("."))  # relative paths inside the repo, like the project's own params
    data["base"]["paths"] = {k: str(Path(v)) for k, v in data["base"]["paths"].items()}
    data["registry"].update(tracking_uri="sqlite:///mlflow.db", artifact_root="mlartifacts")
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n__pycache__/\n")
    (root / "data" / "labels").mkdir(parents=True)  # the merge stage's dep; empty before the first labeled cycle
    (root / "models" / "parent").mkdir(parents=True)  # the train stage's dep; empty before the first cycle
    sh("git", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=root)
    return root


def test_repro_then_up_to_date(repo):
    out = sh(sys.executable, "-m", "dvc", "repro", cwd=repo)
    for stage in ("params", "world", "merge", "train", "compress", "evaluate", "export"):
        assert f"Running stage '{stage}'" in out
    assert (repo / "models" / "export" / "model.onnx").is_file()
    assert (repo / "models" / "export" / "openvino_int8" / "model.bin").is_file(), "every target is an output"
    assert (repo / "reports" / "evaluate.json").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"params", "world", "merge", "train", "compress", "evaluate", "export"}
    assert {out["path"] for out in lock["stages"]["export"]["outs"]} == {"models/export", "reports/export.json"}

    again = sh(sys.executable, "-m", "dvc", "repro", cwd=repo)
    assert "Running stage" not in again
    assert "up to date" in again
    status = sh(sys.executable, "-m", "dvc", "status", cwd=repo)
    assert "up to date" in status


def test_changing_a_stage_param_reruns_only_downstream(repo):
    data = yaml.safe_load((repo / "params.yaml").read_text())
    data["export"]["max_map_drop"] = 0.9
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    out = sh(sys.executable, "-m", "dvc", "repro", cwd=repo)
    assert "Running stage 'export'" in out
    assert "Running stage 'train'" not in out and "Running stage 'world'" not in out
