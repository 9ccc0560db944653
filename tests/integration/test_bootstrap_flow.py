"""bootstrap + predict on a tiny world under the Prefect test harness, against a real MLflow SQLite store."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import mlflow
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml
from mlflow import MlflowClient

from tasks.adapters.mlflow import AliasNotFoundError
from tasks.config import load_params
from tasks.contracts import prediction_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, prefect_harness):
    """Run bootstrap then predict on batch one; return the params file."""
    from flows.bootstrap import bootstrap
    from flows.predict import predict
    from tests.conftest import tiny_params_dict

    root = tmp_path_factory.mktemp("tiny")
    # a low threshold so that a 1-epoch model still logs boxes
    data = tiny_params_dict(root, predict={"conf": 0.001, "max_det": 5})
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    moves = bootstrap(params_path=str(params_file))
    params = load_params(params_file)
    first_batch = sorted(p.name for p in params.base.paths.production.iterdir())[0]
    result = predict(params_path=str(params_file), batches=[first_batch])
    return params_file, moves, result


def test_bootstrap_makes_a_champion_readable_by_stock_mlflow(tiny_run):
    params_file, moves, _ = tiny_run
    params = load_params(params_file)
    assert moves == {"champion": [None, "1"]}
    mlflow.set_tracking_uri(params.registry.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}@champion")
    images = sorted((params.base.paths.golden / "images").glob("*.png"))[:3]
    out = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    assert list(out.columns) == ["image_index", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2"]
    assert len(out) > 0 and set(out["image_index"]) <= {0, 1, 2}
    assert set(out["class_name"]) <= set(params.base.classes)


def test_version_carries_artifacts_and_lineage(tiny_run, tmp_path):
    params_file, _, _ = tiny_run
    params = load_params(params_file)
    client = MlflowClient(params.registry.tracking_uri)
    mv = client.get_model_version_by_alias(params.registry.model_name, "champion")
    for tag in ("dataset_md5", "git_commit", "params_hash", "model_family", "license"):
        assert mv.tags.get(tag), f"lineage tag {tag} missing"
    assert mv.tags["dataset_md5"].endswith(".dir")
    # the effective params of bootstrap: the file, with the loop's warm start off (a first champion is from the yaml)
    assert mv.tags["params_hash"] == load_params(params_file, overrides={"cycle": {"warm_start": False}}).digest()
    assert mv.tags["params_hash"] != params.digest()
    assert mv.tags["model_family"] == "yolo" and mv.tags["license"] == "AGPL-3.0-only"
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{params.registry.model_name}/{mv.version}", dst_path=str(tmp_path)
        )
    )
    names = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"best.pt", "model.onnx", "evaluate.json"} <= names


def test_prediction_log_readable_with_duckdb_and_pyarrow(tiny_run):
    params_file, _, result = tiny_run
    params = load_params(params_file)
    root = params.base.paths.predictions
    (batch,) = result.batches
    rows = duckdb.sql(
        f"select image_id, class_id, n_detections, date from read_parquet('{root}/**/*.parquet', "
        "hive_partitioning=true)"
    ).df()
    assert rows["image_id"].nunique() == batch.images == 6
    assert len(rows) == max(batch.detections, 0) + int((rows["n_detections"] == 0).sum())
    assert str(rows["date"].iloc[0])[:10] == batch.date
    table = ds.dataset(root, format="parquet", partitioning="hive", schema=prediction_log.SCHEMA).to_table()
    assert table.num_rows == len(rows)
    assert prediction_log.read(root).num_rows == len(rows)


def test_repeated_predict_is_idempotent(tiny_run, prefect_harness):
    from flows.predict import predict

    params_file, _, result = tiny_run
    params = load_params(params_file)
    before = prediction_log.read(params.base.paths.predictions).num_rows
    predict(params_path=str(params_file), batches=[result.batches[0].batch])
    assert prediction_log.read(params.base.paths.predictions).num_rows == before


def test_predict_without_champion_says_which_flow_creates_it(tmp_path):
    from tasks import predict as predict_stage
    from tests.conftest import tiny_params_dict

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params_dict(tmp_path)))
    params = load_params(params_file)
    (params.base.paths.production / "2026-11-02" / "images").mkdir(parents=True)
    with pytest.raises(AliasNotFoundError, match=r"no 'champion' alias.*flows\.bootstrap"):
        predict_stage.run(params)
    assert not params.base.paths.predictions.exists()


def test_skips_unreadable_production_image_and_names_it(tiny_run, prefect_harness):
    from flows.predict import predict

    params_file, _, _ = tiny_run
    params = load_params(params_file)
    batches = sorted(p.name for p in params.base.paths.production.iterdir())
    broken = params.base.paths.production / batches[1] / "images" / "zz_broken.png"
    broken.write_bytes(io.BytesIO(b"\x89PNG truncated").getvalue())
    result = predict(params_path=str(params_file), batches=[batches[1]])
    (batch,) = result.batches
    assert str(broken) in batch.skipped and "unreadable or truncated" in batch.skipped[str(broken)]
    assert batch.errors == {"decode": 1}
    rows = [r for r in prediction_log.read(params.base.paths.predictions).to_pylist() if r["image_id"] == "zz_broken"]
    # one error row counts the image (the monitor sees it); it is never a prediction nor a sampling candidate
    assert [(r["error"], r["n_detections"], r["class_id"]) for r in rows] == [("decode", 0, None)]


def test_rollback_flow_restores_a_version_that_loads_and_predicts(tiny_run, prefect_harness):
    from flows.rollback import rollback
    from tasks import promote
    from tasks.adapters import mlflow as mlflow_adapter

    params_file, _, _ = tiny_run
    params = load_params(params_file)
    champion = mlflow_adapter.get_alias(params, "champion")
    second = mlflow_adapter.register_model(  # the same files once more as version 2 (the stage would find v1)
        params,
        run_id=champion.run_id,
        weights=params.base.paths.models / "train" / "best.pt",
        onnx=params.base.paths.models / "export" / "model.onnx",
        reports={},
    )
    promote.promote(params, version=second.version, why="test: newer version")
    moves = rollback(params_path=str(params_file), why="test: v2 misbehaves")
    assert moves == {"champion": ["2", "1"], "previous": ["1", "2"]}
    assert mlflow_adapter.get_alias(params, "champion").version == "1"
    trail = promote.read_audit(params)
    assert trail[-2].action == "rollback" and trail[-2].why == "test: v2 misbehaves"
