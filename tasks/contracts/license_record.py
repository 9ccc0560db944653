"""The license record of a model version: one entry per component that ships with it or went into it.

Written by the registry stage (MLflow version tags ``license.*`` and the cycle report's "Licenses" section), read by
the license gate (:mod:`tasks.decisions.license_gate`). A component's ``license`` is the SPDX expression as declared
where ``source`` says (package metadata, the family module per size, params for data sources and third-party
weights); ``None`` means nothing was declared, which the gate treats as unknown (fail closed under ``commercial``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Kind = Literal["model_code", "weights", "data", "runtime", "package", "bundled"]
KINDS: tuple[Kind, ...] = ("model_code", "weights", "data", "runtime", "package", "bundled")


@dataclass(frozen=True)
class Component:
    """One thing whose license applies to the shipped model.

    Attributes:
        kind: ``model_code`` (the family's training/inference code), ``weights`` (their origin), ``data`` (one
            declared training data source), ``runtime`` (the export runtime of the selected artifact) or ``package``
            (a distribution imported when the selected artifact is loaded and run) or ``bundled`` (a shared library a
            wheel on that path vendors, e.g. FFmpeg inside opencv-python).
        name: what it is, readable: ``ultralytics 8.4.190``, ``trained from scratch here``, ``world``,
            ``onnxruntime 1.32.0``.
        license: SPDX expression as declared (``AGPL-3.0-only``, ``MIT OR Apache-2.0``), a name the source gave
            (``PML-1.0``), or ``None`` when nothing was declared.
        source: where ``license`` was read: ``package metadata License-Expression``, ``package metadata
            classifiers``, ``family rfdetr (size nano)``, ``params license.data.world``, ...
    """

    kind: Kind
    name: str
    license: str | None
    source: str


@dataclass(frozen=True)
class LicenseRecord:
    """Every component of one model version (``components`` in a stable order: by kind as in :data:`KINDS`, then
    name)."""

    components: tuple[Component, ...]


# ------------------------------------------------------------------------------------------- MLflow version tags

TAG_PREFIX = "license."
RECORD_TAG = "license.record"  # the whole record, compact JSON: [[kind, name, license, source], ...]
MAX_TAG = 7900  # MLflow keeps at most 8000 characters of a tag value


class LicenseRecordError(ValueError):
    """A ``license.record`` tag that does not hold a record (names the version and what is wrong)."""


def record_json(record: LicenseRecord) -> str:
    """The record as compact JSON (``[[kind, name, license, source], ...]``); sources are shortened, then dropped,
    when the whole would not fit one MLflow tag."""
    text = ""
    for keep in (None, 60, 0):  # whole sources, then shortened, then none
        rows = [[c.kind, c.name, c.license, c.source[:keep]] for c in record.components]
        text = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
        if len(text) <= MAX_TAG:
            break
    return text


def parse_record(text: str, *, where: str) -> LicenseRecord:
    """A record from :func:`record_json`'s text.

    Raises:
        LicenseRecordError: not JSON, not a list of ``[kind, name, license, source]``, or an unknown kind.
    """
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LicenseRecordError(f"{where}: {RECORD_TAG} is not JSON ({exc})") from None
    if not isinstance(rows, list):
        raise LicenseRecordError(f"{where}: {RECORD_TAG} is not a list of components")
    components = []
    for i, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) == 4 and row[0] in KINDS
        if not ok or not all(isinstance(v, str) for v in (row[1], row[3])) or not isinstance(row[2], str | None):
            raise LicenseRecordError(f"{where}: {RECORD_TAG} entry {i} is not [kind, name, license, source]: {row!r}")
        components.append(Component(row[0], row[1], row[2], row[3]))
    return LicenseRecord(tuple(components))


def kind_summaries(record: LicenseRecord) -> dict[str, str]:
    """One readable line per kind: ``model_code`` -> ``yolo: ultralytics 8.4.190 = AGPL-3.0``, several components
    joined by ``; `` (what the cycle report's table lists row by row)."""
    found: dict[str, list[str]] = {}
    for c in record.components:
        found.setdefault(c.kind, []).append(f"{c.name} = {c.license or 'UNKNOWN'}")
    return {kind: "; ".join(parts) for kind, parts in found.items()}
