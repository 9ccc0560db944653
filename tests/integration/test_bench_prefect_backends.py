"""``benchmarks/prefect_backends.py``: the stall rule, and ``--quick`` on a real SQLite and PostgreSQL server."""

from __future__ import annotations

import sys

import pytest

from tasks.env import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import prefect_backends

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("size", "recorded", "server_s", "expected"),
    [
        (100, 100, 2.0, []),
        (100, 100, 5.0, []),  # 50 ms/task: exactly 5x the 10 ms baseline is still fine
        (100, 100, 5.1, ["51 ms/task > 5x the first burst's"]),
        (100, 99, 2.0, ["99/100 recorded after 120 s"]),
        (100, 0, 120.0, ["0/100 recorded after 120 s", "1200 ms/task > 5x the first burst's"]),
    ],
    ids=["fast", "at-the-limit", "slower-than-5x", "one-missing", "nothing-recorded"],
)
def test_a_burst_stalls_when_runs_are_missing_or_too_slow(size, recorded, server_s, expected):
    reasons = prefect_backends.stall_reasons(
        size, recorded=recorded, server_s=server_s, first_per_task=0.01, timeout=120, stall_factor=5
    )
    assert reasons == expected


@pytest.mark.slow  # two servers (one on a fresh PostgreSQL cluster) and four flows: 45-70 s
def test_quick_run_measures_both_backends_the_same_way(tmp_path):
    report = prefect_backends.main(["--quick", "--root", str(tmp_path), "--out", str(tmp_path / "p.json")])
    assert report is not None and [r["backend"] for r in report["results"]] == ["sqlite", "postgresql"]
    for result in report["results"]:
        assert [b["tasks"] for b in result["bursts"]] == [20, 40]
        assert all(b["recorded"] == b["tasks"] and b["runs_per_s"] > 0 for b in result["bursts"]), result
    assert set(report["summary"]) == {"sqlite", "postgresql"} and "load_before" in report["host"]


def burst(tasks: int, server_s: float, *, stalled: bool = False) -> dict:
    row = {"tasks": tasks, "flow_s": 1.0, "client_s": 0.5, "server_s": server_s, "recorded": tasks, "warnings": 1}
    return row | ({"stalled": True, "error": "slow"} if stalled else {"stalled": False})


@pytest.mark.parametrize(
    ("per_client", "expected"),
    [
        ([], []),
        ([[burst(50, 2.0)]], [(50, 2.0, 25.0, False)]),
        ([[burst(50, 2.0)], [burst(50, 4.0)]], [(100, 4.0, 25.0, False)]),
        (
            [[burst(50, 2.0), burst(100, 4.0)], [burst(50, 2.0, stalled=True)]],
            [(100, 2.0, 50.0, True), (100, 4.0, 25.0, True)],
        ),
    ],
    ids=["no-clients", "one-client", "two-clients-slowest-counts", "a-client-stalled"],
)
def test_clients_bursts_combine_into_one_row_per_burst(per_client, expected):
    rows = prefect_backends.combine(per_client)
    assert [(r["tasks"], r["server_s"], r["runs_per_s"], r["stalled"]) for r in rows] == expected
    if len(per_client) == 2 and len(rows) == 2 and rows[1]["stalled"]:
        assert rows[1]["error"] == "1 of 2 clients stopped at an earlier stall"
