"""The promotion decision after the gate: the gate's verdict, and a reviewer's answer when approval is required.

Pure and table-tested (``tests/unit/test_approval.py``): the flow asks the reviewer (Prefect's pause) and hands the
answer here; nothing here waits or talks to anyone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["promote", "reject"]


@dataclass(frozen=True)
class Answer:
    """A reviewer's answer (``approve=False`` with ``reviewer="nobody"`` when nobody answered in time)."""

    approve: bool
    reviewer: str = ""
    note: str = ""


@dataclass(frozen=True)
class Outcome:
    """What to do with the candidate, and why (the reasons go to the audit trail)."""

    decision: Verdict
    reasons: list[str]


def needs_approval(decision: Verdict, *, require_approval: bool, license_refused: bool = False) -> bool:
    """Whether a reviewer must answer first: only a promotion waits, only with ``promote.require_approval``, and
    never one the license gate refused."""
    return decision == "promote" and require_approval and not license_refused


def gate_reasons(decision: Verdict, rules: Sequence[tuple[bool, str]]) -> list[str]:
    """The messages of the gate's rules that agree with its decision (passed ones for a promotion, failed ones else).

    Args:
        decision: the gate's verdict.
        rules: ``(passed, message)`` of every checked rule, in order.
    """
    return [message for passed, message in rules if passed == (decision == "promote")]


def decide(
    decision: Verdict,
    rules: Sequence[tuple[bool, str]],
    *,
    require_approval: bool,
    answer: Answer | None = None,
    license_refusals: Sequence[str] = (),
) -> Outcome:
    """The final decision: the gate's, unless the license gate refused the version, or a required approval was
    refused or never given.

    Args:
        decision: the gate's verdict.
        rules: ``(passed, message)`` of every checked rule.
        require_approval: ``promote.require_approval``.
        answer: the reviewer's answer; ``None`` when nobody was asked or nobody answered.
        license_refusals: why the license gate refused the version (empty: it did not); nobody is asked to
            approve a version that may not ship.
    """
    if license_refusals:
        return Outcome("reject", list(license_refusals))
    reasons = gate_reasons(decision, rules)
    if not needs_approval(decision, require_approval=require_approval):
        return Outcome(decision, reasons)
    answer = answer or Answer(approve=False, reviewer="nobody", note="no approval")
    who, note = answer.reviewer or "a reviewer", answer.note or "no note"
    if not answer.approve:
        return Outcome("reject", [f"not approved by {who}: {note}"])
    return Outcome("promote", [*reasons, f"approved by {who}: {note}"])
