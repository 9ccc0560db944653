"""The air-gapped labeling backend: task JSON to an outbox folder, Label Studio JSON exports from an inbox folder.

A person imports the outbox files into any Label Studio by hand, annotates, and exports the project as JSON into
the inbox; the label stage reads every export there on each run. Implements
:class:`tasks.contracts.label_tasks.LabelBackend` (``label.backend: files``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.contracts.label_tasks import TaskRef, read_export
from tasks.contracts.ledger import LedgerRow
from tasks.io import write_json_atomic

log = logging.getLogger(__name__)


def exchange_folders(params: Params) -> tuple[Path, Path]:
    """``(outbox, inbox)`` of the files backend: ``label.outbox``/``label.inbox``, else ``<base.paths.labels>/outbox``
    and ``/inbox`` (the label stage and the annotator simulator's files mode use the same folders)."""
    labels = params.base.paths.labels
    return params.label.outbox or labels / "outbox", params.label.inbox or labels / "inbox"


class FilesBackend:
    """Air-gapped exchange: task JSON (with predictions) to the outbox, Label Studio JSON exports from the inbox."""

    name = "files"
    project_id: int | None = None

    def __init__(self, outbox: Path, inbox: Path, cycle: str) -> None:
        """Use ``outbox`` for new tasks and read every ``*.json`` export found in ``inbox``."""
        self.outbox, self.inbox, self.cycle = Path(outbox), Path(inbox), cycle

    def submit(self, tasks: list[dict[str, Any]], *, folders: set[Path]) -> tuple[dict[str, TaskRef], int]:
        """Write ``tasks`` to ``<outbox>/<cycle>_<UTC time>.json`` (atomically) for a person to import by hand."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = write_json_atomic(self.outbox / f"{self.cycle}_{stamp}.json", tasks)
        log.info(
            "label outbox: wrote %d tasks to %s (import them in Label Studio, export JSON to %s)",
            len(tasks),
            path,
            self.inbox,
        )
        return {t["data"]["image_sha256"]: TaskRef(None, None) for t in tasks}, len(tasks)

    def fetch(self, rows: Sequence[LedgerRow]) -> list[dict[str, Any]]:
        """Merge the tasks of every inbox export by ``data.image_sha256`` (annotations de-duplicated by id)."""
        merged: dict[str, dict[str, Any]] = {}
        files = sorted(self.inbox.glob("*.json")) if self.inbox.is_dir() else []
        for path in files:
            for task in read_export(path):
                sha = task["data"]["image_sha256"]
                entry = merged.setdefault(
                    sha, {"id": task.get("id"), "data": task["data"], "annotations": [], "updated_at": None}
                )
                seen = {a.get("id") for a in entry["annotations"] if a.get("id") is not None}
                entry["annotations"] += [
                    a for a in task.get("annotations") or [] if a.get("id") is None or a.get("id") not in seen
                ]
                entry["id"] = task.get("id", entry["id"])
        log.info("label inbox: %d export file(s), %d task(s)", len(files), len(merged))
        return list(merged.values())
