"""Privacy, Label Studio's side of ``make forget IMAGE=...``: the image's tasks are deleted on a real server.

The real label stage imports a cycle's sampled images as tasks with the champion's boxes as pre-annotations, the
annotator simulator answers two of them and the label stage collects the answers. ``forget`` deletes every task of
the forgotten image (the ledger's, an import the ledger never recorded, and one of an image whose ledger row was
lost), their annotations and predictions with them, and nothing else. Afterwards neither the tasks, nor a JSON
export of the project, nor any file of the server's data dir (its SQLite database included) holds the image's hash
or id. The stores outside Label Studio are covered by ``tests/reliability/test_forget.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tasks import forget, label
from tasks.adapters import labelstudio
from tasks.config import LabelParams, Params
from tasks.contracts.label_tasks import image_path
from tasks.contracts.ledger import LedgerRow, ledger_path, read_ledger, write_ledger
from tasks.sim import annotator
from tests.integration.conftest import CYCLE, Server, build_cycle, make_params

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("labelstudio_env")]


def labeled_cycle(server: Server, name: str, *, seed: int) -> tuple[Params, int, dict[str, LedgerRow]]:
    """A world of its own (``seed``: no other test puts these images on the shared server), imported into a project
    of its own with pre-annotations, the first two tasks answered and collected; ``(params, project, ledger)``.
    """
    data = make_params(server.root / name, title=f"visionloop-{name}").model_dump(mode="json")
    data["base"]["seed"] = seed
    params = build_cycle(Params.model_validate(data))
    imported = label.run(params, cycle=CYCLE)
    assert imported.imported > 2 and imported.project_id is not None
    assert annotator.run(params, limit=2).answered == 2
    assert label.run(params, cycle=CYCLE).labeled == 2
    return params, imported.project_id, read_ledger(ledger_path(params))


def client() -> Any:
    return labelstudio.connect(LabelParams())  # URL and token from the environment the server fixture set


def tasks_of(project_id: int) -> dict[int, dict[str, Any]]:
    """Every task of the project with all its fields (data, annotations, predictions), by id."""
    return {int(t.id): t.model_dump(mode="json") for t in client().tasks.list(project=project_id, fields="all")}


def rows_holding(database: Path, needle: str) -> list[str]:
    """``table.column`` of every live row of a SQLite database whose value, as text, holds ``needle``."""
    found = []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]:
                query = f'SELECT 1 FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE ? LIMIT 1'
                if db.execute(query, [f"%{needle}%"]).fetchone():
                    found.append(f"{table}.{column}")
    return found


def project_tasks_holding(database: Path, project: int, needle: str) -> list[int]:
    """Ids of the live tasks of ``project`` whose data holds ``needle``."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        query = "SELECT id FROM task WHERE project_id = ? AND CAST(data AS TEXT) LIKE ?"
        return [int(r[0]) for r in db.execute(query, [project, f"%{needle}%"]).fetchall()]


def files_holding(folder: Path, needles: list[bytes]) -> list[str]:
    """Files under ``folder`` whose bytes hold one of ``needles`` (SQLite free pages and journals included)."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    )


def test_forget_deletes_the_label_studio_task(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the params' own (absent) store, not a leftover one
    params, project, ledger = labeled_cycle(server, "forget", seed=20261201)
    target = min(ledger.values(), key=lambda r: int(r["task_id"] or 0))  # the first task: answered and collected
    assert target["status"] == "labeled" and target["backend"] == "labelstudio"
    sha, image_id, uri = target["image_sha256"], target["image_id"], target["image_uri"]
    pixels = image_path(uri).read_bytes()
    recorded = int(target["task_id"] or 0)
    stray = int(client().tasks.create(project=project, data=tasks_of(project)[recorded]["data"]).id or 0)
    before = tasks_of(project)  # the stray one: an import of the same image the ledger never recorded
    assert before[recorded]["annotations"] and before[recorded]["predictions"] and before[stray]["data"]
    others = {t: task for t, task in before.items() if t not in (recorded, stray)}
    assert len(others) == len(ledger) - 1 and any(t["annotations"] for t in others.values())
    assert all(t["predictions"] for t in others.values()) and sha not in str(others) and image_id not in str(others)
    database = server.data / "label_studio.sqlite3"
    assert rows_holding(database, sha) == ["task.data"] and "label_studio.sqlite3" in files_holding(
        server.data, [sha.encode(), image_id.encode()]
    )  # the search below finds the image where the server keeps it

    report = forget.run(params, image=image_id, root=server.root / "forget")  # not a DVC project

    assert report.mode == "forget" and report.image_sha256 == sha and not report.left, report
    assert report.removed["label_studio"] == [f"task {t}" for t in sorted((recorded, stray))]
    assert tasks_of(project) == others  # both tasks gone; every other task, annotation and prediction untouched
    assert sha not in read_ledger(ledger_path(params)) and len(read_ledger(ledger_path(params))) == len(ledger) - 1

    again = forget.run(params, image=sha, root=server.root / "forget")
    assert again.mode == "already_forgotten" and not again.left and "label_studio" not in again.removed, again
    assert tasks_of(project) == others

    export = b"".join(client().projects.exports.download_sync(project, download_all_tasks=True, export_type="JSON"))
    assert len(export) > 1000 and all(t["data"]["image_sha256"].encode() in export for t in others.values())
    for needle in (sha, image_id, uri, Path(uri).name):
        assert needle.encode() not in export, f"the project's export still names the image ({needle})"
    # Label Studio keeps no copy: no live row (no history or import table holds the task data), and no bytes in
    # the database's free pages, journals or export files (the export just made is under export/)
    # (the hash and pixels are this image's own; its id is not: the server is shared with other tests whose worlds
    # name their images the same way, so the id is looked for in this project's tasks only)
    assert rows_holding(database, sha) == [] and project_tasks_holding(database, project, image_id) == []
    left = files_holding(server.data, [sha.encode(), pixels])
    assert not left, (
        f"{server.data}: {left} still hold the forgotten image's hash or id: a SQLite built without SECURE_DELETE "
        "keeps deleted rows in free pages until `VACUUM` (run it on label_studio.sqlite3)"
    )


def test_forget_finds_the_task_of_an_image_whose_ledger_row_was_lost(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The label stage killed after its import landed, before the ledger write: the task names the image, no row does.

    The project the label stage recorded (``projects.json``) is searched for tasks naming the image's hash.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params, project, ledger = labeled_cycle(server, "forget-lost", seed=20261202)
    lost = max(ledger.values(), key=lambda r: int(r["task_id"] or 0))  # open, not yet answered
    write_ledger(ledger_path(params), {s: r for s, r in ledger.items() if s != lost["image_sha256"]})
    before = tasks_of(project)
    assert (
        len(before) == len(ledger) and before[int(lost["task_id"] or 0)]["data"]["image_sha256"] == lost["image_sha256"]
    )

    report = forget.run(params, image=lost["image_id"], root=server.root / "forget-lost")

    assert report.removed.get("label_studio") == [f"task {lost['task_id']}"], report
    assert tasks_of(project) == {t: task for t, task in before.items() if t != lost["task_id"]}
