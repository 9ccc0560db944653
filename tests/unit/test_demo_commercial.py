"""The license demo's verdicts and its overlays: it fails when the loop did not do what it shows."""

from __future__ import annotations

import pytest

from flows import demo_commercial
from flows.demo_commercial import DEFAULT, YOLO_OVERLAY, problems, version_lines
from tasks.config import load_params
from tasks.env import PROJECT_ROOT

REFUSED = {"outcome": "reject", "license_refused": ["license gate (commercial): yolo: ultralytics ... [AGPL]"]}
DECIDED = {"outcome": "promote", "license_refused": []}


@pytest.mark.parametrize(
    ("yolo", "rfdetr", "family", "expected"),
    [
        pytest.param(REFUSED, DECIDED, "rfdetr", [], id="as-shown"),
        pytest.param(REFUSED, {"outcome": "reject", "license_refused": []}, "rfdetr", [], id="accuracy-rejects"),
        pytest.param(
            {"outcome": "promote", "license_refused": []},
            DECIDED,
            "yolo",
            ["not refused", "champion is yolo"],
            id="yolo",
        ),
        pytest.param(
            {"outcome": "reject", "license_refused": []}, DECIDED, "rfdetr", ["not refused"], id="rejected-on-accuracy"
        ),
        pytest.param(REFUSED, {"outcome": "waiting for labels"}, "rfdetr", ["did not reach the gate"], id="waiting"),
        pytest.param(REFUSED, {"outcome": "reject", **REFUSED}, "rfdetr", ["RF-DETR candidate was refused"], id="rf"),
        pytest.param({}, {}, "?", ["not refused", "did not reach", "champion is ?"], id="empty"),
    ],
)
def test_the_demo_names_what_did_not_happen(yolo, rfdetr, family, expected):
    found = problems(yolo, rfdetr, family)
    assert len(found) == len(expected)
    for text, part in zip(found, expected, strict=True):
        assert part in text


def test_a_version_block_shows_the_verdict_and_the_refusals():
    tags = {
        "model_family": "yolo",
        "license": "AGPL-3.0-only",
        "license.verdict": "refused",
        "license.policy": "commercial",
        "license.refused": "a (model_code): AGPL | b (weights): AGPL",
    }
    lines = version_lines(tags, "2", "reject")
    assert lines[0] == "v2: yolo (AGPL-3.0-only weights), license refused under commercial; outcome reject"
    assert lines[1:] == ["    refused: a (model_code): AGPL", "    refused: b (weights): AGPL"]
    assert version_lines({}, "1", "x") == ["v1: ? (? weights), license not recorded under ?; outcome x"]


def test_the_overlays_load_and_say_what_the_demo_needs():
    commercial = load_params([PROJECT_ROOT / f for f in DEFAULT])
    assert (commercial.train.family, commercial.train.model) == ("rfdetr", "rfdetr-nano")
    assert commercial.gate.license.policy == "commercial"
    yolo = load_params([*(PROJECT_ROOT / f for f in DEFAULT), PROJECT_ROOT / YOLO_OVERLAY])
    assert (yolo.train.family, yolo.gate.license.policy) == ("yolo", "commercial")


def test_main_exits_non_zero_and_writes_the_reason(monkeypatch, tmp_path, capsys):
    failure = tmp_path / "failure.txt"
    monkeypatch.setattr(demo_commercial, "apply_env", lambda: None)
    monkeypatch.setattr(demo_commercial, "demo_commercial", lambda **_: {"problem": "v2 was not refused"})
    with pytest.raises(SystemExit) as exited:
        demo_commercial.main(["--failure-file", str(failure)])
    assert exited.value.code == 1
    assert failure.read_text() == "v2 was not refused\n"
    assert capsys.readouterr().out.splitlines()[-1] == "demo FAILED: v2 was not refused"
