"""The monitor flow on a tiny world under the Prefect test harness, against a real MLflow store.

One clean production batch, then two with a lighting drift. The champion's log of the clean batch alone raises no
alarm; with the drifted batches the drift is confirmed (k = 2) and the trigger creates a ``continuous_learning`` flow
run of a retrain deployment (this module's own) with the drifted batches flagged (created is enough: no worker runs
it). Then a second version is promoted with the gate off: while it answers like its predecessor nothing happens; once
it answers worse on the same images (one box per image instead of five) the watch rolls it back, with an audit entry
(after a first attempt that finds the rollback target broken and moves nothing).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tasks import monitor as monitor_stage
from tasks.config import load_params
from tasks.contracts.audit import read_audit
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


# This module's own deployment: the Prefect harness is shared by every test module of a pytest-xdist worker, and
# other modules register ``continuous_learning/retrain`` and start runs of it.
DEPLOYMENT = "retrain-monitor-flow"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def _register_retrain_deployment() -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("continuous_learning")
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=DEPLOYMENT, entrypoint="flows/continuous_learning.py:continuous_learning"
        )
    return str(deployment_id)


async def _artifact_types(key: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return [str(a.type) for a in found]


async def _flow_runs_of(deployment_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory, prefect_harness) -> dict:
    from flows.bootstrap import bootstrap
    from flows.predict import predict

    root = tmp_path_factory.mktemp("monitor")
    data = tiny_params_dict(root, predict={"conf": 0.001, "max_det": 5, "shadow": {"share": 0.0}})
    data["world"].update(val_images=40)
    data["world"]["production"].update(
        batches=3,
        images_per_batch=40,
        scenario=["lighting"],
        severity_start=1.0,
        severity_end=1.0,
        drift_start=1,
        sources={"cam-a": {"share": 0.5}, "cam-b": {"share": 0.5}},
    )
    data["export"].update(targets=["onnx"])
    data["monitor"]["drift"].update(min_images=20)
    data["monitor"]["trigger"].update(deployment=f"continuous_learning/{DEPLOYMENT}")
    params_file = _write(root / "params.yaml", data)
    bootstrap(params_path=str(params_file))
    params = load_params(params_file)
    batches = sorted(p.name for p in params.base.paths.production.iterdir() if p.is_dir())
    predict(params_path=str(params_file), batches=batches[:1])
    return {"root": root, "data": data, "params_file": params_file, "batches": batches}


def test_a_clean_batch_raises_no_alarm_and_the_baseline_is_stored(world):
    params = load_params(world["params_file"])
    report = monitor_stage.run(params)
    assert [w.key for w in report.windows] == world["batches"][:1]
    (window,) = report.windows
    assert not window.drifted and not window.too_small, [s for s in window.signals if s.drifted]
    assert report.flagged_batches == [] and report.trigger is not None and not report.trigger.fire
    assert report.baseline["from"] == "artifact", "bootstrap stored it"
    assert report.baseline["images"] == 48, "val 40 + golden 8"
    client = MlflowClient(params.registry.tracking_uri)
    version = client.get_model_version(params.registry.model_name, "1")
    assert version.tags[monitor_stage.BASELINE_TAG] == "monitor/baseline.parquet"
    client.delete_model_version_tag(params.registry.model_name, "1", monitor_stage.BASELINE_TAG)
    again = monitor_stage.run(params)
    assert again.baseline["from"] == "computed", "a champion without a baseline gets one on demand"
    assert client.get_model_version(params.registry.model_name, "1").tags[monitor_stage.BASELINE_TAG]
    textfile = Path(report.textfile)
    text = textfile.read_text()
    assert 'visionloop_champion_info{model="visionloop-detector",version="1"} 1.0' in text
    assert "visionloop_drift_detected" in text and "visionloop_prediction_latency_seconds" in text


def test_confirmed_drift_creates_a_retrain_flow_run_with_the_drifted_batches(world):
    from flows.monitor import monitor
    from flows.predict import predict

    predict(params_path=str(world["params_file"]))
    deployment_id = asyncio.run(_register_retrain_deployment())
    result = monitor(params_path=str(world["params_file"]), start="deployment")
    drifted = world["batches"][1:]
    assert result["flagged_batches"] == drifted
    (run,) = asyncio.run(_flow_runs_of(deployment_id))
    assert run.parameters["drift_batches"] == drifted
    assert run.state is not None and run.state.type.value in ("SCHEDULED", "PENDING")
    params = load_params(world["params_file"])
    saved = json.loads((params.base.paths.reports / "monitor.json").read_text())
    assert saved["drift_confirmed"] and saved["trigger"]["started"] == str(run.id)
    windows = {w["key"]: w for w in saved["windows"]}
    assert not windows[world["batches"][0]]["drifted"] and all(windows[b]["drifted"] for b in drifted)
    assert any(s["drifted"] and s["side"] == "input" for s in windows[drifted[-1]]["signals"])
    assert "image" in asyncio.run(_artifact_types("monitor-distributions")), "plots reach the Prefect UI"
    assert "markdown" in asyncio.run(_artifact_types("monitor"))
    # the same drift again, inside the cool-down: no second run
    monitor(params_path=str(world["params_file"]), start="deployment")
    assert len(asyncio.run(_flow_runs_of(deployment_id))) == 1


def test_a_trigger_that_cannot_start_is_reported_and_retried(world):
    from flows.monitor import monitor

    params_file = world["root"] / "params-missing-deployment.yaml"
    data = json.loads(json.dumps(world["data"]))
    data["monitor"]["trigger"].update(deployment="continuous_learning/no-such-deployment", cooldown_hours=0)
    _write(params_file, data)
    params = load_params(params_file)
    monitor_stage.state_path(params).unlink(missing_ok=True)
    monitor(params_path=str(params_file), start="deployment")
    saved = json.loads((params.base.paths.reports / "monitor.json").read_text())
    assert saved["trigger"]["started"] is None and "no-such-deployment" in saved["trigger"]["error"]
    assert monitor_stage.read_state(params)["pending_batches"] == world["batches"][1:]
    again = monitor_stage.run(params)
    assert again.trigger is not None and again.trigger.fire, "a pending trigger fires again on the next run"


@pytest.mark.slow  # ~26 s: two promotions watched and one rolled back for real; CI's slow part runs it
def test_a_promoted_regression_is_rolled_back_and_a_good_one_is_kept(world):
    from flows.bootstrap import bootstrap
    from flows.monitor import monitor
    from flows.predict import predict

    params_file = world["params_file"]
    bootstrap(params_path=str(params_file))  # v2, promoted with the gate off (bootstrap always promotes)
    params = load_params(params_file)
    client = MlflowClient(params.registry.tracking_uri)
    assert str(client.get_model_version_by_alias(params.registry.model_name, "champion").version) == "2"
    predict(params_path=str(params_file))  # v2 answers like v1 on the same images
    kept = monitor(params_path=str(params_file), start="none")
    assert kept["watch"] is not None and not kept["rolled_back"], kept["watch"]
    worse = _write(
        world["root"] / "params-worse.yaml", {**world["data"], "predict": {**world["data"]["predict"], "max_det": 1}}
    )
    predict(params_path=str(worse), batches=world["batches"])  # now v2 answers one box per image
    # the rollback target no longer loads: nothing moves, the report and the next run say so
    target = Path(
        urllib.request.url2pathname(
            urllib.parse.urlparse(client.get_model_version_download_uri(params.registry.model_name, "1")).path
        )
    )
    hidden = target.with_name(target.name + ".hidden")
    target.rename(hidden)
    try:
        failed = monitor(params_path=str(params_file), start="none")
    finally:
        hidden.rename(target)
    assert not failed["rolled_back"]
    saved = json.loads((params.base.paths.reports / "monitor.json").read_text())
    assert saved["watch"]["regressed"] and "does not load and predict" in saved["watch"]["rollback_error"]
    assert str(client.get_model_version_by_alias(params.registry.model_name, "champion").version) == "2"
    result = monitor(params_path=str(params_file), start="none")
    assert result["rolled_back"], result["watch"]
    assert str(client.get_model_version_by_alias(params.registry.model_name, "champion").version) == "1"
    last = read_audit(params.promote.audit_log)[-2:]
    assert {r.action for r in last} == {"rollback"}
    assert "automatic rollback: v2 regressed against v1" in last[0].why
    saved = json.loads((params.base.paths.reports / "monitor.json").read_text())
    assert saved["watch"]["rolled_back"] and saved["watch"]["regressed"]


@pytest.mark.slow  # ~10 s on the module's world; CI's slow part runs it
def test_the_watch_scores_holdouts_through_the_detection_cache(world):
    import datetime as dt
    import shutil

    from tasks.adapters import mlflow as mlflow_adapter
    from tasks.targets.scoring import detection_cache_of

    params = load_params(world["params_file"])
    holdout = params.base.paths.holdouts / "cycle-watch-cache"
    shutil.copytree(params.base.paths.golden, holdout)
    for image in sorted((holdout / "images").iterdir())[::2]:  # other data than golden (scored at bootstrap)
        image.unlink()
        (holdout / "labels" / f"{image.stem}.txt").unlink(missing_ok=True)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    info = mlflow_adapter.get_version(params, "1")
    folder = detection_cache_of(params).folder
    assert folder is not None

    def entries() -> set[str]:
        return {p.name for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()

    before = entries()
    first = monitor_stage._holdout_windows(params, info, "1", since)
    stored = entries() - before
    assert [w.key for w in first] == ["cycle-watch-cache"] and stored, "the first watch run stores what it detected"
    second = monitor_stage._holdout_windows(params, info, "1", since)
    assert entries() - before == stored, "a second watch run finds both models' detections in the cache"
    assert second == first
    shutil.rmtree(holdout)
