"""``reports/doctor.json``: what ``make doctor`` found in the stores (tasks/doctor.py writes it).

:class:`DoctorReport` lists each check with its status (``ok``, ``problems`` or ``skipped: <why>``) and every
:class:`Finding`: the store, the item, what is wrong and the command that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """One inconsistency: ``store`` (``labels``, ``merged``, ...), the ``item`` (file, task, version), the problem
    and the ``fix`` (a command or an action)."""

    store: str
    item: str
    problem: str
    fix: str


@dataclass(frozen=True)
class DoctorReport:
    """Every check's status (``ok`` / ``problems`` / ``skipped: <why>``) and the findings; ``ok`` when none."""

    ok: bool
    checks: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
