"""``benchmarks/cycle.py``: the work/bookkeeping split of a cycle, and ``--quick`` on a real Label Studio + Prefect."""

from __future__ import annotations

import json
import sys

import pytest

from tasks.env import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import cycle as bench

pytestmark = pytest.mark.integration

T = bench.TaskTime


@pytest.mark.parametrize(
    ("tasks", "runs", "work", "kinds", "ok"),
    [
        pytest.param([], [], 0.0, {}, False, id="empty"),
        pytest.param([T("train", 90.0, 90.0)], [95.0], 90.0, {"prefect": 5.0}, True, id="all-work"),
        pytest.param(
            [T("train", 60.0, 50.0)],
            [70.0],
            50.0,
            {"prefect": 20.0},  # 10 s around the stage in its task, 10 s in the flow outside any task
            False,
            id="prefect-heavy-fails",
        ),
        pytest.param(
            [T("train", 100.0, 98.0, {"mlflow": 3.0})],
            [100.0],
            95.0,
            {"mlflow": 3.0, "prefect": 2.0},
            True,
            id="mlflow-inside-train",
        ),
        pytest.param(
            [T("evaluate", 10.0, None, {"mlflow": 1.0}), T("dvc_record", 4.0), T("label", 3.0), T("registry", 2.0)],
            [20.0],
            9.0,
            {"dvc": 4.0, "labelstudio": 3.0, "mlflow": 3.0, "prefect": 1.0},
            False,
            id="no-stage-seconds-and-bookkeeping-tasks",
        ),
        pytest.param(
            [T("train", 90.0, 90.0), T("dvc_record", 10.0)], [100.0], 90.0, {"dvc": 10.0}, True, id="at-the-goal"
        ),
        pytest.param(
            [T("mystery", 5.0), T("gate", 95.0, 95.0)], [100.0], 95.0, {"other": 5.0}, True, id="unknown-task"
        ),
        pytest.param(
            [T("label", 1.0), T("train", 40.0, 40.0), T("label", 1.0)],
            [5.0, 45.0],
            40.0,
            {"labelstudio": 2.0, "prefect": 8.0},
            False,
            id="two-runs-label-twice",
        ),
    ],
)
def test_the_bookkeeping_share(tasks, runs, work, kinds, ok):
    got = bench.split(tasks, runs)
    assert got["work_s"] == pytest.approx(work)
    assert got["by_kind"] == pytest.approx(kinds)
    assert got["work_s"] + got["bookkeeping_s"] == pytest.approx(sum(runs)), "every second is work or bookkeeping"
    assert got["ok"] is ok
    assert sum(r["share"] for r in got["stages"]) == pytest.approx(1.0 if runs else 0.0)


def test_a_stage_seen_twice_is_one_row():
    got = bench.split([T("label", 1.0), T("label", 2.0)], [4.0])
    rows = {r["stage"]: r for r in got["stages"]}
    assert (rows["label"]["runs"], rows["label"]["wall_s"]) == (2, 3.0)
    assert rows["(flow)"]["bookkeeping"] == {"prefect": 1.0}


@pytest.mark.parametrize(
    ("share", "rerun", "repro", "why", "missed"),
    [
        (0.05, 3.0, 4.0, "", []),
        (0.11, 3.0, 4.0, "", ["bookkeeping share"]),
        (0.05, 16.0, 4.0, "", ["re-run of a closed cycle (s)"]),
        (0.05, 3.0, None, "dvc status is not clean: train changed", ["no-op dvc repro (s)"]),
        (0.10, 15.0, 15.0, "", []),
    ],
    ids=["all-met", "bookkeeping-over", "slow-rerun", "repro-not-a-no-op", "at-the-bounds"],
)
def test_the_goals(share, rerun, repro, why, missed):
    got = bench.verdicts(share, rerun, repro, repro_why=why)
    assert [v["goal"] for v in got if not v["ok"]] == missed
    assert all(v["why"] == why for v in got if v["goal"].startswith("no-op") and why)
    assert all(v["why"] == "" for v in got if v["value"] is not None), "a measured value carries no 'not measured'"


@pytest.mark.slow  # Label Studio, a Prefect API, a bootstrap and one cycle of the real loop: ~3-5 min on 2 cores
def test_quick_run_times_every_stage_of_one_cycle(tmp_path):
    out = tmp_path / "cycle.json"
    report = bench.main(["--quick", "--root", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["outcome"] in {"promote", "reject"}, report["outcome"]
    stages = {row["stage"] for row in report["split"]["stages"]}
    for stage in ("predict", "sample", "label", "validate", "merge", "train", "evaluate", "export", "gate"):
        assert stage in stages, f"{stage} is not among the task runs the Prefect API returned: {sorted(stages)}"
    assert {"registry", "promote", "cycle", "dvc_record"} <= stages
    split = report["split"]
    assert split["work_s"] + split["bookkeeping_s"] == pytest.approx(split["cycle_s"], rel=1e-6)
    assert split["work_s"] > 0 and 0 < split["share"] < 1
    assert report["human_s"] > 0 and report["answered"] > 0, "the simulator answered through Label Studio"
    assert report["train_inside"]["batches"] > 0 and report["train_inside"]["vals"] >= 1
    assert report["dvc"]["repro_s"] is not None, report["dvc"]["why"]
    assert report["rerun_s"] > 0
    assert {v["goal"] for v in report["verdicts"]} == {
        "bookkeeping share",
        "re-run of a closed cycle (s)",
        "no-op dvc repro (s)",
    }
    assert report["host"]["isa"] and report["host"]["cores"]
