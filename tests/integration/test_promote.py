"""Alias moves against a real MLflow SQLite store: promote, reject, rollback, audit trail, races."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks import promote
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.model_version import CHALLENGER, CHAMPION, PREVIOUS
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("promote-store")  # one SQLite store: creating one costs seconds


@pytest.fixture
def store(shared_root, tmp_path, request) -> tuple[Params, MlflowClient]:
    data = tiny_params_dict(shared_root, promote={"audit_log": str(tmp_path / "audit.jsonl")})
    data["registry"]["model_name"] = f"m-{request.node.name}"[:60]  # one registered model per test
    params = Params.model_validate(data)
    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    for _ in range(4):  # versions whose source holds no model: fine for alias moves, not for rollback checks
        empty = tmp_path / "empty-model"
        empty.mkdir(exist_ok=True)
        client.create_model_version(params.registry.model_name, source=str(empty))
    return params, client


def champion(params: Params) -> str | None:
    found = mlflow_adapter.find_alias(params, CHAMPION)
    return found.version if found else None


def test_promote_moves_previous_and_champion_and_clears_challenger(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    mlflow_adapter.set_alias(params, CHALLENGER, "2")
    result = promote.promote(params, version="2", why="gate: +0.05 mAP")
    assert result.moves == {"previous": [None, "1"], "champion": ["1", "2"]}
    assert champion(params) == "2"
    assert mlflow_adapter.find_alias(params, PREVIOUS).version == "1"
    assert mlflow_adapter.find_alias(params, CHALLENGER) is None


def test_reject_keeps_champion_and_tags_version(store):
    params, client = store
    promote.promote(params, version="1", why="first")
    promote.reject(params, version="2", reasons=["golden drop 0.04 > 0.02", "class ring -0.2"])
    assert champion(params) == "1"
    tags = client.get_model_version(params.registry.model_name, "2").tags
    assert tags["rejected"] == "true" and "golden drop" in tags["reject_reasons"]
    assert promote.read_audit(params)[-1].action == "reject"


def test_rollback_without_previous_says_so(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    with pytest.raises(promote.RollbackError, match="no 'previous' alias"):
        promote.rollback(params)


def test_rollback_refuses_a_version_that_does_not_load(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    promote.promote(params, version="2", why="second")
    with pytest.raises(promote.RollbackError, match="does not load and predict"):
        promote.rollback(params)
    assert champion(params) == "2"


def test_audit_trail_records_who_what_when_why(store):
    params, _ = store
    promote.promote(params, version="1", why="first", who="alice@factory")
    promote.promote(params, version="3", why="better on night shift", who="bob@factory")
    records = promote.read_audit(params)
    assert [(r.alias, r.from_version, r.to_version) for r in records] == [
        ("champion", None, "1"),
        ("previous", None, "1"),
        ("champion", "1", "3"),
    ]
    assert records[-1].who == "bob@factory" and records[-1].why == "better on night shift"
    table = promote.format_audit(records)
    assert "bob@factory" in table and "better on night shift" in table


def test_torn_last_line_is_skipped(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    with Path(params.promote.audit_log).open("a") as handle:
        handle.write('{"ts": "2026-')
    assert len(promote.read_audit(params)) == 1


def test_racing_promotions_leave_one_champion_and_a_consistent_trail(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def contender(version: str) -> None:
        try:
            barrier.wait()
            promote.promote(params, version=version, why=f"race {version}")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(v,)) for v in ("2", "3", "4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    moves = [r for r in promote.read_audit(params) if r.alias == "champion"]
    for before, after in itertools.pairwise(moves):
        assert after.from_version == before.to_version, "each champion move starts where the last ended"
    assert champion(params) == moves[-1].to_version
    assert mlflow_adapter.find_alias(params, PREVIOUS).version == moves[-2].to_version
