"""The promotion decision after the gate (tasks.decisions.approval): every branch, the empty cases included."""

from __future__ import annotations

import pytest

from tasks.decisions.approval import Answer, Outcome, decide, gate_reasons, needs_approval

RULES = [(True, "golden loss 0.002 <= 0.01"), (False, "production gain CI low -0.01 < 0.0")]


@pytest.mark.parametrize(
    ("decision", "require", "expected"),
    [
        pytest.param("promote", True, True, id="promote-required"),
        pytest.param("promote", False, False, id="promote-not-required"),
        pytest.param("reject", True, False, id="reject-never-waits"),
        pytest.param("reject", False, False, id="reject"),
    ],
)
def test_needs_approval(decision, require, expected):
    assert needs_approval(decision, require_approval=require) is expected


@pytest.mark.parametrize(
    ("decision", "rules", "expected"),
    [
        pytest.param("promote", [], [], id="empty"),
        pytest.param("promote", RULES, ["golden loss 0.002 <= 0.01"], id="promote-keeps-passed"),
        pytest.param("reject", RULES, ["production gain CI low -0.01 < 0.0"], id="reject-keeps-failed"),
    ],
)
def test_gate_reasons(decision, rules, expected):
    assert gate_reasons(decision, rules) == expected


@pytest.mark.parametrize(
    ("decision", "require", "answer", "expected"),
    [
        pytest.param("promote", False, None, Outcome("promote", ["golden loss 0.002 <= 0.01"]), id="no-approval"),
        pytest.param(
            "reject", True, None, Outcome("reject", ["production gain CI low -0.01 < 0.0"]), id="reject-not-asked"
        ),
        pytest.param(
            "promote",
            True,
            Answer(approve=True, reviewer="alice", note="looks good"),
            Outcome("promote", ["golden loss 0.002 <= 0.01", "approved by alice: looks good"]),
            id="approved",
        ),
        pytest.param(
            "promote",
            True,
            Answer(approve=True),
            Outcome("promote", ["golden loss 0.002 <= 0.01", "approved by a reviewer: no note"]),
            id="approved-anonymous",
        ),
        pytest.param(
            "promote",
            True,
            Answer(approve=False, reviewer="bob", note="night shift regressed"),
            Outcome("reject", ["not approved by bob: night shift regressed"]),
            id="refused",
        ),
        pytest.param(
            "promote",
            True,
            Answer(approve=False, reviewer="nobody", note="no approval (TimeoutError)"),
            Outcome("reject", ["not approved by nobody: no approval (TimeoutError)"]),
            id="timed-out",
        ),
        pytest.param("promote", True, None, Outcome("reject", ["not approved by nobody: no approval"]), id="no-answer"),
    ],
)
def test_decide(decision, require, answer, expected):
    assert decide(decision, RULES, require_approval=require, answer=answer) == expected


LICENSE = ["license gate (commercial): yolo: ultralytics 8.4.190 (model_code): AGPL-3.0-only [AGPL] refused: ..."]


@pytest.mark.parametrize(
    ("decision", "require", "answer"),
    [
        pytest.param("promote", False, None, id="gate-promote"),
        pytest.param("promote", True, Answer(approve=True, reviewer="alice"), id="even-approved"),
        pytest.param("reject", False, None, id="gate-reject-too"),
    ],
)
def test_a_license_refusal_rejects_whatever_the_gate_and_the_reviewer_said(decision, require, answer):
    outcome = decide(decision, RULES, require_approval=require, answer=answer, license_refusals=LICENSE)
    assert outcome == Outcome("reject", LICENSE)


@pytest.mark.parametrize(("refused", "expected"), [pytest.param(True, False, id="refused"), (False, True)])
def test_nobody_is_asked_to_approve_a_version_the_license_gate_refused(refused, expected):
    assert needs_approval("promote", require_approval=True, license_refused=refused) is expected
