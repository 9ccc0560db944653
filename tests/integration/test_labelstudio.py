"""The label stage against a real Label Studio 1.23 server on 127.0.0.1, answered by the annotator simulator.

The server comes from ``make labelstudio`` (its own venv; built here when missing: a one-off of a few minutes,
the only reason to skip is that it cannot be built) and is started by ``make labelstudio-up`` on a free port
with a fresh data dir (a copy of the migrated empty database: ~10 s) and stopped by ``make labelstudio-down``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks import label
from tasks.adapters import labelstudio
from tasks.config import LabelParams, Params
from tasks.contracts import annotations as ls
from tasks.contracts.label_tasks import image_path
from tasks.contracts.ledger import ledger_path, read_ledger
from tasks.contracts.reports.label import LabelResult
from tasks.contracts.yolo_labels import read_label_file
from tasks.sim import annotator
from tests.integration.conftest import CYCLE, TOKEN, Server, build_cycle, free_port, make_params, run_make

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("labelstudio_env")]


@pytest.fixture(scope="module")
def cycle(server: Server, labelstudio_env: Server) -> Params:
    """A tiny world, champion predictions (the oracle, shifted a little) in the log, and a sample manifest."""
    return build_cycle(make_params(server.root, title="visionloop-it"))


@pytest.fixture(scope="module")
def first_run(cycle: Params) -> LabelResult:
    return label.run(cycle, cycle=CYCLE)


def client():
    return labelstudio.connect(LabelParams())  # URL and token from the environment the server fixture set


def test_project_is_created_and_tasks_carry_the_predictions(server, cycle, first_run):
    n_images = len(pq.read_table(label.manifest_path(cycle, CYCLE)))
    assert (first_run.imported, first_run.already_imported, first_run.pending) == (n_images, 0, n_images)
    assert first_run.waiting and first_run.project_id is not None

    sdk = client()
    project = sdk.projects.get(id=first_run.project_id)
    assert project.title == "visionloop-it"
    assert ls.config_classes(project.label_config) == cycle.base.classes
    folders = {image_path(r["image_uri"]).parent.resolve() for r in read_ledger(ledger_path(cycle)).values()}
    assert {Path(s.path) for s in sdk.import_storage.local.list(project=first_run.project_id)} == folders

    tasks = list(sdk.tasks.list(project=first_run.project_id, fields="all"))
    assert len(tasks) == n_images
    ledger = read_ledger(ledger_path(cycle))
    assert {t.id for t in tasks} == {r["task_id"] for r in ledger.values()}
    for task in tasks:
        oracle = cycle.base.paths.oracle / task.data["batch"] / "labels" / f"{task.data['image_id']}.txt"
        n_boxes = len(read_label_file(oracle, num_classes=6)[0])
        (item,) = task.predictions
        prediction = item.model_dump() if hasattr(item, "model_dump") else item
        assert prediction["model_version"] == "visionloop-detector-v1"
        assert len(prediction["result"]) == n_boxes
        assert all(r["score"] == pytest.approx(0.7) for r in prediction["result"])
    image = httpx.get(server.url + tasks[0].data["image"], headers={"Authorization": f"Token {TOKEN}"}, timeout=30)
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"  # served through the local files storage


def test_rerun_imports_nothing_twice(cycle, first_run, monkeypatch):
    # the re-listing that guards against duplicates must read every page
    monkeypatch.setattr(labelstudio, "_PAGE_SIZE", 5)
    again = label.run(cycle, cycle=CYCLE)
    assert (again.imported, again.already_imported) == (0, first_run.imported)
    assert len(list(client().tasks.list(project=first_run.project_id, fields="task_only"))) == first_run.imported


def test_simulated_annotations_are_collected_incrementally_and_equal_the_oracle(cycle, first_run):
    answered = annotator.run(cycle, limit=5)
    assert answered.answered == 5 and answered.skipped == 0
    partial = label.run(cycle, cycle=CYCLE)
    assert (partial.collected, partial.labeled, partial.pending) == (5, 5, first_run.imported - 5)
    assert not partial.waiting  # min_labeled 5 reached

    rest = annotator.run(cycle)
    assert rest.answered == first_run.imported - 5
    final = label.run(cycle, cycle=CYCLE)
    assert final.collected == first_run.imported - 5  # only the new ones
    assert (final.labeled, final.pending, final.skipped, final.rejected) == (first_run.imported, 0, 0, [])
    assert label.run(cycle, cycle=CYCLE).collected == 0

    labels_dir = cycle.base.paths.labels / CYCLE
    ledger = read_ledger(ledger_path(cycle))
    for row in ledger.values():
        assert row["status"] == "labeled"
        ours = read_label_file(labels_dir / "labels" / f"{row['image_id']}.txt", num_classes=6)
        oracle = read_label_file(
            cycle.base.paths.oracle / row["batch"] / "labels" / f"{row['image_id']}.txt", num_classes=6
        )
        np.testing.assert_array_equal(ours[0], oracle[0])
        np.testing.assert_allclose(ours[1], oracle[1], atol=2e-6)
        assert (labels_dir / "images" / f"{row['image_id']}.png").is_file()


def test_skipped_tasks_and_a_changed_annotation(server, cycle):
    params = make_params(server.root, title="visionloop-it-skips", labels="labels-skips", skip=1.0)
    first = label.run(params, cycle=CYCLE)
    assert annotator.run(params, limit=2).skipped == 2
    collected = label.run(params, cycle=CYCLE)
    assert (collected.skipped, collected.collected, collected.labeled) == (2, 0, 0)

    sdk = client()
    task_id = next(r["task_id"] for r in read_ledger(ledger_path(params)).values() if r["status"] == "skipped")
    sdk.annotations.create(id=task_id, result=[], was_cancelled=False)  # a person comes back: no objects after all
    again = label.run(params, cycle=CYCLE)
    assert (again.collected, again.skipped, again.labeled) == (1, 0, 1)
    row = next(r for r in read_ledger(ledger_path(params)).values() if r["task_id"] == task_id)
    assert row["status"] == "labeled" and row["n_boxes"] == 0
    assert (params.base.paths.labels / CYCLE / "labels" / f"{row['image_id']}.txt").read_text() == ""
    assert first.imported == len(pq.read_table(label.manifest_path(params, CYCLE)))


def test_wrong_token_is_a_clear_error(server, cycle, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-token")
    with pytest.raises(labelstudio.LabelStudioAuthError, match=r"refused the token in LABEL_STUDIO_API_KEY"):
        label.run(cycle, cycle=CYCLE)


def test_server_down_is_a_clear_error(server, cycle, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(labelstudio.LabelStudioUnavailable, match=r"not reachable .*make labelstudio-up"):
        label.run(cycle, cycle=CYCLE)


def test_labelstudio_up_refuses_a_taken_port(server, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    up = run_make("labelstudio-up", f"LABEL_STUDIO_PORT={port}", f"LABEL_STUDIO_DATA={tmp_path / 'other'}", timeout=120)
    assert up.returncode != 0 and f"port {port} on 127.0.0.1 is taken" in up.stderr
    assert not (tmp_path / "other" / "server.pid").exists()
