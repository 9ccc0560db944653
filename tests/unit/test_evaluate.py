"""The evaluate stage around the scoring code: its report, its CLI and its clean failures (inference faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import evaluate
from tasks.config import Params
from tasks.contracts.reports import load_report
from tasks.contracts.reports.evaluate import EvaluateReport, SetEvaluation
from tasks.contracts.yolo_labels import DatasetError

SCORED: list[tuple[Path, str]] = []


def fake_evaluate_set(model_path, set_root, *, classes, settings, batch, set_name="", cache=None):
    """Stands in for inference + COCO: a fixed score per set, remembering what was asked."""
    SCORED.append((model_path, set_name))
    if not Path(set_root).is_dir():
        raise DatasetError(f"{set_root}: image folder not found")
    return SetEvaluation(set_name, str(set_root), 8, 11, 0.5, 0.75, {"AP": 0.5}, {c: 0.5 for c in classes}, 3.0)


@pytest.fixture
def faked(monkeypatch, tiny_params: Params) -> Params:
    monkeypatch.setattr(evaluate, "evaluate_set", fake_evaluate_set)
    SCORED.clear()
    tiny_params.base.paths.golden.mkdir(parents=True)
    return tiny_params


def test_run_writes_the_typed_report(faked):
    report = evaluate.run(faked, model_path=Path("m.onnx"))
    assert [(Path("m.onnx"), name) for name in faked.evaluate.sets] == SCORED
    assert report.map50_95("golden") == 0.5 and report.params_digest == faked.digest()
    saved = json.loads((faked.base.paths.reports / "evaluate.json").read_text())
    assert saved["sets"]["golden"]["map50_95"] == 0.5 and saved["model"] == "m.onnx"
    assert {"wall_s", "params_digest", "params"} <= set(saved)
    assert load_report(faked.base.paths.reports, "evaluate") == report


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param(None, "train/best.pt", id="default-checkpoint"),
        pytest.param("other.onnx", "other.onnx", id="given-artifact"),
    ],
)
def test_cli_prints_map_per_set(faked, tiny_params_file, capsys, model, expected):
    argv = ["--params", str(tiny_params_file)] + (["--model", model] if model else [])
    report = evaluate.main(argv)
    assert isinstance(report, EvaluateReport) and report.model.endswith(expected)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"golden": 0.5}


def test_cli_missing_set_is_a_clean_failure(monkeypatch, tiny_params_file, capsys):
    monkeypatch.setattr(evaluate, "evaluate_set", fake_evaluate_set)
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--params", str(tiny_params_file)])
    assert exc.value.code == 1
    assert capsys.readouterr().err.startswith("evaluate: ")
