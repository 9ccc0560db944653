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


def round_rows(**per_core: float) -> dict[str, Any]:
    """One round's rows: ``per_core`` and images per CPU second (the same value) by run name (``dask_w1``...)."""
    return {
        k.replace("_", " ").replace("w", "w=").replace("t", "t="): {"per_core": v, "images_per_cpu_s": v}
        for k, v in per_core.items()
    }


ALL = ("dask_w1", "dask_w2", "single_t1", "single_t2")


@pytest.mark.parametrize(
    ("rounds", "pooled", "medians", "met"),
    [
        ([dict.fromkeys(ALL, 10.0)] * 3, dict.fromkeys(ALL, 10.0), [1.0, 1.0, 1.0], True),
        # a noisy round hits both sides of its pair alike: the paired ratio stays 1
        (
            [dict.fromkeys(ALL, 10.0), dict.fromkeys(ALL, 6.0), dict.fromkeys(ALL, 10.0)],
            dict.fromkeys(ALL, 8.0),
            [1.0, 1.0, 1.0],
            True,
        ),
        # one bad round of three: the median holds, the pooled ratio (0.933) too
        (
            [dict.fromkeys(ALL, 10.0), dict(dict.fromkeys(ALL, 10.0), dask_w1=8.0), dict.fromkeys(ALL, 10.0)],
            dict(dict.fromkeys(ALL, 10.0), dask_w1=9.33),
            [1.0, 1.0, 1.0],
            True,
        ),
        # the failing verdict: dask w=2 at 0.85 of single t=2 in every round
        (
            [dict(dict.fromkeys(ALL, 10.0), dask_w2=8.5)] * 3,
            dict(dict.fromkeys(ALL, 10.0), dask_w2=8.5),
            [1.0, 0.85, 0.85],
            False,
        ),
        # medians pass but the pooled ratio (the fixed costs added once) does not: not met
        ([dict.fromkeys(ALL, 10.0)] * 3, dict(dict.fromkeys(ALL, 10.0), dask_w1=8.9), [1.0, 1.0, 1.0], False),
        # 2 rounds: the median is the mean of the two
        (
            [dict(dict.fromkeys(ALL, 10.0), dask_w1=8.0), dict.fromkeys(ALL, 10.0)],
            dict.fromkeys(ALL, 10.0),
            [0.9, 1.0, 1.0],
            True,
        ),
    ],
    ids=["equal", "load-step-paired", "one-bad-round", "fails-w2", "fails-pooled", "two-rounds-median"],
)
def test_paired_ratios_and_the_verdict(rounds, pooled, medians, met):
    per_round = [round_rows(**r) for r in rounds]
    paired = scale.paired_ratios(per_round, round_rows(**pooled))
    assert list(paired) == ["dask w=1 / single t=1", "dask w=2 / single t=2", "dask w=2 / single t=1"]
    assert [p["median"] for p in paired.values()] == pytest.approx(medians, abs=0.001)
    assert all(len(p["rounds"]) == len(rounds) for p in paired.values())
    assert scale.goal_verdict(paired) is met
    assert scale.paired_ratios(per_round, round_rows(**pooled), "images_per_cpu_s") == paired


def test_no_verdict_without_a_judged_pair():
    rows = round_rows(dask_w1=10.0, single_t1=10.0)
    paired = scale.paired_ratios([rows], rows)
    assert list(paired) == ["dask w=1 / single t=1"] and scale.goal_verdict(paired) is None


@pytest.mark.parametrize(
    ("batches", "rounds", "sizes"),
    [(5, 2, [2, 3]), (100, 5, [20] * 5), (7, 7, [1] * 7), (3, 1, [3])],
    ids=["uneven", "even", "one-batch-each", "one-round"],
)
def test_round_groups(batches, rounds, sizes):
    names = scale.batch_names(batches * 10, 10)
    groups = scale.round_groups(names, rounds)
    assert [len(g) for g in groups] == sizes and [b for g in groups for b in g] == names


@pytest.mark.parametrize("rounds", [0, 6], ids=["zero", "more-than-batches"])
def test_round_groups_refuses(rounds):
    with pytest.raises(ValueError, match="--rounds"):
        scale.round_groups(scale.batch_names(50, 10), rounds)


def test_summed_adds_the_cluster_start_once():
    def row(wall: float, sched: float) -> dict[str, Any]:
        seconds = dict.fromkeys(
            ("plan", "listing_alone", "model_open", "read", "decode_alone_est", "inference", "log_write"), 1.0
        )
        return {
            "run": "dask w=1",
            "kind": "dask",
            "processes": 1,
            "threads": 1,
            "cores": 1,
            "shards": 4,
            "images": 100,
            "errors": 0,
            "wall_s": wall,
            "shard_wall_s": wall - sched,
            "load": (1.0, 1.0, 1.0),
            "seconds": seconds | {"cluster_start": 0.0, "scheduling": sched},
            "cpu_s": {"moto": 1.0, "machine": 2.0, "this_process": 1.0, "tree": 5.0},
        }

    total = scale.summed([row(10.0, 1.0), row(10.0, 1.0)], cluster_start_s=5.0)
    assert (total["images"], total["shards"], total["wall_s"], total["rounds"]) == (200, 8, 25.0, 2)
    assert total["seconds"]["cluster_start"] == 5.0 and total["seconds"]["scheduling"] == 7.0
    assert total["per_core"] == 8.0 and total["images_per_cpu_s"] == 20.0


@pytest.mark.slow  # a 1-epoch champion at the project's image size, then 2 rounds of 4 runs (~5 min on 2 cores)
def test_quick_run_predicts_every_image_on_every_path(tmp_path):
    out = tmp_path / "scale.json"
    report = scale.main(["--quick", "--cache", str(tmp_path / "cache"), "--root", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = {row["run"]: row for row in report["rows"]}
    assert list(rows) == ["single t=2", "single t=1", "dask w=1", "dask w=2"]
    assert [rows[r]["shards"] for r in rows] == [2, 2, 4, 8], "2 rounds, each with its shards"
    assert [len(r["batches"]) for r in report["rounds"]] == [2, 3], "5 batches of 80 in 2 rounds"
    assert [r["order"] for r in report["rounds"]] == [list(rows), list(rows)[1:] + list(rows)[:1]], "rotated"
    for r in report["rounds"]:
        assert {row["images"] for row in r["rows"]} == {80 * len(r["batches"])}, r["round"]
    assert set(report["cluster_start_s"]) == {"dask w=1", "dask w=2"}
    for name in ("dask w=1", "dask w=2"):  # started once, added once
        assert rows[name]["seconds"]["cluster_start"] == pytest.approx(report["cluster_start_s"][name], abs=0.02)
    for row in rows.values():
        assert (row["images"], row["errors"]) == (400, 0), row["run"]
        s = row["seconds"]
        assert s["read"] > 0 and s["inference"] > 0 and s["plan"] > 0 and s["log_write"] > 0, row["run"]
        assert s["read"] + s["inference"] + s["model_open"] <= row["wall_s"], "the shards' own seconds fit the wall"
        assert 0 < sum(row["share"].values()) <= 1.05, row["share"]
    assert rows["dask w=1"]["seconds"]["model_open"] > 0, "each shard opens the model in its worker"
    assert rows["single t=1"]["seconds"]["model_open"] == 0, "the single process runs on the plan's session"
    assert set(report["per_core_ratio"]) == {"dask w=1 / single t=1", "dask w=2 / single t=2", "dask w=2 / single t=1"}
    for view in ("per_core", "images_per_cpu_s"):
        for name, paired in report["paired"][view].items():
            assert len(paired["rounds"]) == 2 and paired["median"] > 0 and paired["pooled"] > 0, (view, name)
    assert all(row["cpu_s"]["tree"] > 0 for row in rows.values()), "the process tree's CPU seconds are counted"
    assert isinstance(report["goal_met"], bool) and len(report["model"]) == len(scale.MODEL_WORKERS)
    assert report["image_size"] == list(scale.load_params(PROJECT_ROOT / "params.yaml").world.image_size)
    assert report["host"]["cores"] and "load_before" in report["host"]
    ready = tmp_path / "cache" / "ready.json"
    stamp = ready.stat().st_mtime_ns
    project = scale.load_params(PROJECT_ROOT / "params.yaml")
    assert scale.prepare_cache(tmp_path / "cache", project, distinct=40, fresh=False)["version"] == "1"
    assert ready.stat().st_mtime_ns == stamp, "a matching cache is reused, not rendered and trained again"
