"""Cycle bookkeeping (open / continue / close) and the cycle report, without servers."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tasks import cycle, train
from tasks.contracts.reports import ReportError
from tasks.contracts.reports.sample import SampleResult, StrategyCount

T0 = dt.datetime(2026, 11, 23, 10, 15, tzinfo=dt.UTC)


def test_cycle_names_sort_chronologically():
    names = [cycle.new_cycle_name(T0 + dt.timedelta(seconds=s)) for s in (0, 59, 3600, 86400 * 40)]
    assert names == sorted(names) and names[0] == "20261123T101500Z"


def test_start_opens_then_continues_the_unclosed_cycle(tiny_params):
    first = cycle.start(tiny_params, now=T0)
    assert (first.cycle, first.status, first.runs, first.resumed) == ("20261123T101500Z", "open", 1, False)
    cycle.finish(tiny_params, first, status="waiting", outcome="waiting for labels")
    again = cycle.start(tiny_params, now=T0 + dt.timedelta(hours=1))
    assert (again.cycle, again.status, again.runs, again.resumed) == (first.cycle, "open", 2, True)
    assert again.started_at == first.started_at


def test_a_closed_cycle_is_returned_as_is_and_the_next_run_opens_a_new_one(tiny_params):
    first = cycle.start(tiny_params, now=T0)
    closed = cycle.finish(tiny_params, first, status="closed", outcome="promote")
    assert cycle.start(tiny_params, cycle=first.cycle) == closed
    later = cycle.start(tiny_params, now=T0 + dt.timedelta(days=1))
    assert later.cycle != first.cycle and later.runs == 1


def test_a_failed_run_leaves_the_cycle_open_for_the_next(tiny_params):
    first = cycle.start(tiny_params, now=T0)  # the run then crashes: no finish()
    assert [s.cycle for s in cycle.open_cycles(tiny_params)] == [first.cycle]
    assert cycle.start(tiny_params, now=T0 + dt.timedelta(minutes=5)).cycle == first.cycle


@pytest.mark.parametrize("name", ["../x", "", "a b", ".hidden"])
def test_unsafe_cycle_names_are_refused(tiny_params, name):
    with pytest.raises(cycle.CycleError, match="use letters, digits"):
        cycle.start(tiny_params, cycle=name)


def test_a_damaged_state_file_is_named(tiny_params):
    path = cycle.state_path(tiny_params, "c1")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(cycle.CycleError, match=r"cycle\.json: not a cycle state"):
        cycle.start(tiny_params, cycle="c1")


@pytest.mark.parametrize(
    ("warm_start", "parent", "weights", "expected_weights", "expected_epochs"),
    [
        (True, True, None, "parent", 5),  # a cycle fetched the champion: warm start for cycle.epochs
        (False, True, None, None, 1),  # warm start off: the yaml, train.epochs
        (True, False, None, None, 1),  # before the first cycle: the yaml
        (True, True, "given.pt", "given.pt", 1),  # train.weights wins
    ],
)
def test_warm_start_from_the_parent_checkpoint(
    tiny_params, warm_start, parent, weights, expected_weights, expected_epochs
):
    params = tiny_params.model_copy(
        update={
            "cycle": tiny_params.cycle.model_copy(update={"warm_start": warm_start, "epochs": 5}),
            "train": tiny_params.train.model_copy(update={"weights": weights and Path(weights), "epochs": 1}),
        }
    )
    if parent:
        train.parent_path(params).parent.mkdir(parents=True)
        train.parent_path(params).write_bytes(b"checkpoint")
    effective = train.effective_params(params).train
    expected = {"parent": train.parent_path(params), None: None}.get(expected_weights, Path(str(expected_weights)))
    assert (effective.weights, effective.epochs) == (expected, expected_epochs)


GATE = {  # a gate report as the gate stage writes it (the cycle reads it back through its typed record)
    "decision": "reject",
    "candidate": "models/export/model.onnx",
    "champion": "models/champion/v1/model.onnx",
    "latency_ms_per_image": {"candidate": 3.0, "champion": 3.1},
    "policy": {},
    "reasons": [
        {"code": "production_gain", "passed": False, "message": "production gain CI low -0.01 < 0.0"},
        {"code": "golden_loss", "passed": True, "message": "golden loss 0.002 <= 0.01"},
    ],
    "sets": {
        "golden": {
            "images": 10,
            "boxes": 25,
            "paths": ["data/golden"],
            "candidate_map50_95": 0.41,
            "champion_map50_95": 0.40,
            "candidate_map50": 0.61,
            "champion_map50": 0.60,
            "interval": {"estimate": 0.01, "low": -0.02, "high": 0.03, "level": 0.95, "resamples": 200},
            "per_class": {"a": {"candidate": 0.5, "champion": 0.4}, "b": {"candidate": None, "champion": 0.2}},
        }
    },
}


SAMPLE = SampleResult(
    cycle="c1",
    manifest="data/samples/c1/manifest.parquet",
    selected=3,
    budget=3,
    by_strategy={"random": StrategyCount(candidates=9, selected=3, budget=3, weight=1.0)},
    excluded={},
    per_day={},
    window=[],
    champion="visionloop-detector/1",
    reason=None,
)


def test_report_of_a_decided_cycle(tiny_params):
    reports = tiny_params.base.paths.reports
    reports.mkdir(parents=True)
    (reports / "gate.json").write_text(json.dumps(GATE))
    (reports / "sample.json").write_text(json.dumps(asdict(SAMPLE)))
    report = cycle.run(tiny_params, cycle="c1", outcome="reject")
    folder = reports / "cycles" / "c1"
    assert {p.name for p in folder.iterdir()} >= {"report.md", "report.json", "per_class_ap.png", "strategies.png"}
    assert report.summary["candidate_map50_95"] == {"golden": 0.41}
    assert report.summary["failed_rules"] == ["production gain CI low -0.01 < 0.0"]
    assert "**FAIL** `production_gain`" in report.markdown and "+0.0100 [-0.0200, +0.0300]" in report.markdown
    assert (folder / "per_class_ap.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((reports / "cycle.json").read_text())["outcome"] == "reject"
    assert report.mlflow_run_id is None  # nothing registered: nothing logged to MLflow


def test_reports_older_than_the_cycle_are_left_out(tiny_params):
    reports = tiny_params.base.paths.reports
    reports.mkdir(parents=True)
    (reports / "gate.json").write_text(json.dumps(GATE))  # a previous cycle's gate
    report = cycle.run(tiny_params, cycle="c2", outcome="waiting for labels", since=dt.datetime.now(dt.UTC))
    assert report.summary["decision"] is None and report.plots == []


def test_a_stage_report_that_does_not_match_its_record_is_named(tiny_params):
    reports = tiny_params.base.paths.reports
    reports.mkdir(parents=True)
    (reports / "gate.json").write_text(json.dumps(GATE | {"decision": "maybe"}))
    with pytest.raises(ReportError, match=r"gate\.json: does not match the gate report: decision"):
        cycle.run(tiny_params, cycle="c3", outcome="reject")


@pytest.mark.parametrize(
    ("champion", "warm_start", "parent", "warm"),
    [
        pytest.param(None, True, "none", "False", id="first-cycle"),
        pytest.param(cycle.ChampionFiles(version="4", weights="w.pt", onnx="m.onnx"), True, "4", "True", id="warm"),
        pytest.param(cycle.ChampionFiles(version="4", weights="w.pt", onnx="m.onnx"), False, "4", "False", id="cold"),
    ],
)
def test_candidate_lineage(tiny_params, champion, warm_start, parent, warm):
    params = tiny_params.model_copy(update={"cycle": tiny_params.cycle.model_copy(update={"warm_start": warm_start})})
    lineage, files = cycle.candidate_lineage(
        params,
        cycle="c1",
        champion=champion,
        gx_report=Path("gx.json"),
        gate_decision="reject",
    )
    assert (lineage["parent_version"], lineage["warm_start"]) == (parent, warm)
    assert (lineage["cycle"], lineage["gate_decision"]) == ("c1", "reject")
    # what travels as a file is not repeated as a tag (the registry's version table draws one line per tag)
    assert not {"gx_report", "sample_manifest", "merge_manifest_md5"} & set(lineage)
    assert files["validate"] == Path("gx.json") and files["sample_manifest"].name == "manifest.parquet"
    assert set(files) == {"sample", "validate", "merge", "gate", "sample_manifest"}


def test_the_licenses_section_shows_the_verdict_the_refusal_and_every_component():
    from tasks.contracts.license_record import RECORD_TAG, Component, LicenseRecord, record_json

    record = LicenseRecord(
        (
            Component("model_code", "yolo: ultralytics 8.4.190", "AGPL-3.0", "package metadata License"),
            Component("package", "mystery 1.0", None, "no license field"),
        )
    )
    tags = {
        RECORD_TAG: record_json(record),
        "license.policy": "commercial",
        "license.verdict": "refused",
        "license.refused": "yolo: ultralytics 8.4.190 (model_code): AGPL-3.0-only [AGPL] refused: x | mystery 1.0 (p)",
        "license.obligations": "AGPL: offer the source",
    }
    lines = cycle.license_section(tags)
    text = "\n".join(lines)
    assert lines[:3] == ["## Licenses", "", "policy **commercial**: refused"]
    assert "Refused:\n\n- yolo: ultralytics 8.4.190 (model_code): AGPL-3.0-only [AGPL] refused: x\n- mystery" in text
    assert "| model_code | yolo: ultralytics 8.4.190 | AGPL-3.0 | package metadata License |" in text
    assert "| package | mystery 1.0 | UNKNOWN | no license field |" in text
    assert cycle.license_section({}) == []  # a version registered before records: no section
    assert "record unreadable" in cycle.license_section({RECORD_TAG: "{"})[2]


@pytest.mark.parametrize(
    ("record", "parent", "warm"),
    [
        pytest.param({"version": "2", "name": "m", "reason": "champion v5 is yolo"}, "2", "True", id="own-family"),
        pytest.param({"name": "m", "reason": "no rfdetr version is registered"}, "none", "False", id="scratch"),
    ],
)
def test_the_lineage_names_the_parent_the_train_stage_read_not_the_champion(tiny_params, record, parent, warm):
    from tasks.contracts.train_files import parent_record_path
    from tasks.io import write_json_atomic

    write_json_atomic(parent_record_path(tiny_params), record)
    champion = cycle.ChampionFiles(version="5", weights="w.pt", onnx="m.onnx")
    lineage, _ = cycle.candidate_lineage(
        tiny_params, cycle="c1", champion=champion, gx_report=Path("g"), gate_decision="x"
    )
    assert (lineage["parent_version"], lineage["champion_version"], lineage["warm_start"]) == (parent, "5", warm)
