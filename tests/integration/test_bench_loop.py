"""``benchmarks/loop.py``: the label-efficiency maths (tables), the resume, and ``--quick`` end to end."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import pytest
import yaml

from tasks.env import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import loop

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("labels", "maps", "target", "expected"),
    [
        ([0, 30, 60], [0.2, 0.3, 0.4], 0.35, 45.0),  # between cycles 1 and 2: linear
        ([0, 30, 60], [0.2, 0.3, 0.4], 0.3, 30.0),  # exactly at a point
        ([0, 30, 60], [0.2, 0.3, 0.4], 0.2, 0.0),  # v1 reaches it already
        ([0, 30, 60], [0.2, 0.3, 0.4], 0.41, None),  # never
        ([0, 30, 60], [0.2, 0.5, 0.1], 0.35, 15.0),  # the first crossing counts, not the last point
        ([0], [0.2], 0.3, None),  # v1 only
        ([], [], 0.3, None),  # empty
    ],
    ids=["interpolated", "at-a-point", "at-v1", "never", "first-crossing", "v1-only", "empty"],
)
def test_labels_to_reach(labels, maps, target, expected):
    assert loop.labels_to_reach(labels, maps, target) == (None if expected is None else pytest.approx(expected))


RANDOM = ([0, 30, 60, 90], [0.20, 0.25, 0.28, 0.30])


@pytest.mark.parametrize(
    ("mix", "random", "ratio", "why"),
    [
        (([0, 30, 60, 90], [0.20, 0.26, 0.32, 0.35]), RANDOM, (30 + 30 * 4 / 6) / 90, "labels vs random's 90"),
        (([0, 30, 60, 90], [0.20, 0.30, 0.31, 0.32]), RANDOM, 30 / 90, "labels vs random's 90"),
        (([0, 30, 60, 90], [0.20, 0.22, 0.24, 0.29]), RANDOM, None, "never reached"),
        (([0, 30, 60], [0.20, 0.30, 0.40]), ([0, 30, 60], [0.20, 0.19, 0.18]), None, "not above v1"),
        (([0, 30], [0.20, 0.30]), ([0, 0], [0.20, 0.25]), None, "no labels"),
        (([0, 30], [0.20, 0.30]), ([0], [0.20]), None, "no labels"),
    ],
    ids=["fewer-labels", "at-a-cycle", "never-reached", "random-no-gain", "random-no-labels", "random-v1-only"],
)
def test_label_ratio(mix, random, ratio, why):
    got, reason = loop.label_ratio(mix, random)
    assert got == (None if ratio is None else pytest.approx(ratio))
    assert why in reason


@pytest.mark.parametrize(
    ("now", "v1_drifted", "v1_golden", "expected"),
    [
        (0.30, 0.20, 0.40, 0.5),
        (0.40, 0.20, 0.40, 1.0),
        (0.44, 0.20, 0.40, 1.2),  # beyond golden: more than recovered
        (0.15, 0.20, 0.40, -0.25),  # worse than v1
        (0.30, 0.40, 0.40, None),  # zero drop: nothing to recover
        (0.30, 0.45, 0.40, None),  # drifted above golden
    ],
    ids=["half", "all", "overshoot", "worse", "zero-drop", "negative-drop"],
)
def test_recovery(now, v1_drifted, v1_golden, expected):
    got = loop.recovery(now, v1_drifted=v1_drifted, v1_golden=v1_golden)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("golden", "expected"),
    [([0.50, 0.49, 0.495], [1.0, -0.5]), ([0.5], []), ([], [])],
    ids=["loss-then-gain", "v1-only", "empty"],
)
def test_golden_losses(golden, expected):
    assert loop.golden_losses(golden) == pytest.approx(expected)


def strategies() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["sample"]["strategies"]


@pytest.mark.parametrize(
    ("policy", "on"),
    [
        ("random", {"random"}),
        ("uncertainty", {"low_confidence", "entropy", "margin"}),
        ("default", {n for n, c in strategies().items() if c and c["budget"]}),
        ("mix+drift", {n for n, c in strategies().items() if c and c["budget"]}),
    ],
    ids=["random", "uncertainty", "default", "mix+drift"],
)
def test_policy_strategies(policy, on):
    got = loop.policy_strategies(policy, strategies())
    assert {n for n, c in got.items() if c and c["budget"]} == on
    if policy == "random":
        assert got["random"]["rate"] == 1.0
    if policy == "default":
        assert got == strategies()


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        loop.policy_strategies("greedy", strategies())


@pytest.mark.parametrize(
    ("done", "cycles", "pending"),
    [([], 3, [1, 2, 3]), ([1, 2], 3, [3]), ([1, 2, 3], 3, []), ([2], 3, [1, 3]), ([1], 1, [])],
    ids=["none", "two-done", "all-done", "a-gap", "quick"],
)
def test_pending_cycles(done, cycles, pending):
    results = {"cycles": [{"policy": "random", "seed": 7, "cycle": k} for k in done]}
    results["cycles"].append({"policy": "default", "seed": 7, "cycle": 1})  # another policy's record
    results["cycles"].append({"policy": "random", "seed": 8, "cycle": 1})  # another seed's
    assert loop.pending_cycles(results, "random", 7, cycles) == pending


def test_budget_uses_the_measured_cycles_once_there_are_some():
    model = loop.budget(loop.FULL, policies=4, seeds=2)
    assert model["s_per_cycle_from"] == "the cost model"
    assert model["total_s"] == pytest.approx(model["s_per_cycle"] * 4 * 4 * 2 + model["s_per_bootstrap"] * 2, abs=5)
    measured = loop.budget(loop.FULL, policies=4, seeds=2, measured=[100.0, 300.0, 200.0])
    assert measured["s_per_cycle"] == 200.0 and "3 measured" in measured["s_per_cycle_from"]


def scores(drifted: float, golden: float) -> dict[str, Any]:
    return {name: {"map50_95": v, "map50": v, "low": v - 0.01, "high": v + 0.01} for name, v in
            (("drifted", drifted), ("golden", golden))}  # fmt: skip


def fake_results(seed: int = 7, cycles: int = 1) -> dict[str, Any]:
    """v1 loses 20 pt on drifted; random wins back 0.05 a cycle, the default mix 0.10."""
    rows = []
    for policy, step in (("random", 0.05), ("default", 0.10)):
        for k in range(1, cycles + 1):
            champion = scores(0.20 + step * k, 0.40 - 0.005 * k)
            rows.append(
                {"policy": policy, "seed": seed, "cycle": k, "labels": 6 * k, "outcome": "promote", "wall_s": 10.0}
                | {"candidate": champion, "champion": champion}
            )
    return {"v1": {str(seed): scores(0.20, 0.40) | {"wall_s": 5.0}}, "cycles": rows}


def test_summary_of_two_policies():
    summary = loop.summarise(fake_results(cycles=3), policies=["random", "default"], seeds=[7])
    random, default = summary["policies"]["random"]["7"], summary["policies"]["default"]["7"]
    assert random["recovery"] == pytest.approx([0.25, 0.5, 0.75]) and default["recovery"] == pytest.approx(
        [0.5, 1, 1.5]
    )
    assert default["golden_loss_pt"] == pytest.approx([0.5, 0.5, 0.5])
    assert summary["ratio"]["per_seed"]["7"]["ratio"] == pytest.approx(9 / 18)  # 0.35 at 9 of random's 18 labels
    goals = summary["goals"]
    assert goals["ratio"]["met"] is True and goals["golden_loss_pt"]["met"] is True
    assert goals["recovery_after_1"]["met"] is False  # random: 25 % after one cycle
    assert goals["recovery_after_3"]["min"] == pytest.approx(0.75) and goals["recovery_after_3"]["met"] is False


def test_a_rerun_runs_no_finished_cycle(tmp_path):
    """Every (policy, seed, cycle) is recorded: a re-run starts no worker and reports from the records."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "settings.json").write_text(json.dumps(asdict(loop.QUICK)))
    (root / "results.json").write_text(json.dumps(fake_results()))
    out = tmp_path / "loop.json"
    report = loop.run(root, loop.QUICK, policies=["random", "default"], seeds=[7], out=out)
    assert not list((root / "logs").iterdir()), "a worker was started"
    assert not (root / "active").exists() and not (root / "seed-7").exists()
    assert [(r["policy"], r["cycle"]) for r in report["cycles"]] == [("random", 1), ("default", 1)]
    assert report["budget"]["s_per_cycle"] == 10.0 and report["ratio"]["n"] == 1
    assert out.with_suffix(".png").is_file()


def test_a_run_folder_with_other_settings_is_refused(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps(asdict(loop.QUICK) | {"budget": 99}))
    with pytest.raises(SystemExit, match="other settings \\(budget\\)"):
        loop.check_settings(tmp_path, loop.QUICK)


@pytest.mark.slow  # a bootstrap and two 1-epoch cycles at 64 px through the real flows (5-11 min on 2 busy cores)
def test_quick_run_then_a_rerun_that_continues(tmp_path):
    root, out = tmp_path / "run", tmp_path / "loop.json"
    report = loop.main(["--quick", "--root", str(root), "--out", str(out)])
    assert report is not None and json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [(r["policy"], r["cycle"], r["outcome"]) for r in report["cycles"]] == [
        ("random", 1, "promote"),
        ("default", 1, "promote"),
    ]
    for row in report["cycles"]:
        assert row["labels"] == row["selected"] == loop.QUICK.budget  # the simulator answered every task
        assert row["champion"]["drifted"]["images"] == loop.QUICK.test_images
    assert set(report["policies"]) == {"random", "default"} and out.with_suffix(".png").is_file()
    logs = {p.name: p.stat().st_size for p in (root / "logs").iterdir()}
    again = loop.main(["--quick", "--root", str(root), "--out", str(out)])
    assert again is not None and again["cycles"] == report["cycles"]
    assert {p.name: p.stat().st_size for p in (root / "logs").iterdir()} == logs, "a finished cycle ran again"
