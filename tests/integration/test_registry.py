"""The registry stage on a real MLflow SQLite store: one training run is one model version, however often it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import registry
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.model_version import TRAIN_RUN_ID
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.train import TrainResult
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


@pytest.fixture
def candidate(tmp_path: Path) -> Params:
    """A trained and exported candidate as the registry stage finds it (files stand in for the real models)."""
    params = Params.model_validate(tiny_params_dict(tmp_path))
    paths = params.base.paths
    (paths.train / "images").mkdir(parents=True)
    (paths.train / "images" / "a.png").write_bytes(b"png")
    weights = paths.models / "train" / "best.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"checkpoint")
    onnx = paths.models / "export" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"onnx")
    with mlflow_adapter.mlflow_run(params, run_name="train-test") as run_id:
        pass
    trained = TrainResult(
        weights=str(weights),
        family="yolo",
        license="AGPL-3.0",
        base_weights="scratch:test.yaml",
        epochs=1,
        final_metrics={},
        mlflow_run_id=run_id,
        wall_s=0.0,
    )
    write_report(paths.reports, "train", trained, params)
    return params


def test_a_rerun_for_the_same_training_run_finds_its_version(candidate):
    first = registry.run(candidate, extra_lineage={"cycle": "c1"})
    assert (first.version, first.reused) == ("1", False)
    again = registry.run(candidate, extra_lineage={"cycle": "c1", "gate_decision": "promote"})
    assert (again.version, again.reused) == ("1", True)
    versions = mlflow_adapter.client(candidate).search_model_versions(f"name='{candidate.registry.model_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert again.tags[TRAIN_RUN_ID] == first.run_id and again.tags["gate_decision"] == "promote"  # tags caught up
    report = load_report(candidate.base.paths.reports, "registry")
    assert (report.version, report.reused) == ("1", True)


def test_a_new_training_run_is_a_new_version(candidate):
    registry.run(candidate)
    reports = candidate.base.paths.reports
    trained = load_report(reports, "train")
    with mlflow_adapter.mlflow_run(candidate, run_name="train-again") as run_id:
        pass
    write_report(reports, "train", trained.__class__(**{**trained.__dict__, "mlflow_run_id": run_id}), candidate)
    second = registry.run(candidate)
    assert (second.version, second.reused, second.run_id) == ("2", False, run_id)


def test_missing_inputs_name_the_stage_to_run(tmp_path):
    params = Params.model_validate(tiny_params_dict(tmp_path))
    with pytest.raises(registry.RegistryError, match="run the train stage first"):
        registry.run(params)


def test_the_export_table_gets_one_block_of_rows_per_version(candidate):
    from tasks.contracts.model_version import EXPORT_TABLE, ModelVersionInfo

    run_id = load_report(candidate.base.paths.reports, "train").mlflow_run_id
    table = {"target": ["onnx", "openvino"], "p50_ms": [2.0, 1.0]}

    def version(number: str) -> ModelVersionInfo:
        return ModelVersionInfo(name="m", version=number, run_id=run_id, source="", tags={}, aliases=[])

    def rows() -> list[str]:
        client = mlflow_adapter.client(candidate)
        experiment = client.get_run(run_id).info.experiment_id
        return [str(v) for v in client.load_table(experiment, EXPORT_TABLE, run_ids=[run_id])["version"]]

    mlflow_adapter.log_version_table(candidate, version("1"), table)
    mlflow_adapter.log_version_table(candidate, version("1"), table)  # a retried registration writes nothing
    assert rows() == ["1", "1"]
    mlflow_adapter.log_version_table(candidate, version("2"), table)
    assert rows() == ["1", "1", "2", "2"]


def test_a_version_outside_a_git_checkout_is_tagged_not_restorable(candidate, tmp_path):
    info = registry.run(candidate)
    tags = registry.pin(candidate, info.version, name="visionloop-detector-v1", root=tmp_path)
    assert tags[registry.RESTORABLE] == "false" and "is not a DVC project" in tags["dvc.why"]
    stored = mlflow_adapter.get_version(candidate, info.version).tags
    assert stored[registry.RESTORABLE] == "false" and stored["dvc.why"] == tags["dvc.why"]
    assert [v.version for v in mlflow_adapter.versions_tagged(candidate, registry.RESTORABLE, "false")] == ["1"]
