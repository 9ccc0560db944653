"""``train.yolo.val_every`` and ``cache_ram`` in a real Ultralytics training on the tiny world.

The val-set pass runs after every k-th epoch and the last one only; the epochs without one log no ``val/`` metrics
(no stale or zero numbers in MLflow and the epoch table), and the checkpoint is still validated at the end.
"""

from __future__ import annotations

import csv

import pytest

from tasks import train, world
from tasks.config import Params
from tests.conftest import tiny_params_dict

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~30-60 s: a world and 3 epochs at 64 px


@pytest.fixture
def val_passes():
    """Ultralytics validations run while the test trains (its callbacks, counted)."""
    from ultralytics.utils.callbacks.base import default_callbacks

    passes: list[int] = []

    def count(_validator: object) -> None:
        passes.append(1)

    default_callbacks["on_val_end"].append(count)
    yield passes
    default_callbacks["on_val_end"].remove(count)


@pytest.mark.parametrize(
    ("every", "cache_ram", "validated", "passes"),
    [
        pytest.param(2, True, [2, 3], 3, id="every-2nd-and-the-last-ram"),
        pytest.param(1, False, [1, 2, 3], 4, id="every-epoch-from-disk"),
    ],
)
def test_validation_runs_after_every_kth_epoch_and_the_last(tmp_path, val_passes, every, cache_ram, validated, passes):
    data = tiny_params_dict(tmp_path)
    data["train"].update(epochs=3)
    data["train"]["yolo"].update(val_every=every, cache_ram=cache_ram)
    params = Params.model_validate(data)
    world.run(params)
    result = train.run(params)
    with (params.base.paths.reports / train.EPOCHS_TABLE).open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["epoch"]) for r in rows if r["val/mAP50-95"] != ""] == validated
    assert all(r["train/box_loss"] != "" for r in rows), "losses are logged every epoch"
    assert len(val_passes) == passes, "the validated epochs + Ultralytics' final validation of best.pt"
    assert "val/mAP50-95" in result.final_metrics, "the checkpoint is validated at the end"
