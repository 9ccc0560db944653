"""The annotator simulator's files mode: the label stage's outbox answered into the inbox, no Label Studio server.

The real label stage (``label.backend: files``) writes the task JSON and collects the simulator's export; the
labels it writes must be the oracle's (no noise), each image answered once however often the simulator runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks import label
from tasks.config import Params
from tasks.contracts.label_tasks import read_export
from tasks.contracts.ledger import LABELED, SKIPPED, ledger_path, read_ledger
from tasks.contracts.yolo_labels import read_label_file
from tasks.sim import annotator
from tests.conftest import tiny_params_dict
from tests.integration.conftest import CYCLE, build_cycle

pytestmark = pytest.mark.integration


def files_params(root: Path, **noise: float) -> Params:
    data = tiny_params_dict(root, label={"backend": "files", "document_root": str(root), "min_labeled": 3})
    annotator_params = data["world"].get("annotator", {})
    data["world"]["annotator"] = {**annotator_params, "small_px": 0.0, "drop_small": 0.0, "jitter": 0.0, **noise}
    return Params.model_validate(data)


@pytest.fixture
def cycle(tmp_path: Path) -> Params:
    return build_cycle(files_params(tmp_path))


def test_outbox_is_answered_into_the_inbox_and_collected_as_the_oracle(cycle):
    n_images = len(pq.read_table(label.manifest_path(cycle, CYCLE)))
    first = label.run(cycle, cycle=CYCLE)
    assert first.waiting and (first.imported, first.labeled) == (n_images, 0)

    answered = annotator.run(cycle)  # dispatches to the files mode on label.backend
    assert (answered.project_id, answered.answered, answered.skipped) == (None, n_images, 0)
    inbox = cycle.base.paths.labels / "inbox"
    exports = sorted(inbox.glob("*.json"))
    assert len(exports) == 1 and len(read_export(exports[0])) == n_images

    second = label.run(cycle, cycle=CYCLE)
    assert (second.labeled, second.pending, second.waiting) == (n_images, 0, False)
    for row in read_ledger(ledger_path(cycle)).values():
        assert row["status"] == LABELED and row["task_id"] == annotator.export_id(row["image_sha256"])
        oracle = cycle.base.paths.oracle / row["batch"] / "labels" / f"{row['image_id']}.txt"
        got = cycle.base.paths.labels / CYCLE / "labels" / f"{row['image_id']}.txt"
        want_cls, want_boxes = read_label_file(oracle, num_classes=6)
        got_cls, got_boxes = read_label_file(got, num_classes=6)
        assert np.array_equal(got_cls, want_cls)
        assert np.allclose(got_boxes, want_boxes, atol=1e-4)


@pytest.mark.parametrize(
    ("limit", "first", "second"),
    [(None, "all", 0), (2, 2, 2), (0, 0, 2)],
    ids=["all-at-once", "two-at-a-time", "none-then-two"],
)
def test_each_task_is_answered_once(cycle, limit, first, second):
    n_images = len(pq.read_table(label.manifest_path(cycle, CYCLE)))
    label.run(cycle, cycle=CYCLE)
    runs = [annotator.run_files(cycle, limit=limit), annotator.run_files(cycle, limit=2)]
    assert [r.answered for r in runs] == [n_images if first == "all" else first, second]
    ids = [i for r in runs for i in r.task_ids]
    assert len(ids) == len(set(ids)), "an image answered twice"
    inbox = cycle.base.paths.labels / "inbox"
    assert len(list(inbox.glob("*.json"))) == sum(1 for r in runs if r.answered), "an empty export was written"


def test_nothing_in_the_outbox_answers_nothing(tmp_path):
    params = files_params(tmp_path)
    result = annotator.run_files(params)
    assert (result.answered, result.task_ids) == (0, [])
    assert not (params.base.paths.labels / "inbox").exists()


def test_skipped_tasks_are_collected_as_skipped(tmp_path):
    params = build_cycle(files_params(tmp_path, skip=1.0))
    label.run(params, cycle=CYCLE)
    result = annotator.run_files(params)
    assert result.skipped == result.answered > 0 and result.boxes == 0
    after = label.run(params, cycle=CYCLE)
    assert (after.labeled, after.skipped) == (0, result.answered)
    assert {r["status"] for r in read_ledger(ledger_path(params)).values()} == {SKIPPED}
