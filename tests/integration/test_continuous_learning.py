"""The continuous-learning flow end to end on a tiny world: real Label Studio, real MLflow store, Prefect harness.

bootstrap → predict → loop run 1 (nothing annotated yet: ends waiting for labels) → the annotator simulator answers
the tasks through Label Studio's API → loop run 2 continues the same cycle without importing anything twice, and
retrains, gates, registers the challenger with lineage, decides and reports → loop run 3 opens a new cycle (a
reviewer refuses its promotion) → a fourth cycle whose champion is moved by hand while it waits for approval is
not promoted over the new champion (compare-and-set).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

from tasks import cycle, promote
from tasks.adapters import labelstudio, model_cache
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import load_params
from tasks.contracts.ledger import ledger_path, read_ledger
from tasks.sim import annotator
from tests.conftest import tiny_params_dict
from tests.integration.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("labelstudio_env")]


@pytest.fixture(scope="module")
def loop(server: Server, labelstudio_env: Server, prefect_harness) -> dict:
    from flows.bootstrap import bootstrap
    from flows.continuous_learning import continuous_learning

    root = server.root / "loop"
    data = tiny_params_dict(root, predict={"conf": 0.001, "max_det": 5})
    data["label"].update(project_title="visionloop-loop-it", document_root=str(server.root), min_labeled=4)
    data["label"].update(retries=1, retry_delay_s=0.5, wait_timeout_s=0, poll_s=1)
    data["sample"].update(budget=8, max_per_day=None, phash_distance=None)
    data["world"]["production"].update(images_per_batch=12)  # 24 images: three cycles of 8
    data["merge"].update(holdout_fraction=0.25)
    data["cycle"].update(epochs=1)
    data["export"].update(targets=["onnx", "onnx_int8"])  # what ships may differ from the FP32 ONNX
    params_file = root / "params.yaml"
    root.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    bootstrap(params_path=str(params_file))
    first = continuous_learning(params_path=str(params_file), return_state=True)
    params = load_params(params_file)
    (opened,) = [p.name for p in params.base.paths.samples.iterdir() if p.is_dir()]
    ledger_after_first = read_ledger(ledger_path(params))
    state_after_first = cycle.read_state(params, opened)
    answered = annotator.run(params)
    second = continuous_learning(params_path=str(params_file))
    label_report = json.loads((params.base.paths.reports / "label.json").read_text())
    third = continuous_learning(params_path=str(params_file), return_state=True)
    return {
        "params_file": params_file,
        "first": first,
        "cycle": opened,
        "ledger_after_first": ledger_after_first,
        "state_after_first": state_after_first,
        "answered": answered,
        "second": second,
        "label_report": label_report,
        "third": third,
    }


def test_first_run_waits_for_labels(loop):
    state = loop["first"]
    assert state.is_completed() and state.name == "WaitingForLabels"
    assert "the next run continues this cycle" in state.message
    saved = loop["state_after_first"]
    assert saved is not None and saved.status == "waiting" and saved.outcome == "waiting for labels"
    assert len(loop["ledger_after_first"]) == 8  # the sample budget, all queued in Label Studio
    assert {r["status"] for r in loop["ledger_after_first"].values()} == {"queued"}


def test_second_run_continues_the_cycle_without_importing_twice(loop):
    params = load_params(loop["params_file"])
    assert loop["answered"].answered == 8
    report = loop["label_report"]
    assert report["cycle"] == loop["cycle"]
    assert (report["imported"], report["already_imported"], report["labeled"]) == (0, 8, 8)
    ledger = {k: r for k, r in read_ledger(ledger_path(params)).items() if r["cycle"] == loop["cycle"]}
    assert len(ledger) == 8 and {r["task_id"] for r in ledger.values()} == {
        r["task_id"] for r in loop["ledger_after_first"].values()
    }
    saved = cycle.read_state(params, loop["cycle"])
    assert saved.status == "closed" and saved.runs == 2 and saved.outcome in {"promote", "reject"}
    assert loop["second"]["decision"] == saved.outcome


def test_challenger_is_registered_with_lineage_and_the_decision_is_applied(loop):
    params = load_params(loop["params_file"])
    client = MlflowClient(params.registry.tracking_uri)
    name = params.registry.model_name
    candidate = client.get_model_version(name, "2")
    tags = candidate.tags
    assert tags["parent_version"] == "1" and tags["cycle"] == loop["cycle"] and tags["warm_start"] == "True"
    assert not {"base_weights", "sample_manifest", "gx_report", "merge_manifest_md5"} & set(tags)  # files, not tags
    assert tags["gate_decision"] in {"promote", "reject"}
    trail = promote.read_audit(params)
    actions = [(r.action, r.alias, r.to_version) for r in trail]
    assert ("challenge", "challenger", "2") in actions
    champion = client.get_model_version_by_alias(name, "champion")
    if loop["second"]["decision"] == "promote":
        assert str(champion.version) == "2"
        assert str(client.get_model_version_by_alias(name, "previous").version) == "1"
    else:
        assert str(champion.version) == "1" and candidate.tags["rejected"] == "true"
        assert ("reject", None, "2") in actions


def test_cycle_report_is_written_and_logged(loop):
    params = load_params(loop["params_file"])
    folder = params.base.paths.reports / "cycles" / loop["cycle"]
    for name in ("report.md", "report.json", "cost.json", "per_class_ap.png", "strategies.png", "confidence.png"):
        assert (folder / name).is_file(), name
    markdown = (folder / "report.md").read_text()
    assert "## Gate: candidate vs champion on the same sets" in markdown and "golden" in markdown
    summary = json.loads((folder / "report.json").read_text())["summary"]
    assert summary["sampled"] == 8 and summary["labeled"] == 8 and summary["candidate_version"] == "2"
    assert sum(summary["sampled_by_strategy"].values()) == 8
    client = MlflowClient(params.registry.tracking_uri)
    run_id = client.get_model_version(params.registry.model_name, "2").run_id
    logged = {a.path for a in client.list_artifacts(run_id, f"cycles/{loop['cycle']}")}
    assert {f"cycles/{loop['cycle']}/{name}" for name in ("report.md", "cost.json")} <= logged
    assert "| cost | compute " in markdown and "8 labels" in markdown  # measured; no price set in params.yaml


def test_the_gate_scores_what_each_model_deploys(loop):
    params = load_params(loop["params_file"])
    gate = json.loads((params.base.paths.reports / "gate.json").read_text())
    export = json.loads((params.base.paths.reports / "export.json").read_text())
    assert export["selected"]["target"] in {"onnx", "onnx_int8"}
    assert gate["candidate"] == export["selected"]["path"]  # the artifact the candidate would ship ...
    deployed = model_cache.find_deployed(params, mlflow_adapter.get_version(params, "1"))
    assert deployed.fallback is None and gate["champion"] == str(deployed.path)  # ... against the champion's
    assert gate["latency"] is None or gate["latency"]["fallback"] is None


def test_rerunning_a_finished_cycle_changes_nothing(loop):
    from flows.continuous_learning import continuous_learning

    params = load_params(loop["params_file"])
    cycles = sorted(p.name for p in params.base.paths.samples.iterdir() if p.is_dir())
    assert len(cycles) == 2 and cycles[0] == loop["cycle"]  # the third run opened a new cycle
    client = MlflowClient(params.registry.tracking_uri)
    name = params.registry.model_name
    sdk = labelstudio.connect(params.label)
    ledger = read_ledger(ledger_path(params))
    project_id = next(iter(ledger.values()))["project_id"]

    def snapshot() -> tuple:
        versions = len(client.search_model_versions(f"name='{name}'"))
        tasks = len(list(sdk.tasks.list(project=project_id, fields="task_only")))
        rows = pq.read_metadata(params.base.paths.merged / "manifest.parquet").num_rows
        return versions, tasks, rows

    before = snapshot()
    again = continuous_learning(params_path=str(loop["params_file"]), cycle=loop["cycle"])
    assert snapshot() == before
    assert again["cycle"] == loop["cycle"] and again["outcome"] == loop["second"]["outcome"]
    assert cycle.read_state(params, loop["cycle"]).runs == 2  # not even counted as a run


def _answer_pause(stop: threading.Event, run_input: dict, seen: list, before_resume=None) -> None:
    """Play the reviewer: resume the first paused flow run with ``run_input`` (as the UI's Resume form does),
    after calling ``before_resume`` (what happens elsewhere while the run waits)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    while not stop.wait(1):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=paused)
        for run in runs:
            seen.append(run.name)
            if before_resume is not None:
                before_resume()
            resume_flow_run(run.id, run_input=run_input)
            return


def _relaxed(params_file: Path) -> Path:
    """The loop's params with a gate that passes anything: these tests are about what happens after the gate."""
    data = yaml.safe_load(params_file.read_text())
    data["gate"].update(min_production_gain=-1.0, max_golden_loss=1.0, max_class_drop=None, max_latency_factor=None)
    relaxed = params_file.with_name("params-relaxed.yaml")
    relaxed.write_text(yaml.safe_dump(data, sort_keys=False))
    return relaxed


@pytest.mark.slow  # ~40-80 s: a paused flow run resumed through the Prefect API; CI's slow part runs it
def test_promotion_waits_for_approval_and_a_refusal_keeps_the_champion(loop):
    from flows.continuous_learning import continuous_learning

    relaxed = _relaxed(loop["params_file"])
    params = load_params(relaxed)
    annotator.run(params)  # the open cycle's tasks (the third run queued them)
    client = MlflowClient(params.registry.tracking_uri)
    name = params.registry.model_name
    before = str(client.get_model_version_by_alias(name, "champion").version)

    stop, seen = threading.Event(), []
    reviewer = threading.Thread(
        target=_answer_pause,
        args=(stop, {"approve": False, "reviewer": "qa-lead", "note": "holdout too small"}, seen),
        daemon=True,
    )
    reviewer.start()
    try:
        summary = continuous_learning(params_path=str(relaxed), require_approval=True)
    finally:
        stop.set()
        reviewer.join(timeout=30)
    assert seen, "the flow never paused for approval"
    assert summary["decision"] == "promote"  # the gate said yes ...
    assert summary["outcome"] == "reject"  # ... the reviewer said no
    assert str(client.get_model_version_by_alias(name, "champion").version) == before
    last = promote.read_audit(params)[-1]
    assert last.action == "reject" and "not approved by qa-lead: holdout too small" in last.why


@pytest.mark.slow  # ~35 s: a second paused run; CI's slow part runs it
def test_a_champion_moved_while_the_cycle_waits_for_approval_is_not_overwritten(loop):
    from flows.continuous_learning import continuous_learning

    relaxed = _relaxed(loop["params_file"])
    params = load_params(relaxed)
    opened = continuous_learning(params_path=str(relaxed), return_state=True)  # a new cycle: its tasks are queued
    assert opened.name == "WaitingForLabels"
    annotator.run(params)
    client = MlflowClient(params.registry.tracking_uri)
    name = params.registry.model_name
    gated_against = str(client.get_model_version_by_alias(name, "champion").version)
    other = "2" if gated_against == "1" else "1"

    def hotfix() -> None:  # someone promotes another version while the cycle waits for its reviewer
        promote.promote(params, version=other, why="hotfix promoted by hand", who="ops@plant")

    stop, seen = threading.Event(), []
    reviewer = threading.Thread(
        target=_answer_pause,
        args=(stop, {"approve": True, "reviewer": "qa-lead", "note": "looks good"}, seen, hotfix),
        daemon=True,
    )
    reviewer.start()
    try:
        summary = continuous_learning(params_path=str(relaxed), require_approval=True)
    finally:
        stop.set()
        reviewer.join(timeout=30)
    assert seen, "the flow never paused for approval"
    assert summary["decision"] == "promote"  # the gate and the reviewer said yes ...
    assert summary["outcome"] == "reject" and summary["promote_action"] == "reject"  # ... the champion had moved
    reason = (
        f"champion moved from v{gated_against} to v{other} while v{summary['candidate_version']} was trained and "
        f"gated against v{gated_against}; re-run the cycle to judge it against v{other}"
    )
    assert summary["promote_why"] == [reason]
    assert str(client.get_model_version_by_alias(name, "champion").version) == other
    last = promote.read_audit(params)[-1]
    assert last.action == "reject" and last.why == reason and last.to_version == summary["candidate_version"]
    saved = cycle.read_state(params, summary["cycle"])
    assert saved.status == "closed" and saved.outcome == "reject"


async def _prefect_texts() -> list[str]:
    """Every artifact's data and every log message the harness's Prefect API holds."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifacts = await client.read_artifacts()
        logs = await client.read_logs()
    return [json.dumps(a.data, default=str) for a in artifacts] + [entry.message for entry in logs]


def test_the_label_studio_token_is_in_no_store(loop):
    """A canary: the token the whole loop ran with appears in no file it wrote (logs, reports, the prediction log,
    the MLflow store and its artifacts, DVC files) and in no Prefect artifact or log."""
    import asyncio

    from tests.integration.conftest import TOKEN

    root = Path(loop["params_file"]).parent
    canary = TOKEN.encode()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) > 50 and any(p.name == "mlflow.db" for p in files), "the loop's stores are all below its root"
    leaked = [str(p.relative_to(root)) for p in files if canary in p.read_bytes()]
    assert leaked == [], f"the Label Studio token leaked into {leaked}"
    texts = asyncio.run(_prefect_texts())
    assert texts and not [t[:200] for t in texts if TOKEN in t], "the token leaked into a Prefect artifact or log"
