"""The selected export artifact travels: export → registry (attached + tagged) → batch prediction runs it.

Real MLflow SQLite store, real ONNX Runtime and OpenVINO. Which runtime is faster at 64 px on a busy 2-core host
is noise, so the fixture pins the export report's selection to OpenVINO FP32 when the measurement picked ONNX;
the selection rules themselves are tested in ``tests/unit/test_export_selection.py`` and ``test_export_gate.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks import evaluate, export, predict, promote, registry, train, world
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.reports.registry import RegistryResult
from tasks.core import host
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration

TARGETS = ["onnx", "openvino", "openvino_int8"]
QUICK_SPEED = {"runs": 5, "batch_runs": 2, "warmup": 1, "batch": 4}
PINNED = "openvino"


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> Params:
    root = tmp_path_factory.mktemp("deploy")
    data = tiny_params_dict(
        root,
        export={"targets": TARGETS, "speed": QUICK_SPEED},
        predict={"conf": 0.001, "max_det": 5},  # a 1-epoch model still logs boxes
    )
    return Params.model_validate(data)


@pytest.fixture(scope="module")
def exported(params) -> dict:
    """World, 1-epoch model, evaluate, export; the report's selection pinned to OpenVINO FP32 (see module doc)."""
    world.run(params)
    train.run(params)
    evaluate.run(params)
    export.run(params)
    path = params.base.paths.reports / "export.json"
    report = json.loads(path.read_text())
    if report["selected"]["target"] != PINNED:
        check = next(c for c in report["artifacts"] if c["target"] == PINNED)
        assert check["passed"] and check["parity"]["passed"], "OpenVINO FP32 must pass its checks to be pinned"
        report["selected"] = {"target": PINNED, "path": check["path"], "reason": "pinned by the test"}
        path.write_text(json.dumps(report))
    return report


@pytest.fixture(scope="module")
def version(params, exported) -> RegistryResult:
    """Registered the way the loop flow calls the stage: extra lineage and an extra report."""
    note = params.base.paths.reports / "note.json"
    note.write_text('{"why": "test"}')
    return registry.run(params, extra_lineage={"cycle": "c-test"}, extra_reports={"note": note})


def run_artifacts(client: MlflowClient, run_id: str, folder: str) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, folder):
        found |= run_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_checked_artifacts_are_attached_and_the_selected_one_tagged(params, exported, version):
    tags = version.tags
    assert tags["deploy.target"] == PINNED and tags["deploy.precision"] == "fp32"
    assert tags["deploy.artifact"] == "export/openvino/model.xml"
    assert tags["cycle"] == "c-test" and tags["dataset_mode"] == "source" and tags["dataset_md5"].endswith(".dir")
    client = MlflowClient(params.registry.tracking_uri)
    attached = run_artifacts(client, version.run_id, "export")
    healthy = [c for c in exported["artifacts"] if c["status"] == "built" and c["passed"] and c["parity"]["passed"]]
    assert {c["target"] for c in healthy} >= {"onnx", PINNED}
    for check in healthy:
        name = Path(check["path"]).name
        assert f"export/{check['target']}/{name}" in attached
        if name.endswith(".xml"):
            assert f"export/{check['target']}/{Path(name).with_suffix('.bin')}" in attached, "OpenVINO weights"
    assert not [k for k in tags if k.startswith("export.")], "per-target figures are run metrics, not version tags"
    assert "export/lineage.json" in attached
    lineage = json.loads(Path(client.download_artifacts(version.run_id, "export/lineage.json")).read_text())
    calibration = lineage["calibration"]
    assert calibration["count"] == 24 and calibration["seed"] == params.base.seed and calibration["image_ids_sha256"]
    assert lineage["quantization"]["quantization"]["keep_head_fp32"] is True
    assert {"onnxruntime", "openvino", "nncf"} <= set(lineage["versions"])
    here = host.cpu()  # the selection holds for the host it was timed on: its CPU and instruction sets are recorded
    assert lineage["host"]["isa_flags"] == here["isa_flags"] and lineage["host"]["cpu"] == here["cpu"]
    assert tags["deploy.selected_on"] == host.describe(here)
    assert (
        "deploys openvino (export/openvino/model.xml)"
        in client.get_model_version(version.name, version.version).description
    )


def test_export_numbers_are_run_metrics_and_a_table(params, exported, version):
    client = MlflowClient(params.registry.tracking_uri)
    metrics = client.get_run(version.run_id).data.metrics
    for check in exported["artifacts"]:
        if check["status"] == "built":
            prefix = f"export/{check['target']}"
            assert metrics[f"{prefix}/p50_ms"] == pytest.approx(check["speed"]["latency_ms"]["p50"])
            assert metrics[f"{prefix}/map50_95.golden"] == pytest.approx(check["map50_95"]["golden"])
    experiment = client.get_run(version.run_id).info.experiment_id
    table = client.load_table(experiment, "export/table.json", run_ids=[version.run_id])
    rows = table[table["version"].astype(str) == version.version].set_index("target")
    assert list(rows.index) == TARGETS
    assert rows.loc[PINNED, "selected"] and rows.loc[PINNED, "artifact"] == "export/openvino/model.xml"
    assert rows.loc["onnx", "verdict"] == exported["selection"]["onnx"]


def test_predict_runs_the_champions_selected_artifact(params, version, caplog):
    promote.promote(params, version=version.version, why="test")
    batch = predict.list_batches(params.base.paths.production)[0]
    with caplog.at_level(logging.INFO):  # predict and tasks.adapters.model_cache log what ran
        result = predict.run(params, batches=[batch])
    assert (result.target, result.precision, result.fallback) == (PINNED, "fp32", None)
    cache = params.base.paths.models / "registry" / version.name / version.version / "deploy"
    assert Path(result.artifact) == cache / "export" / "openvino" / "model.xml"
    assert (cache / "export" / "openvino" / "model.bin").is_file()
    assert "runs its selected artifact: openvino" in caplog.text and f"with {version.name} v" in caplog.text
    report = json.loads((params.base.paths.reports / "predict.json").read_text())
    assert report["target"] == PINNED and report["batches"][0]["images"] == 6
    table = prediction_log.read(params.base.paths.predictions)
    assert table.schema.equals(prediction_log.SCHEMA, check_metadata=False)
    assert set(table["model_version"].to_pylist()) == {version.version}
    again = predict.run(params, batches=[batch])  # cached: same local file, no second download
    assert again.artifact == result.artifact and again.target == PINNED


@pytest.mark.parametrize(
    ("deploy_tags", "why"),
    [
        pytest.param({}, "has no deploy.artifact tag", id="untagged-version"),
        pytest.param(
            {"deploy.target": "openvino_int8", "deploy.artifact": "export/gone/model.xml"},
            "its openvino_int8 artifact cannot run here",
            id="artifact-missing",
        ),
    ],
)
def test_version_without_a_usable_deploy_artifact_falls_back_to_onnx(params, version, caplog, deploy_tags, why):
    train_report = json.loads((params.base.paths.reports / "train.json").read_text())
    older = mlflow_adapter.register_model(  # a version as registered before export selection: no export artifacts
        params,
        run_id=train_report["mlflow_run_id"],
        weights=Path(train_report["weights"]),
        onnx=params.base.paths.models / "export" / "model.onnx",
        reports={},
    )
    assert not {k for k in older.tags if k.startswith(("deploy.", "export."))}
    mlflow_adapter.set_version_tags(params, older.version, {"dataset_md5": "test"} | deploy_tags)
    promote.promote(params, version=older.version, why="test: an older version")
    batch = predict.list_batches(params.base.paths.production)[1]
    with caplog.at_level(logging.INFO):  # predict and tasks.adapters.model_cache log what ran
        result = predict.run(params, batches=[batch])
    assert result.target == "onnx" and result.model_version == older.version
    assert why in result.fallback and Path(result.artifact).suffix == ".onnx"
    assert "running its ONNX file" in caplog.text
    assert prediction_log.read(params.base.paths.predictions).num_rows > 0
