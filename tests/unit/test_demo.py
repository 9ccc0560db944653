"""The demo fails loudly when its loop did not close: a cycle that ends waiting for labels is not a demo that worked."""

from __future__ import annotations

import pytest

from flows import demo


@pytest.mark.parametrize(
    ("outcomes", "answered", "errors", "expected"),
    [
        pytest.param([], 0, [], None, id="no-cycles"),
        pytest.param(["promote"], 120, [], None, id="promoted"),
        pytest.param(["reject"], 120, [], None, id="rejected-on-merits"),
        pytest.param(
            ["waiting for labels"],
            0,
            ["LabelProjectNotReady: no Label Studio project titled 'visionloop' is recorded\nmore"],
            "1 cycle(s) did not reach the gate (cycle c0: waiting for labels); the annotator simulator answered 0, "
            "its last error: LabelProjectNotReady: no Label Studio project titled 'visionloop' is recorded",
            id="waiting-with-annotator-error",
        ),
        pytest.param(
            ["promote", "nothing to label (budget 0)"],
            5,
            [],
            "1 cycle(s) did not reach the gate (cycle c1: nothing to label (budget 0)); the annotator simulator "
            "answered 5",
            id="second-cycle-empty",
        ),
    ],
)
def test_incomplete_reason(outcomes, answered, errors, expected):
    cycles = [{"cycle": f"c{i}", "outcome": o} for i, o in enumerate(outcomes)]
    unfinished = [c for c in cycles if c["outcome"] not in demo.FINISHED]
    assert demo.incomplete_reason(unfinished, answered, errors) == expected


def test_main_exits_non_zero_and_writes_the_reason(monkeypatch, tmp_path, capsys):
    failure = tmp_path / "failure.txt"
    monkeypatch.setattr(demo, "apply_env", lambda: None)
    monkeypatch.setattr(demo, "demo", lambda **_: {"problem": "1 cycle(s) did not reach the gate"})
    with pytest.raises(SystemExit) as exited:
        demo.main(["--failure-file", str(failure)])
    assert exited.value.code == 1
    assert failure.read_text() == "1 cycle(s) did not reach the gate\n"
    assert capsys.readouterr().out.splitlines()[-1] == "demo FAILED: 1 cycle(s) did not reach the gate"


def test_main_names_a_crash_and_re_raises(monkeypatch, tmp_path):
    failure = tmp_path / "failure.txt"

    def crash(**_):
        raise RuntimeError("Label Studio is not reachable at http://127.0.0.1:8080\nsecond line")

    monkeypatch.setattr(demo, "apply_env", lambda: None)
    monkeypatch.setattr(demo, "demo", crash)
    with pytest.raises(RuntimeError):
        demo.main(["--failure-file", str(failure)])
    assert failure.read_text() == "RuntimeError: Label Studio is not reachable at http://127.0.0.1:8080\n"


def test_main_succeeds_quietly(monkeypatch, tmp_path):
    failure = tmp_path / "failure.txt"
    monkeypatch.setattr(demo, "apply_env", lambda: None)
    monkeypatch.setattr(demo, "demo", lambda **_: {"problem": None})
    demo.main(["--failure-file", str(failure)])
    assert not failure.exists()
