"""Publish a written cycle report to a Prefect server the way the loop flow does, in a flow of the loop's name.

``python -m tests.browser.publish_cycle <cycle folder>`` (``PREFECT_API_URL`` names the server): one flow run named
``continuous_learning`` that calls the loop's own ``_publish`` on ``<cycle folder>/report.json``; prints the flow
run's id and name as JSON. Running the whole loop for one markdown artifact would cost minutes; the key scheme and
the markdown are the loop's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.continuous_learning import _publish
from tasks.contracts.reports.cycle import CycleReport


@flow(name="continuous_learning")
def publish(folder: str) -> dict[str, Any]:
    data = json.loads((Path(folder) / "report.json").read_text())
    fields = {f.name for f in dataclasses.fields(CycleReport)}
    _publish(CycleReport(**{k: v for k, v in data.items() if k in fields}))
    return {"id": str(flow_run.id), "name": str(flow_run.name)}


if __name__ == "__main__":
    print(json.dumps(publish(sys.argv[1])))
