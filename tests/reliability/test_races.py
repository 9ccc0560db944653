"""Races between processes (not threads): alias moves on one registry, and the prediction log written while read.

* Rollbacks and promotions from several processes at once on one MLflow store: every call either moves the
  aliases or fails with a clear ``RollbackError``; the trail stays a chain (each champion move starts where the last
  one ended) and exactly one champion remains.
* Predict appending (replacing its part file over and over) while another process reads the log the way sample
  does: every read sees a whole file, the old or the new one, never an error or a half-written file; and predict
  appending new batches while sample's own read path (window, champion, image rows) runs over and over: every read
  sees whole batches only.
* Two continuous-learning runs at once (the cycle lease, embedded store): one holds it, the other is told at once
  which run holds it since when and what to do; a holder that crashes does not keep it; the flow itself ends
  ``CycleBusy`` without opening a cycle while another process holds the lease; the deployments queue their runs.
(The same races across clones on one MLflow server: ``test_registry_lease.py``.)
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
import yaml

from tasks import cycle as cycle_stage
from tasks import promote
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts import prediction_log, prediction_rows
from tasks.contracts.model_version import CHAMPION
from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict
from tests.integration.conftest import prefect_harness  # noqa: F401  (a session fixture)

# ~2 min: real processes racing on real stores; CI runs them in its slow part (make test-slow-reliability)
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no state shared with the test


def _params(root: str) -> Params:
    data = tiny_params_dict(Path(root), promote={"audit_log": str(Path(root) / "audit.jsonl")})
    return Params.model_validate(data)


def _act(root: str, action: str, version: str | None, start: float, results: multiprocessing.Queue) -> None:
    """One contender: wait for the common start, then roll back or promote; report what happened."""
    params = _params(root)
    # the versions are empty placeholders: the load-and-predict check is the slow step a race hides behind (1 s: both
    # contenders must have read the aliases before either takes the lock, however late one of them got going)
    promote.check_loads_and_predicts = lambda params, version: (time.sleep(1.0), 1)[1]  # type: ignore[assignment]
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


def _table(n: int, *, batch: str = "2026-11-02", date: dt.date = dt.date(2026, 11, 2)) -> object:
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
        batch=batch,
        date=date,
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


BATCH = 300  # images per appended batch, 2 rows each


def _append_batches(root: str, until: float) -> None:
    """Predict logging new batches, one part file each, over three dates."""
    i = 0
    while time.time() < until:
        date = dt.date(2026, 11, 2) + dt.timedelta(days=i % 3)
        prediction_log.append(Path(root), _table(BATCH, batch=f"b{i:04d}", date=date), part=f"batch=b{i:04d}")
        i += 1


def _sample_reads(root: Path) -> tuple[int, int]:
    """What the sample stage reads: the window's files, the champion of the window, its rows grouped by image."""
    parts = prediction_rows.window_parts(root, days=30)
    champion = prediction_rows.find_champion(parts, alias="champion")
    assert champion is not None
    rows = prediction_rows.read_image_rows([p.path for p in parts], model=champion)
    return len(rows), len(rows.confidence)


def test_predict_appending_batches_while_sample_reads_sees_whole_batches(tmp_path):
    root = tmp_path / "predictions"
    prediction_log.append(root, _table(BATCH, batch="first"), part="batch=first")
    until = time.time() + 15.0
    writer = SPAWN.Process(target=_append_batches, args=(str(root), until))
    _start([writer])
    counts: list[int] = []
    try:
        while time.time() < until:
            images, rows = _sample_reads(root)  # a torn file or a schema error raises here
            assert images % BATCH == 0 and rows == 2 * images, f"a partial batch: {images} images, {rows} rows"
            counts.append(images)
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert counts == sorted(counts), "a read saw fewer batches than an earlier one"
    assert len(counts) > 5 and len(set(counts)) > 3, f"the race was not exercised: {counts}"


# ------------------------------------------------------------------------------------ one cycle at a time


def _cycle_params(root: str) -> Params:
    return Params.model_validate(tiny_params_dict(Path(root)))


def _run_cycle_lease(root: str, run: str, start: float, hold_s: float, results: multiprocessing.Queue) -> None:
    """One continuous-learning run's first step: take the cycle lease (held ``hold_s``) or be told who holds it."""
    params = _cycle_params(root)
    time.sleep(max(0.0, start - time.time()))
    with cycle_stage.lease(params, holder=run) as busy:
        results.put((run, busy, time.time()))
        if busy is None:
            time.sleep(hold_s)


def _hold_cycle_lease(root: str, run: str, ready, release) -> None:
    with cycle_stage.lease(_cycle_params(root), holder=run) as busy:
        assert busy is None
        ready.set()
        release.wait(timeout=600)


def test_two_cycles_at_once_one_runs_the_other_is_told_who_holds_it(tmp_path):
    results: multiprocessing.Queue = SPAWN.Queue()
    start = time.time() + 8.0
    workers = [
        SPAWN.Process(target=_run_cycle_lease, args=(str(tmp_path), run, start, 6.0, results))
        for run in ("flow continuous_learning/run-a", "flow continuous_learning/run-b")
    ]
    _start(workers)
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    held = [o for o in outcomes if o[1] is None]
    told = [o for o in outcomes if o[1] is not None]
    assert len(held) == 1 and len(told) == 1, outcomes
    message = told[0][1]
    assert held[0][0] in message and "since" in message and "one cycle at a time" in message, message
    assert told[0][2] - start < 5, "the second run should exit at once, not wait for the first"


def test_a_crashed_cycle_does_not_keep_the_lease(tmp_path):
    ready, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(
        target=_hold_cycle_lease, args=(str(tmp_path), "flow continuous_learning/dies", ready, release)
    )
    _start([holder])
    assert ready.wait(timeout=120)
    with cycle_stage.lease(_cycle_params(str(tmp_path)), holder="second") as busy:
        assert busy is not None and "dies" in busy  # held while its process lives
    holder.kill()  # SIGKILL: no release, no cleanup
    holder.join(timeout=30)
    with cycle_stage.lease(_cycle_params(str(tmp_path)), holder="third") as busy:
        assert busy is None, busy


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_ends_cycle_busy_without_opening_a_cycle(tmp_path):
    from flows.continuous_learning import continuous_learning

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params_dict(tmp_path), sort_keys=False))
    ready, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(
        target=_hold_cycle_lease, args=(str(tmp_path), "flow continuous_learning/first", ready, release)
    )
    _start([holder])
    try:
        assert ready.wait(timeout=120)
        state = continuous_learning(params_path=str(params_file), return_state=True)
    finally:
        release.set()
        holder.join(timeout=60)
    assert state.name == "CycleBusy", state
    assert "flow continuous_learning/first" in (state.message or "") and "since" in (state.message or "")
    samples = _cycle_params(str(tmp_path)).base.paths.samples
    assert not samples.exists() or not list(samples.rglob("cycle.json")), "a busy run opened a cycle"


def test_the_continuous_learning_deployments_queue_their_runs():
    from prefect.cli.deploy._models import PrefectYamlModel

    config = PrefectYamlModel.model_validate(yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text()))
    cycles = [d for d in config.deployments if (d.entrypoint or "").endswith(":continuous_learning")]
    assert cycles
    for deployment in cycles:
        limit = deployment.concurrency_limit
        assert limit is not None and not isinstance(limit, int), deployment.name
        assert (limit.limit, limit.collision_strategy) == (1, "ENQUEUE"), deployment.name
