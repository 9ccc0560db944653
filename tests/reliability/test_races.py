"""Races between processes (not threads): alias moves on one registry, and the prediction log written while read.

* Rollbacks and promotions from several processes at once on one MLflow store: every call either moves the
  aliases or fails with a clear ``RollbackError``; the trail stays a chain (each champion move starts where the last
  one ended) and exactly one champion remains.
* Predict appending (replacing its part file over and over) while another process reads the log the way sample
  does: every read sees a whole file, the old or the new one, never an error or a half-written file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks import promote
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.model_version import CHAMPION
from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no state shared with the test


def _params(root: str) -> Params:
    data = tiny_params_dict(Path(root), promote={"audit_log": str(Path(root) / "audit.jsonl")})
    return Params.model_validate(data)


def _act(root: str, action: str, version: str | None, start: float, results: multiprocessing.Queue) -> None:
    """One contender: wait for the common start, then roll back or promote; report what happened."""
    params = _params(root)
    # the versions are empty placeholders: the load-and-predict check is the slow step a race hides behind
    promote.check_loads_and_predicts = lambda params, version: (time.sleep(0.2), 1)[1]  # type: ignore[assignment]
    time.sleep(max(0.0, start - time.time()))
    try:
        if action == "rollback":
            done = promote.rollback(params, to_version=version, why=f"race {action}", who=f"p-{action}-{version}")
        else:
            done = promote.promote(params, version=str(version), why=f"race {action}", who=f"p-{action}-{version}")
        results.put(("ok", action, version, done.moves))
    except promote.RollbackError as exc:
        results.put(("refused", action, version, str(exc)))


@pytest.fixture
def registry(tmp_path) -> Params:
    params = _params(str(tmp_path))
    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    for _ in range(4):
        client.create_model_version(params.registry.model_name, source=str(empty))
    promote.promote(params, version="1", why="first")
    promote.promote(params, version="2", why="second")  # champion v2, previous v1
    return params


@contextlib.contextmanager
def _project_first() -> Iterator[None]:
    """Spawned workers inherit ``sys.path``; an MLflow model loaded earlier in this session (a pyfunc's ``code/``
    folder holds a copy of ``tasks``) must not shadow the project in them."""
    saved = list(sys.path)
    sys.path[:] = [str(PROJECT_ROOT), *saved]
    try:
        yield
    finally:
        sys.path[:] = saved


def _start(workers: list) -> None:
    with _project_first():
        for worker in workers:
            worker.start()


def _race(root: Path, contenders: list[tuple[str, str | None]]) -> list[tuple]:
    results: multiprocessing.Queue = SPAWN.Queue()
    start = time.time() + 8.0  # every worker has imported and is waiting by then
    workers = [SPAWN.Process(target=_act, args=(str(root), a, v, start, results)) for a, v in contenders]
    _start(workers)
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0, f"a contender crashed (exit {worker.exitcode})"
    return [results.get(timeout=5) for _ in workers]


def _chain_is_consistent(params: Params) -> None:
    """Each champion move starts where the last ended, and a rollback goes back to where the last move came from
    (a rollback that lands after a promotion it never saw would skip back over it)."""
    moves = [r for r in promote.read_audit(params) if r.alias == CHAMPION]
    for before, after in itertools.pairwise(moves):
        assert after.from_version == before.to_version, f"trail broken between {before} and {after}"
        if after.action == "rollback":
            assert after.to_version == before.from_version, f"{after} undid a move it did not judge: {before}"
    assert mlflow_adapter.find_alias(params, CHAMPION).version == moves[-1].to_version


def test_two_rollbacks_at_once_move_the_champion_once(registry, tmp_path):
    outcomes = _race(tmp_path, [("rollback", None), ("rollback", None)])
    assert sorted(o[0] for o in outcomes) == ["ok", "refused"], outcomes
    refused = next(o for o in outcomes if o[0] == "refused")
    assert "moved" in refused[3] or "already the champion" in refused[3]
    assert mlflow_adapter.find_alias(registry, CHAMPION).version == "1"
    _chain_is_consistent(registry)


def test_a_promotion_racing_a_rollback_leaves_one_consistent_champion(registry, tmp_path):
    outcomes = _race(tmp_path, [("rollback", None), ("promote", "3")])
    assert any(o[0] == "ok" for o in outcomes), outcomes
    for status, _, _, detail in outcomes:
        if status == "refused":
            assert "moved" in detail, detail  # only a clear compare-and-set refusal, never a silent overwrite
    _chain_is_consistent(registry)


# ------------------------------------------------------------------------------------ log append vs read


def _table(n: int) -> object:
    records = [
        prediction_log.ImageDetections(
            image_id=f"img_{i:06d}",
            image_uri=f"file:///data/img_{i:06d}.png",
            image_sha256=hashlib.sha256(f"{n}-{i}".encode()).hexdigest(),
            width=160,
            height=160,
            latency_ms=1.0,
            boxes_xyxy=np.array([[1.0, 1.0, 20.0, 20.0]] * 2),
            confidence=np.array([0.9, 0.4]),
            class_id=np.array([0, 1]),
        )
        for i in range(n)
    ]
    return prediction_log.rows_to_table(
        records,
        batch="2026-11-02",
        date=dt.date(2026, 11, 2),
        model_name="visionloop-detector",
        model_version="1",
        model_alias="champion",
        class_names=["circle", "triangle", "square", "star", "cross", "ring"],
    )


def _append_forever(root: str, until: float) -> None:
    sizes = [500, 2000]
    tables = [_table(n) for n in sizes]
    i = 0
    while time.time() < until:
        prediction_log.append(Path(root), tables[i % 2], part="batch=2026-11-02")
        i += 1


def test_predict_appending_while_sample_reads_never_shows_half_a_file(tmp_path):
    root = tmp_path / "predictions"
    prediction_log.append(root, _table(500), part="batch=2026-11-02")
    until = time.time() + 12.0
    writer = SPAWN.Process(target=_append_forever, args=(str(root), until))
    _start([writer])
    seen: set[int] = set()
    reads = 0
    try:
        while time.time() < until:
            rows = prediction_log.read(root).num_rows  # validates schema and every row of every file
            seen.add(rows)
            reads += 1
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert seen <= {1000, 4000}, f"a read saw a partial file: {sorted(seen)}"
    assert reads > 20 and len(seen) == 2, f"the race was not exercised ({reads} reads saw {sorted(seen)})"
    assert not [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".parquet")], "temp files left"
