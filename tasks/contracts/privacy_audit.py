"""The privacy audit trail (``forget.audit_log``): one JSON line per forget or retention run.

Each line is a :class:`~tasks.contracts.reports.forget.ForgetReport` plus ``at`` (UTC) and ``by`` (the user):
what was removed where. It names the image by its content hash (and its ids only as SHA-256 digests), never by
pixels or plain ids, so the trail itself holds nothing to forget. Appends are whole lines written with one
``write`` and fsynced; a torn last line is skipped by the reader with a warning.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import hashlib
import logging
from pathlib import Path
from typing import Any

from tasks.contracts.reports.forget import ForgetReport
from tasks.io import append_json_lines, read_json_lines

log = logging.getLogger(__name__)


def id_digest(image_id: str) -> str:
    """How the trail names an image id: ``sha256("image_id:" + id)``."""
    return hashlib.sha256(f"image_id:{image_id}".encode()).hexdigest()


def append_entry(path: Path, report: ForgetReport, *, ids: list[str]) -> dict[str, Any]:
    """Append one entry for ``report`` (``ids`` are stored as :func:`id_digest` only); returns the entry."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover, no passwd entry in some containers
        user = "unknown"
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(),
        "by": user,
        "image_id_sha256": sorted(id_digest(i) for i in ids),
        **dataclasses.asdict(report),
    }
    append_json_lines(path, [entry])
    return entry


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first (``[]`` when there is no trail yet)."""
    entries = []
    for lineno, row in read_json_lines(path):
        if row is None:
            log.warning("%s line %d: unreadable privacy audit entry skipped", path, lineno)
            continue
        entries.append(row)
    return entries


def forgotten_hash(path: Path, ref: str) -> str | None:
    """The content hash an earlier forget removed, when ``ref`` (a hash or an id) names it; else None."""
    digest = id_digest(ref)
    for entry in reversed(read_entries(path)):
        if entry.get("mode") != "forget":
            continue
        if entry.get("image_sha256") == ref or digest in entry.get("image_id_sha256", []):
            return str(entry["image_sha256"])
    return None
