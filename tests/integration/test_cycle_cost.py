"""A cycle's cost.json and its report line, from the stage reports of a cycle and the stores it grew.

Each stage's report is written through its own typed record, as the stages write them (no training, no
registration: the registry stage's pyfunc logging alone takes half a minute here); the training run is a real run of
a local MLflow store, and the report folder, ``cost.json`` included, must reach it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tasks import cycle
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.evaluate import EvaluateReport
from tasks.contracts.reports.label import LabelResult
from tasks.contracts.reports.predict import PredictResult
from tasks.contracts.reports.promote import PromoteResult
from tasks.contracts.reports.registry import RegistryResult
from tasks.decisions.cost import COST_STAGES, NO_REPORT, NO_WALL
from tests.browser.loop_data import write_export_report
from tests.conftest import tiny_params_dict
from tests.integration.test_license_record import trained
from tests.unit.test_cycle import GATE, SAMPLE

PRICES = {"currency": "EUR", "label_price_per_image": 0.25, "instance_price_per_hour": 1.8}


def write_stage_reports(params: Params) -> None:
    """Every stage of a cycle but validate and merge (they are the missing ones), each with its own wall time."""
    reports = params.base.paths.reports
    write_report(reports, "predict", PredictResult("visionloop-detector", "1", "champion", wall_s=18.0), params)
    write_report(reports, "sample", replace(SAMPLE, wall_s=2.0), params)
    label = LabelResult(
        cycle="c1",
        backend="files",
        project_id=None,
        imported=8,
        already_imported=0,
        collected=8,
        skipped=0,
        pending=0,
        labeled=8,
        min_labeled=4,
        waiting=False,
        labels_dir=str(params.base.paths.labels / "c1"),
        ledger=str(params.base.paths.labels / "ledger.parquet"),
        wall_s=4.0,
    )
    write_report(reports, "label", label, params)
    trained(params)  # the train report (with a real MLflow run) and a constant ONNX candidate
    write_report(reports, "train", replace(load_report(reports, "train"), wall_s=3000.0), params)
    write_report(reports, "evaluate", EvaluateReport(model="models/train/best.pt", wall_s=40.0), params)
    write_export_report(params)  # onnx selected, 1000 images/s at batch 4, 2 threads
    (reports / "gate.json").write_text(json.dumps(GATE | {"wall_s": 36.0}))
    run_id = load_report(reports, "train").mlflow_run_id
    with mlflow_adapter.mlflow_run(params, run_name="", run_id=run_id):  # what registering puts in the local store
        mlflow_adapter.log_folder(params.base.paths.models / "export", "model")
    version = RegistryResult("visionloop-detector", "2", run_id, f"runs:/{run_id}/model", {}, [])
    write_report(reports, "registry", version, params)
    write_report(reports, "promote", PromoteResult(action="reject", version="2"), params)


def grow_the_stores(params: Params) -> dict[str, int]:
    """What a cycle adds to the data, models and log folders; the bytes written per store."""
    paths = params.base.paths
    files = {
        "labels": paths.labels / "c1" / "labels" / "a.txt",
        "merged": paths.merged / "shards" / "000001.tar",
        "holdouts": paths.holdouts / "c1" / "images" / "h.png",
        "quarantine": paths.quarantine / "c1" / "q.png",
        "models": paths.models / "train" / "last.pt",
        "predictions": paths.predictions / "batch=b1" / "part-0.parquet",
    }
    sizes = {"labels": 700, "merged": 2_000_000, "holdouts": 30_000, "quarantine": 900, "models": 5_000_000}
    sizes["predictions"] = 64_000
    for store, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * sizes[store])
    return sizes


def test_the_cycle_report_prices_what_the_cycle_measured(tmp_path):
    params = Params.model_validate(tiny_params_dict(tmp_path, cycle={"cost": PRICES}))
    opened = cycle.start(params, cycle="c1")
    assert opened.sizes is not None and opened.sizes["labels"] == 0
    grown = grow_the_stores(params)
    write_stage_reports(params)

    report = cycle.run(params, cycle="c1", outcome="reject")

    folder = params.base.paths.reports / "cycles" / "c1"
    saved = load_report(params.base.paths.reports, "cost", path=folder / "cost.json")  # the typed record reads it
    expected_wall = {"predict": 18.0, "sample": 2.0, "label": 4.0, "train": 3000.0, "evaluate": 40.0, "gate": 36.0}
    assert {k: saved.compute.wall_s[k] for k in expected_wall} == expected_wall
    assert saved.compute.missing["validate"] == saved.compute.missing["merge"] == NO_REPORT
    for stage in ("export", "registry", "promote"):  # timed once their reports carry wall_s
        assert stage in saved.compute.wall_s or saved.compute.missing[stage] == NO_WALL
    assert set(saved.compute.wall_s) | set(saved.compute.missing) == set(COST_STAGES)
    assert saved.compute.hours == round(sum(saved.compute.wall_s.values()) / 3600, 6)
    assert saved.compute.cost == round(saved.compute.hours * 1.8, 6)

    assert (saved.labels.images, saved.labels.cost) == (8, 2.0)
    assert (saved.inference.artifact, saved.inference.throughput_ips, saved.inference.batch) == ("onnx", 1000.0, 4)
    assert saved.inference.cost_per_1k == round(1.0 / 3600 * 1.8, 6)

    added = saved.storage.added
    assert added is not None
    for store in ("labels", "merged", "holdouts", "quarantine", "predictions"):
        assert added[store] == grown[store], store
    assert added["models"] >= grown["models"] + len(b"checkpoint")  # plus the candidate's files
    assert (added["mlflow"] or 0) > 0 and (added["mlflow_db"] or 0) > 0  # the run's artifacts and rows (local store)
    assert saved.storage.cost_per_month is None and saved.total == round(2.0 + saved.compute.cost, 6)
    assert "no price set for storage_price_per_gb_month" in report.markdown
    assert f"| cost | compute {saved.compute.hours:.3f} h" in report.markdown
    assert "8 labels = 2.00 EUR" in (folder / "report.md").read_text()

    run_id = report.mlflow_run_id
    assert run_id is not None
    logged = {Path(a.path).name for a in mlflow_adapter.client(params).list_artifacts(run_id, "cycles/c1")}
    assert {"cost.json", "report.md", "report.json"} <= logged
