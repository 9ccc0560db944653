"""The quarantine folder ``<base.paths.quarantine>/<cycle>/``: images the validate stage took out, and why.

Owner of the folder's layout (``images/``, ``labels/``, ``quarantine.json``), its record (:class:`Reason` per failed
expectation) and its one writer (:func:`quarantine`): files are *moved* (never deleted, never overwritten) out of
``<labels>/<cycle>/``, so what stays there is exactly the validated set the merge stage reads.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.contracts.yolo_labels import label_path_for
from tasks.io import write_json_atomic

log = logging.getLogger(__name__)

QUARANTINE_REPORT = "quarantine.json"


@dataclass(frozen=True)
class Reason:
    """Why one image is quarantined: one failed expectation on one of its rows.

    Attributes:
        suite: ``labels`` or ``images``.
        check: the expectation's ``meta.check`` (e.g. ``class_in_set``).
        expectation: the GX expectation type (e.g. ``expect_column_values_to_be_in_set``).
        column: the column it tested (for multi-column expectations, joined by ``,``).
        line: label file line (1-based), 0 for an image-level row.
        message: what is wrong, for a person.
    """

    suite: str
    check: str
    expectation: str
    column: str
    line: int
    message: str


def _free_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``<stem>.<k>`` with the smallest ``k`` not in ``used``."""
    candidate, k = stem, 0
    while candidate in used:
        k += 1
        candidate = f"{stem}.{k}"
    return candidate


def move_file(source: Path, target: Path) -> None:
    """Move a file without ever overwriting ``target``: ``os.replace`` (atomic), or copy + rename across devices.

    Raises:
        FileExistsError: ``target`` exists (callers pick a free name first).
    """
    if target.exists():
        raise FileExistsError(f"{target}: already in quarantine, refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(source, temp)
        os.replace(temp, target)
        source.unlink()


def quarantine(
    reasons: dict[str, list[Reason]], *, cycle_dir: Path, quarantine_dir: Path, cycle: str, run_at: str
) -> Path:
    """Move each failing image and its label file to quarantine and record why in ``quarantine.json``.

    A quarantined pair keeps its names unless an earlier run already quarantined that stem; then it becomes
    ``<stem>.<k>`` (nothing in quarantine is ever overwritten). The report is written first (merged over earlier
    runs' entries), then the files are moved, image first: an interrupted run leaves each image either still in
    place (a re-run finds it again, under the same name) or out of the downstream set.

    Args:
        reasons: reasons per image file name.
        cycle_dir: ``<labels>/<cycle>`` (with ``images/`` and ``labels/``).
        quarantine_dir: ``<quarantine>/<cycle>``.
        cycle: the cycle name (recorded).
        run_at: ISO time of this run (recorded).

    Returns:
        The ``quarantine.json`` path.
    """
    images_out, labels_out = quarantine_dir / "images", quarantine_dir / "labels"
    report_path = quarantine_dir / QUARANTINE_REPORT
    report: dict[str, Any] = (
        json.loads(report_path.read_text()) if report_path.is_file() else {"cycle": cycle, "images": {}}
    )
    used = {p.stem for folder in (images_out, labels_out) if folder.is_dir() for p in folder.iterdir()}
    moves: list[tuple[Path, Path]] = []
    for name, items in sorted(reasons.items()):
        image = cycle_dir / "images" / name
        label = label_path_for(image, cycle_dir / "labels")
        stem = _free_stem(image.stem, used)
        used.add(stem)
        image_target = images_out / f"{stem}{image.suffix}"
        moves.append((image, image_target))
        # No label file, or one shared with an image of the same stem quarantined just before: nothing to move.
        label_target = None
        if label.is_file() and all(source != label for source, _ in moves):
            label_target = labels_out / f"{stem}.txt"
            moves.append((label, label_target))
        report["images"][image_target.name] = {
            "source_image": str(image),
            "image": str(image_target),
            "source_label": str(label) if label.is_file() else None,
            "label": str(label_target) if label_target else None,
            "quarantined_at": run_at,
            "reasons": [asdict(r) for r in items],
        }
    report["updated"] = run_at
    write_json_atomic(report_path, report)
    for source, target in moves:
        move_file(source, target)
        log.info("quarantined %s -> %s", source, target)
    return report_path
