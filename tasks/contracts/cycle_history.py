"""``reports/cycles.csv``: one row per cycle, the loop's metrics over time (``dvc plots`` draws it).

Written by the cycle stage after each cycle's report; a cycle reported again replaces its row, so the file
always holds each cycle once, in the order the cycles first reported.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.io import write_bytes_atomic

HISTORY = "cycles.csv"
COLUMNS = (
    "cycle",
    "outcome",
    "decision",
    "labeled",
    "quarantined",
    "merged_images",
    "champion_golden",
    "candidate_golden",
    "champion_production",
    "candidate_production",
)


def row_of(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The history row of one cycle's summary (``tasks.cycle.summarise``); a missing number is left empty."""
    champion, candidate = summary.get("champion_map50_95") or {}, summary.get("candidate_map50_95") or {}
    values = {
        "cycle": summary["cycle"],
        "outcome": summary.get("outcome"),
        "decision": summary.get("decision"),
        "labeled": summary.get("labeled"),
        "quarantined": summary.get("quarantined"),
        "merged_images": summary.get("merged_images"),
        "champion_golden": champion.get("golden"),
        "candidate_golden": candidate.get("golden"),
        "champion_production": champion.get("production"),
        "candidate_production": candidate.get("production"),
    }
    return {key: "" if value is None else value for key, value in values.items()}


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of ``path`` (none when it does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def record_cycle(path: Path, summary: Mapping[str, Any]) -> Path:
    """Add (or replace) the cycle's row in the history and rewrite it atomically."""
    row = {key: str(value) for key, value in row_of(summary).items()}
    rows = read_history(path)
    index = next((i for i, old in enumerate(rows) if old.get("cycle") == row["cycle"]), None)
    if index is None:
        rows.append(row)
    else:
        rows[index] = row
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes_atomic(path, buffer.getvalue().encode())
