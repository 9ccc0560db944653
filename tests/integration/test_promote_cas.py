"""Promotion as a compare-and-set on the champion the gate judged against, on a real MLflow SQLite store."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks import promote
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.model_version import CHAMPION, PREVIOUS
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("promote-cas-store")  # one SQLite store: creating one costs seconds


@pytest.fixture
def store(shared_root, tmp_path, request) -> tuple[Params, MlflowClient]:
    data = tiny_params_dict(shared_root, promote={"audit_log": str(tmp_path / "audit.jsonl")})
    data["base"]["paths"]["reports"] = str(tmp_path / "reports")
    data["registry"]["model_name"] = f"cas-{request.node.name}"[:60]  # one registered model per test
    params = Params.model_validate(data)
    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    for _ in range(3):  # alias moves need versions, not loadable models
        client.create_model_version(params.registry.model_name, source=str(empty))
    return params, client


def champion(params: Params) -> str | None:
    found = mlflow_adapter.find_alias(params, CHAMPION)
    return found.version if found else None


def test_champion_moved_while_the_candidate_was_gated_is_not_overwritten(store):
    params, client = store
    promote.promote(params, version="1", why="first")
    gated_against = champion(params)  # the cycle fetches the champion (v1) before training v3 ...
    promote.promote(params, version="2", why="hotfix promoted by hand", who="ops@plant")  # ... meanwhile: v2

    result = promote.promote(params, version="3", why="gate: +0.05 mAP", expected_champion=gated_against)

    assert result.action == "reject" and result.moves == {}
    assert champion(params) == "2" and mlflow_adapter.find_alias(params, PREVIOUS).version == "1"
    last = promote.read_audit(params)[-1]
    assert last.action == "reject" and last.to_version == "3" and last.alias is None
    assert last.why == (
        "champion moved from v1 to v2 while v3 was trained and gated against v1; re-run the cycle to judge it "
        "against v2"
    )
    tags = client.get_model_version(params.registry.model_name, "3").tags
    assert tags["rejected"] == "true" and "champion moved from v1 to v2" in tags["reject_reasons"]


def test_a_rollback_meanwhile_is_not_overwritten_either(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    promote.promote(params, version="2", why="second")
    mlflow_adapter.set_alias(params, CHAMPION, "1")  # what a rollback does to the aliases (its check needs a model)
    result = promote.promote(params, version="3", why="gate", expected_champion="2")
    assert result.action == "reject" and champion(params) == "1"
    assert "champion moved from v2 to v1" in result.records[-1].why


@pytest.mark.parametrize(
    ("before", "expected", "promoted"),
    [
        pytest.param("1", "1", True, id="champion-unchanged"),
        pytest.param(None, None, True, id="no-champion-then-and-now"),
        pytest.param("1", None, False, id="a-champion-appeared"),
        pytest.param(None, "1", False, id="the-champion-vanished"),
        pytest.param("3", "1", True, id="already-champion-is-idempotent"),
        pytest.param("2", promote.ANY, True, id="no-expectation-promotes-over-anything"),
    ],
)
def test_compare_and_set_table(store, before, expected, promoted):
    params, _ = store
    if before is not None:
        promote.promote(params, version=before, why="setup")
    result = promote.promote(params, version="3", why="gate", expected_champion=expected)
    assert (result.action == "promote") is promoted
    assert champion(params) == ("3" if promoted else before)
    if not promoted:
        assert "no champion" in result.records[-1].why


def test_run_writes_the_rejection_to_the_promote_report(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    promote.promote(params, version="2", why="second")
    result = promote.run(params, version="3", decision="promote", reasons=["gate: pass"], expected_champion="1")
    assert result.action == "reject"
    report = json.loads((params.base.paths.reports / "promote.json").read_text())
    assert report["action"] == "reject" and "champion moved from v1 to v2" in report["records"][-1]["why"]


def test_two_cycles_gated_against_the_same_champion_promote_exactly_one(store):
    params, _ = store
    promote.promote(params, version="1", why="first")
    barrier = threading.Barrier(2)
    results: dict[str, promote.PromoteResult] = {}

    def cycle(version: str) -> None:
        barrier.wait()
        results[version] = promote.promote(params, version=version, why=f"cycle {version}", expected_champion="1")

    threads = [threading.Thread(target=cycle, args=(v,)) for v in ("2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    actions = sorted(r.action for r in results.values())
    assert actions == ["promote", "reject"]
    (winner,) = [v for v, r in results.items() if r.action == "promote"]
    (loser,) = [v for v, r in results.items() if r.action == "reject"]
    assert champion(params) == winner
    assert f"champion moved from v1 to v{winner} while v{loser}" in results[loser].records[-1].why


def test_a_rollback_whose_previous_moved_during_its_check_moves_nothing(store, monkeypatch):
    """Before: ``previous`` was read outside the lock and the champion set to what it had been (issue 12)."""
    params, _ = store
    promote.promote(params, version="1", why="first")
    promote.promote(params, version="2", why="second")  # champion v2, previous v1

    def check_while_someone_promotes(params, version):  # the slow load-and-predict check, raced by a promotion
        promote.promote(params, version="3", why="promoted meanwhile")  # champion v3, previous v2
        return 1

    monkeypatch.setattr(promote, "check_loads_and_predicts", check_while_someone_promotes)
    trail = len(promote.read_audit(params))
    with pytest.raises(promote.RollbackError, match="'previous' moved from v1 to v2 while v1 was checked"):
        promote.rollback(params, why="bad v2")
    assert champion(params) == "3" and mlflow_adapter.find_alias(params, PREVIOUS).version == "2"
    assert [r.action for r in promote.read_audit(params)[trail:]] == ["promote", "promote"], "only the promotion"


def test_an_automatic_rollback_of_a_champion_that_moved_on_moves_nothing(store, monkeypatch):
    params, _ = store
    promote.promote(params, version="1", why="first")
    promote.promote(params, version="2", why="second")
    monkeypatch.setattr(promote, "check_loads_and_predicts", lambda params, version: 1)
    promote.promote(params, version="3", why="promoted after the watch judged v2")
    with pytest.raises(promote.RollbackError, match="champion moved from v2 to v3"):
        promote.rollback(params, to_version="1", why="v2 regressed", expected_champion="2")
    assert champion(params) == "3"
    done = promote.rollback(params, to_version="2", why="v3 regressed", expected_champion="3")
    assert done.moves == {"champion": ["3", "2"], "previous": ["2", "3"]} and champion(params) == "2"
