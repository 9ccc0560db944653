"""One Label Studio project per title, whatever resolves it at the same instant: the demo's race, made deterministic.

On a fresh Label Studio server (its own data dir, so project ids start at 1 as for a new user), the label stage and
the annotator simulator run as two *separate processes* that start together. A barrier holds every process that
has just listed the projects of the title until the other one has listed them too (or 15 s have passed), so the
interleaving that made two projects in the demo ("both list, find nothing, both create") happens every time a
process lists before creating. The label stage must end up with the only project, the annotator must answer its
tasks, and the stage must collect every one of them.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tasks import label
from tasks.adapters import labelstudio
from tasks.config import LabelParams, Params
from tasks.env import PROJECT_ROOT
from tasks.sim import annotator
from tests.integration.conftest import CYCLE, TOKEN, Server, build_cycle, label_studio_server, make_params

pytestmark = pytest.mark.integration

TITLE = "visionloop-race"
LIST_BARRIER_S = 15.0  # the other process's list comes within this (both are past their imports by then)
DEADLINE_S = 180.0


def _hold_after_listing(barrier: Any) -> None:
    """In this process, wait at ``barrier`` right after the first listing of projects by title (list → create)."""
    from label_studio_sdk.projects.client import ProjectsClient

    real = ProjectsClient.list
    held = threading.Event()

    def list_then_wait(self: ProjectsClient, *args: Any, **kwargs: Any) -> Any:
        found = real(self, *args, **kwargs)
        if kwargs.get("title") and not held.is_set():
            held.set()
            # the other process may never list by title (it reads the recorded project): then go on alone
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=LIST_BARRIER_S)
        return found

    ProjectsClient.list = list_then_wait  # type: ignore[method-assign]


def _child(role: str, params: Params, n_tasks: int, start: Any, barrier: Any, out: Any) -> None:
    """Run one role in this (spawned) process; put its result, or its traceback, on the queue."""
    try:
        _ROLES[role](params, n_tasks, start, barrier, out)
    except BaseException:
        out.put((role, "error", traceback.format_exc(), None))
        raise


def _label_process(params: Params, n_tasks: int, start: Any, barrier: Any, out: Any) -> None:
    """The label stage, re-run until every task is collected (as the flow polls)."""
    _hold_after_listing(barrier)
    start.wait(timeout=120)
    deadline = time.monotonic() + DEADLINE_S
    result = label.run(params, cycle=CYCLE)
    while result.labeled < n_tasks and time.monotonic() < deadline:
        time.sleep(1.0)
        result = label.run(params, cycle=CYCLE)
    out.put(("label", result.project_id, result.labeled, result.pending))


def _annotator_process(params: Params, n_tasks: int, start: Any, barrier: Any, out: Any) -> None:
    """The annotator simulator, answering every round (as the demo's background annotator does)."""
    _hold_after_listing(barrier)
    start.wait(timeout=120)
    deadline = time.monotonic() + DEADLINE_S
    answered, errors, project = 0, [], None
    while answered < n_tasks and time.monotonic() < deadline:
        try:
            done = annotator.run(params)
            answered += done.answered
            project = done.project_id
        except labelstudio.LabelProjectNotReady as exc:
            errors.append(str(exc))
        time.sleep(0.5)
    out.put(("annotator", project, answered, len(errors)))


_ROLES = {"label": _label_process, "annotator": _annotator_process}


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("labelstudio-race")
    with label_studio_server(root) as started, pytest.MonkeyPatch.context() as env:
        env.setenv("LABEL_STUDIO_API_KEY", TOKEN)
        env.setenv("LABEL_STUDIO_URL", started.url)
        env.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(started.root))
        yield started


@pytest.mark.slow  # ~22 s: two processes on a fresh Label Studio server; CI's slow part runs it
def test_label_stage_and_annotator_racing_in_two_processes_make_one_project(fresh_server: Server) -> None:
    params = build_cycle(make_params(fresh_server.root, title=TITLE))
    n_tasks = len(pq.read_table(label.manifest_path(params, CYCLE)))
    ctx = mp.get_context("spawn")  # fresh interpreters: nothing shared with this process but the files and server
    start, barrier, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_child, args=(role, params, n_tasks, start, barrier, out), name=role) for role in _ROLES
    ]
    # A spawned child starts from this process's sys.path; MLflow pyfunc loads earlier in the session put model
    # code folders (with their own copy of tasks/) in front of it, so the project comes first while they start.
    with pytest.MonkeyPatch.context() as path:
        path.syspath_prepend(str(PROJECT_ROOT))
        for worker in workers:
            worker.start()
    results: dict[str, list[Any]] = {}
    try:
        deadline = time.monotonic() + DEADLINE_S + 120
        while len(results) < len(workers) and time.monotonic() < deadline:
            try:
                role, *rest = out.get(timeout=5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break  # both ended, one without a word: its exit code below tells
                continue
            assert rest[0] != "error", f"the {role} process failed:\n{rest[1]}"
            results[role] = rest
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0, 0]

    sdk = labelstudio.connect(LabelParams())
    titled = [p.id for p in sdk.projects.list(title=TITLE, page_size=100) if p.title == TITLE]
    assert len(titled) == 1, f"projects titled {TITLE!r}: {titled} (the race made duplicates)"
    (project_id,) = titled

    label_project, labeled, pending = results["label"]
    sim_project, answered, _not_ready = results["annotator"]
    assert label_project == sim_project == project_id
    assert (answered, labeled, pending) == (n_tasks, n_tasks, 0)
    recorded = labelstudio.read_project_record(labelstudio.projects_path(params), url=fresh_server.url, title=TITLE)
    assert recorded == project_id


def test_duplicates_from_older_runs_use_the_project_the_ledger_names(fresh_server: Server, caplog) -> None:
    """Two projects of one title (an older version's race): the stage keeps the one its ledger's tasks are in."""
    params = make_params(fresh_server.root, title="visionloop-dups", labels="labels-dups")
    params = build_cycle(params)
    sdk = labelstudio.connect(LabelParams())
    from tasks.contracts import annotations as ls

    config = ls.labeling_config(params.base.classes)
    empty = sdk.projects.create(title="visionloop-dups", label_config=config)
    first = label.run(params, cycle=CYCLE)
    assert first.project_id == empty.id  # adopted: the only one
    used = sdk.projects.create(title="visionloop-dups", label_config=config)  # a second one appears later
    assert used.id != empty.id
    record = labelstudio.projects_path(params)
    record.unlink()  # as before the record existed: the ledger decides
    caplog.set_level("WARNING", logger="tasks.adapters.labelstudio")
    again = label.run(params, cycle=CYCLE)
    assert again.project_id == empty.id and again.imported == 0
    warning = next(r.getMessage() for r in caplog.records if "projects titled" in r.getMessage())
    assert f"using id {empty.id} (the project the label ledger's tasks are in)" in warning
    assert labelstudio.read_project_record(record, url=fresh_server.url, title="visionloop-dups") == empty.id


def test_annotator_never_creates_a_project(fresh_server: Server, tmp_path: Path) -> None:
    params = make_params(fresh_server.root, title="visionloop-nobody", labels="labels-nobody")
    with pytest.raises(labelstudio.LabelProjectNotReady, match=r"no Label Studio project titled 'visionloop-nobody'"):
        annotator.run(params)
    sdk = labelstudio.connect(LabelParams())
    assert [p for p in sdk.projects.list(title="visionloop-nobody") if p.title == "visionloop-nobody"] == []
