"""reports/cycles.csv: one row per cycle, replaced when a cycle reports again."""

from __future__ import annotations

from tasks.contracts.cycle_history import COLUMNS, read_history, record_cycle


def summary(cycle: str, outcome: str, candidate: float | None) -> dict:
    return {
        "cycle": cycle,
        "outcome": outcome,
        "decision": "promote" if candidate else None,
        "labeled": 40,
        "champion_map50_95": {"golden": 0.5, "production": 0.3},
        "candidate_map50_95": {"golden": candidate, "production": 0.4} if candidate else {},
    }


def test_rows_are_added_in_order_and_a_repeated_cycle_replaces_its_row(tmp_path):
    path = tmp_path / "cycles.csv"
    record_cycle(path, summary("c1", "waiting", None))
    record_cycle(path, summary("c2", "promoted", 0.6))
    record_cycle(path, summary("c1", "rejected", 0.45))
    rows = read_history(path)
    assert [r["cycle"] for r in rows] == ["c1", "c2"]
    assert rows[0]["outcome"] == "rejected" and rows[0]["candidate_golden"] == "0.45"
    assert rows[1]["champion_production"] == "0.3" and rows[1]["quarantined"] == ""
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert not list(tmp_path.glob(".*"))  # written atomically: no temp file left behind
