"""``reports/promote.json``: what a promotion, rejection or rollback did, with its audit records.

The promote stage writes a :class:`PromoteResult` with :func:`tasks.contracts.reports.write_report`; readers
(the cycle report) use ``load_report(reports, "promote")``. :class:`AuditRecord` is also one line of the audit
trail (``promote.audit_log``, appended and read by :mod:`tasks.promote`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit trail."""

    ts: str
    who: str
    action: str
    model: str
    alias: str | None
    from_version: str | None
    to_version: str | None
    why: str


@dataclass(frozen=True)
class PromoteResult:
    """What a promotion, rejection or rollback did (``moves``: alias -> [from version, to version]).

    ``wall_s``: seconds the stage took (``None`` when a function other than ``run`` made it, and in older reports).
    """

    action: str
    version: str
    moves: dict[str, list[str | None]] = field(default_factory=dict)
    records: list[AuditRecord] = field(default_factory=list)
    wall_s: float | None = None
