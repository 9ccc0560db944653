"""Shared fixtures: offline settings for every test, a tiny world's params for integration tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.config import Params
from tasks.env import PROJECT_ROOT, apply_env

apply_env()  # before any test imports Ultralytics, MLflow or Prefect


def tiny_params_dict(root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """params.yaml content for a tiny, fast world under ``root`` (64 px images, 1 epoch)."""
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    paths = {key: str(root / value) for key, value in data["base"]["paths"].items()}
    data["base"].update(imgsz=64, paths=paths)
    data["world"].update(image_size=[64, 64], train_images=24, val_images=8, golden_images=8)
    data["world"]["production"].update(batches=2, images_per_batch=6)
    data["train"].update(epochs=1, batch=8)
    data["registry"].update(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "mlartifacts"))
    data["promote"].update(audit_log=str(root / "data" / "audit" / "aliases.jsonl"))
    data["export"].update(max_map_drop=1.0)  # a 1-epoch model's mAP is noise; the gate is tested on its own
    for name, values in sections.items():
        data[name].update(values)
    predict = data["predict"]  # a 1-epoch model logs at a tiny predict.conf: the evidence band below it is off
    if predict["evidence_conf"] is not None and predict["conf"] <= predict["evidence_conf"]:
        predict["evidence_conf"] = None
    return data


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(tmp_path), sort_keys=False))
    return path


@pytest.fixture
def tiny_params(tmp_path: Path) -> Params:
    return Params.model_validate(tiny_params_dict(tmp_path))


def _checkout_state() -> tuple[str, tuple[bool, ...]]:
    import subprocess

    refs = subprocess.run(
        ["git", "for-each-ref", "refs/visionloop"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    ).stdout
    files = ("dvc.lock", "params.effective.yaml", ".dvc/config.local")
    return refs, tuple((PROJECT_ROOT / name).exists() for name in files)


@pytest.fixture(scope="session", autouse=True)
def the_checkout_is_left_alone():
    """No test records, pins or pushes in this checkout: flows under test run on temp paths, never on the project's."""
    before = _checkout_state()
    yield
    assert _checkout_state() == before, "a test wrote dvc.lock, params.effective.yaml, a DVC remote or a pin here"


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_MLFLOW_ENV_AT_START = {name: os.environ.get(name) for name in _MLFLOW_ENV}


@pytest.fixture(autouse=True)
def each_test_starts_on_its_own_mlflow_store():
    """``mlflow.set_tracking_uri`` writes ``MLFLOW_TRACKING_URI`` into the process environment, and the adapter reads
    the user's value once (cached): without this, a test that cleared that cache could pick up the store an earlier
    test left in the environment and register its versions there. After every test the variables are put back as
    the session found them and the adapter's cache is cleared."""
    yield
    for name, value in _MLFLOW_ENV_AT_START.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    from tasks.adapters import mlflow as mlflow_adapter

    mlflow_adapter._user_tracking_uri.cache_clear()
    mlflow_adapter._user_env.cache_clear()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """One moto_server (any credentials accepted) for the whole run: each test makes its own bucket
    (``tests.s3_server.unique_bucket``), so tests share the server, not state; ~1.6 s saved per module."""
    from tests.s3_server import s3_server

    with s3_server(tmp_path_factory.mktemp("moto")) as running:
        yield running
