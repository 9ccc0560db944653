"""The alias audit trail (``promote.audit_log``): JSON lines of :class:`AuditRecord`, appended by the promote stage.

Readers: the promote stage (``--audit``) and the monitor (which promotion to watch). A torn last line (a crash in
the middle of an append) is reported and skipped, never fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.contracts.reports.promote import AuditRecord
from tasks.io import read_json_lines

log = logging.getLogger(__name__)


def pending_path(trail: Path) -> Path:
    """The write-ahead file of alias moves in progress beside ``trail``: ``<trail>.pending`` (promote writes it
    before moving aliases and removes it once they are recorded; left behind only by an interrupted move)."""
    trail = Path(trail)
    return trail.with_name(trail.name + ".pending")


def read_audit(path: Path) -> list[AuditRecord]:
    """The whole trail, oldest first (``[]`` when there is none yet)."""
    records = []
    for lineno, row in read_json_lines(path):
        try:
            if row is None:
                raise ValueError("not a JSON object")
            records.append(AuditRecord(**row))
        except (TypeError, ValueError) as exc:
            log.warning("%s line %d: unreadable audit record skipped (%s)", path, lineno, exc)
    return records


def newest_promotion(path: Path, *, model: str, to_version: str) -> AuditRecord | None:
    """The newest ``promote`` move of the ``champion`` alias of ``model`` onto ``to_version`` (``None``: none)."""
    for record in reversed(read_audit(path)):
        if record.model != model or record.alias != "champion":
            continue
        if record.to_version != str(to_version):
            return None  # the champion moved elsewhere since: its newest arrival was not a promotion we can watch
        return record if record.action == "promote" else None
    return None
