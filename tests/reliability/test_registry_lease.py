"""The registry lock lives where the registry lives: on an MLflow tracking server it is a lease on the server.

Two *clones* (each its own params, audit trail and lock-file folder) that share one ``mlflow server`` race their
promotions in separate processes: exactly one compare-and-set wins, the other is rejected because the champion
moved, and the two audit trails read together form one chain that ends at the champion. With the old file lock
(one lock file per clone) both promotions went through over the same champion. A lease whose holder died is
broken (with a log line naming it); a lease held by a live holder makes the wait end in an error naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import cycle as cycle_stage
from tasks import promote
from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters import registry_lease
from tasks.config import Params
from tasks.contracts import audit
from tasks.contracts.model_version import CHAMPION, PREVIOUS
from tests.conftest import tiny_params_dict
from tests.mlflow_server import mlflow_server as start_mlflow_server

pytestmark = pytest.mark.integration

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend in a temp folder); under ``CI=true`` it must start."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), workers=2) as url:
        yield url


def _clone(root: str, url: str, model: str, **promote_params: object) -> Params:
    """The params of one clone: its own folders (audit trail, lock files), the shared server."""
    data = tiny_params_dict(Path(root), promote={"audit_log": str(Path(root) / "audit" / "aliases.jsonl")})
    data["registry"].update(tracking_uri=url, model_name=model)
    data["promote"].update(promote_params)
    return Params.model_validate(data)


@pytest.fixture
def model(mlflow_server, monkeypatch) -> str:
    """A fresh model on the server: v1..v4 registered, champion v2 (previous v1)."""
    # mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI: set it here so that the monkeypatch puts it back after
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow_adapter._user_tracking_uri.cache_clear()
    name = f"lease-{uuid.uuid4().hex[:8]}"
    client = mlflow_adapter.client(_clone("/nonexistent", mlflow_server, name))
    client.create_registered_model(name)
    run = client.create_run("0")  # the versions are empty placeholders: only their aliases move
    for _ in range(4):
        client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    yield name
    mlflow_adapter._user_tracking_uri.cache_clear()


# ------------------------------------------------------------------------------------ two clones race


def _promote_in_clone(root: str, url: str, model: str, version: str, start: float, results) -> None:
    """One clone's contender: promote ``version`` over the champion v2 it was gated against."""
    params = _clone(root, url, model)
    found = mlflow_adapter.find_alias

    def slow_find_alias(params: Params, alias: str) -> object:  # widen the read-then-write window of a promotion
        seen = found(params, alias)
        time.sleep(0.5)
        return seen

    mlflow_adapter.find_alias = slow_find_alias  # type: ignore[assignment]
    time.sleep(max(0.0, start - time.time()))
    done = promote.promote(params, version=version, why="race", who=f"{Path(root).name}", expected_champion="2")
    results.put((Path(root).name, version, done.action, [r.why for r in done.records]))


def _project_first() -> contextlib.AbstractContextManager[None]:
    from tests.reliability.test_races import _project_first as project_first

    return project_first()


def _merged_trail(clones: list[Params]) -> list[audit.AuditRecord]:
    """The clones' trails read together, oldest first. Each clone keeps its own trail and records only its own
    moves: a move another clone made is never claimed as an interrupted run's (only a checkout's own write-ahead
    file, ``promote.pending_path``, says which moves were its)."""
    records = [r for params in clones for r in promote.read_audit(params)]
    assert not [r for r in records if "recorded by its re-run" in r.why], "a clone claimed another clone's move"
    return sorted(records, key=lambda r: r.ts)


@pytest.mark.slow  # ~25 s: spawned clones; CI runs it (make test-slow-reliability)
def test_two_clones_promoting_at_once_on_one_server_move_the_champion_once(mlflow_server, model, tmp_path):
    clones = [tmp_path / "clone-a", tmp_path / "clone-b"]
    first = _clone(str(clones[0]), mlflow_server, model)
    promote.promote(first, version="1", why="first")
    promote.promote(first, version="2", why="second")
    results: multiprocessing.Queue = SPAWN.Queue()
    start = time.time() + 15.0  # every contender has imported and waits by then
    workers = [
        SPAWN.Process(target=_promote_in_clone, args=(str(root), mlflow_server, model, version, start, results))
        for root, version in zip(clones, ["3", "4"], strict=True)
    ]
    with _project_first():
        for worker in workers:
            worker.start()
    for worker in workers:
        worker.join(timeout=180)
        assert worker.exitcode == 0, f"a contender crashed (exit {worker.exitcode})"
    outcomes = sorted(results.get(timeout=5) for _ in workers)

    assert sorted(o[2] for o in outcomes) == ["promote", "reject"], f"both clones moved the champion: {outcomes}"
    winner = next(o for o in outcomes if o[2] == "promote")
    loser = next(o for o in outcomes if o[2] == "reject")
    assert "champion moved from v2 to v" + winner[1] in loser[3][-1], loser
    params = [_clone(str(root), mlflow_server, model) for root in clones]
    moves = [r for r in _merged_trail(params) if r.alias == CHAMPION]
    for before, after in itertools.pairwise(moves):
        assert after.from_version == before.to_version, f"trail broken between {before} and {after}"
    assert mlflow_adapter.get_alias(first, CHAMPION).version == moves[-1].to_version == winner[1]
    assert mlflow_adapter.get_alias(first, PREVIOUS).version == "2"
    rejected = [r for r in _merged_trail(params) if r.action == "reject"]
    assert [r.to_version for r in rejected] == [loser[1]]


# ------------------------------------------------------------------------------------ stale and held leases


def _hold_and_hang(root: str, url: str, model: str, ready) -> None:
    """Take the registry lock and never let go (the test kills this process: a crash while holding it)."""
    with mlflow_adapter.registry_lock(_clone(root, url, model)):
        ready.set()
        time.sleep(600)


@pytest.mark.slow  # ~25 s: a holder process killed on a real MLflow server; CI's slow part runs it
def test_a_lease_whose_holder_was_killed_is_broken_naming_it(mlflow_server, model, tmp_path, caplog):
    params = _clone(str(tmp_path), mlflow_server, model, lease_ttl_s=600, lock_timeout_s=20)
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_and_hang, args=(str(tmp_path), mlflow_server, model, ready))
    with _project_first():
        holder.start()
    assert ready.wait(timeout=120), "the holder never took the lease"
    os.kill(holder.pid, signal.SIGKILL)  # no release: the lease stays on the server
    holder.join(timeout=30)
    lease = f"{model}.lease"
    assert registry_lease.Holder.from_tags(mlflow_adapter.client(params).get_registered_model(lease).tags)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), mlflow_adapter.registry_lock(params):
        pass
    assert time.monotonic() - started < 15, "a dead holder on this host should not be waited for until expiry"
    broken = [r.getMessage() for r in caplog.records if "breaking the stale lease" in r.getMessage()]
    assert broken and f"pid {holder.pid}" in broken[0] and "no longer runs" in broken[0], caplog.text


def _plant(params: Params, *, host: str, expires_in_s: float) -> registry_lease.Holder:
    """A lease held by a process of another host (its pid cannot be checked from here)."""
    fresh = registry_lease.Holder.new(run="flow continuous_learning/elsewhere-run", ttl_s=expires_in_s)
    planted = dataclasses.replace(fresh, host=host)
    mlflow_adapter.client(params).create_registered_model(f"{params.registry.model_name}.lease", tags=planted.tags())
    return planted


def test_an_expired_lease_of_another_host_is_broken(mlflow_server, model, tmp_path, caplog):
    params = _clone(str(tmp_path), mlflow_server, model, lock_timeout_s=20)
    _plant(params, host="other-host", expires_in_s=-5)
    with caplog.at_level(logging.WARNING), mlflow_adapter.registry_lock(params):
        pass
    assert "breaking the stale lease" in caplog.text and "other-host" in caplog.text and "expired" in caplog.text


def test_a_held_lease_times_out_with_an_error_naming_its_holder(mlflow_server, model, tmp_path):
    params = _clone(str(tmp_path), mlflow_server, model, lock_timeout_s=2)
    planted = _plant(params, host="other-host", expires_in_s=300)
    started = time.monotonic()
    with pytest.raises(registry_lease.LeaseHeldError) as raised, mlflow_adapter.registry_lock(params):
        pass
    assert 2 <= time.monotonic() - started < 15
    message = str(raised.value)
    for part in ("elsewhere-run", "other-host", planted.acquired_at, mlflow_server, "waited"):
        assert part in message, message
    lease = mlflow_adapter.client(params).get_registered_model(f"{model}.lease")
    assert lease.tags[f"{registry_lease.TAG}.token"] == planted.token, "a live lease was broken"


def test_a_live_holder_keeps_its_lease_past_the_ttl(mlflow_server, model, tmp_path):
    """The heartbeat: a lease held longer than its TTL is renewed, so nobody breaks it."""
    # a TTL long enough for renewals through an MLflow server on a busy host (the suite runs two workers)
    params = _clone(str(tmp_path), mlflow_server, model, lease_ttl_s=6, lock_timeout_s=14)
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with mlflow_adapter.registry_lock(params):
            taken.set()
            done.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(timeout=30)
        # same host and pid, so only the expiry could make the lease stale: the renewals keep it live
        with pytest.raises(registry_lease.LeaseHeldError), mlflow_adapter.registry_lock(params):
            pass
    finally:
        done.set()
        holder.join(timeout=30)
    with mlflow_adapter.registry_lock(params):  # released: free again at once
        pass


def test_a_lease_is_tagged_and_leaves_the_model_lookups_alone(mlflow_server, model, tmp_path):
    params = _clone(str(tmp_path), mlflow_server, model)
    client = mlflow_adapter.client(params)
    with mlflow_adapter.registry_lock(params):
        lease = client.get_registered_model(f"{model}.lease")
        assert lease.tags[registry_lease.TAG] == "true" and "not a model" in lease.description
        assert {v.name for v in mlflow_adapter.all_versions(params)} == {model}
    names = {m.name for m in client.search_registered_models(f"name LIKE '{model}%'")}
    assert names == {model}, f"a lease outlived its holder: {names}"


def test_the_embedded_store_keeps_the_file_lock(tmp_path):
    params = Params.model_validate(tiny_params_dict(tmp_path))
    with mlflow_adapter.registry_lock(params):
        assert params.promote.audit_log.with_name(f".{params.registry.model_name}.lock").exists()
        assert not Path(str(params.registry.tracking_uri).removeprefix("sqlite:///")).exists(), "no store touched"


# ------------------------------------------------------------------------------------ one cycle at a time, any clone


def _cycle_in_clone(root: str, url: str, model: str, start: float, results) -> None:
    params = _clone(root, url, model)
    time.sleep(max(0.0, start - time.time()))
    run = f"flow continuous_learning/{Path(root).name}"
    with cycle_stage.lease(params, holder=run) as busy:
        results.put((run, busy))
        if busy is None:
            time.sleep(8)


@pytest.mark.slow  # ~25 s: spawned clones; CI runs it (make test-slow-reliability)
def test_two_clones_cycling_at_once_on_one_server_run_one_cycle(mlflow_server, model, tmp_path):
    results: multiprocessing.Queue = SPAWN.Queue()
    start = time.time() + 15.0
    workers = [
        SPAWN.Process(target=_cycle_in_clone, args=(str(tmp_path / name), mlflow_server, model, start, results))
        for name in ("clone-a", "clone-b")
    ]
    with _project_first():
        for worker in workers:
            worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    held = [run for run, busy in outcomes if busy is None]
    told = [busy for _, busy in outcomes if busy is not None]
    assert len(held) == 1 and len(told) == 1, outcomes
    assert held[0] in told[0] and f"{model}.cycle-lease" in told[0] and "since" in told[0], told[0]
    client = mlflow_adapter.client(_clone(str(tmp_path), mlflow_server, model))
    assert not client.search_registered_models(f"name = '{model}.cycle-lease'"), "the lease outlived its run"
