"""``benchmarks/scale.py``: the scaling model; ``--quick`` predicts from a real moto_server on 1 and 2 Dask workers."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tasks.env import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import scale

pytestmark = pytest.mark.integration


def dask_row(workers: int, *, images: int = 1000, work: float = 100.0, fixed: float = 0.0, **seconds: float) -> Any:
    """A measured ``dask w=<workers>`` row: ``work`` seconds of reads + inference per worker."""
    parts = {"plan": 0.0, "log_write": 0.0, "model_open": 0.0, "read": work / 2, "inference": work / 2}
    return {
        "run": f"dask w={workers}",
        "kind": "dask",
        "images": images,
        "shards": 4 * workers,
        "seconds": parts | {"scheduling": fixed} | seconds,
    }


@pytest.mark.parametrize(
    ("runs", "images", "per_core"),
    [
        ([dask_row(1)], None, [10.0] * 5),  # no overhead: every worker adds a core's throughput
        ([dask_row(1, plan=10.0)], None, [9.09, 8.33, 7.14, 5.56, 3.85]),  # a serial plan caps it: 10 + 100/W s
        ([dask_row(1, fixed=2.0), dask_row(2, fixed=10.0)], None, [9.09, 8.33, 7.14, 5.56, 3.85]),  # the larger one
        ([dask_row(1, fixed=10.0)], 10_000, [9.90, 9.80, 9.62, 9.26, 8.62]),  # fixed: 10 + 1000/W s for 10x images
        ([dask_row(1, plan=10.0)], 10_000, [9.09, 8.33, 7.14, 5.56, 3.85]),  # the plan grows with the images
        ([dask_row(1, model_open=40.0)], None, [7.14, 5.56, 3.85, 2.38, 1.39]),  # 4 openings of 10 s per worker
    ],
    ids=["no-overhead", "serial-plan", "fixed-fan-out", "fixed-amortised", "serial-per-image", "per-shard-open"],
)
def test_the_scaling_model(runs, images, per_core):
    model = scale.scaling_model(runs, 10.0, shards_per_worker=4, images=images)
    assert [m["workers"] for m in model] == list(scale.MODEL_WORKERS)
    assert [m["shards"] for m in model] == [4 * w for w in scale.MODEL_WORKERS]
    assert [m["per_core"] for m in model] == pytest.approx(per_core, abs=0.051)
    assert [m["vs_single_per_core"] for m in model] == pytest.approx([p / 10 for p in per_core], abs=0.006)


def test_the_model_needs_the_one_worker_run():
    with pytest.raises(StopIteration):
        scale.scaling_model([dask_row(2)], 10.0, shards_per_worker=4)


@pytest.mark.slow  # a 1-epoch champion at the project's image size, then 4 runs (~4 min on 2 shared cores)
def test_quick_run_predicts_every_image_on_every_path(tmp_path):
    out = tmp_path / "scale.json"
    report = scale.main(["--quick", "--cache", str(tmp_path / "cache"), "--root", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = {row["run"]: row for row in report["rows"]}
    assert list(rows) == ["single t=2", "single t=1", "dask w=1", "dask w=2"]
    assert [rows[r]["shards"] for r in rows] == [1, 1, 2, 4]
    for row in rows.values():
        assert (row["images"], row["errors"]) == (400, 0), row["run"]
        s = row["seconds"]
        assert s["read"] > 0 and s["inference"] > 0 and s["plan"] > 0 and s["log_write"] > 0, row["run"]
        assert s["read"] + s["inference"] + s["model_open"] <= row["wall_s"], "the shards' own seconds fit the wall"
        assert 0 < sum(row["share"].values()) <= 1.05, row["share"]
    assert rows["dask w=1"]["seconds"]["model_open"] > 0, "each shard opens the model in its worker"
    assert rows["single t=1"]["seconds"]["model_open"] == 0, "the single process runs on the plan's session"
    assert set(report["per_core_ratio"]) == {"dask w=1 / single t=1", "dask w=2 / single t=2", "dask w=2 / single t=1"}
    assert isinstance(report["goal_met"], bool) and len(report["model"]) == len(scale.MODEL_WORKERS)
    assert report["image_size"] == list(scale.load_params(PROJECT_ROOT / "params.yaml").world.image_size)
    assert report["host"]["cores"] and "load_before" in report["host"]
    ready = tmp_path / "cache" / "ready.json"
    stamp = ready.stat().st_mtime_ns
    project = scale.load_params(PROJECT_ROOT / "params.yaml")
    assert scale.prepare_cache(tmp_path / "cache", project, distinct=40, fresh=False)["version"] == "1"
    assert ready.stat().st_mtime_ns == stamp, "a matching cache is reused, not rendered and trained again"
