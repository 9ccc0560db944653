"""The loop's decisions are the right ones, through the real flow: cases that must promote, must reject, and the
approval paths (approved, nobody answers). Real Label Studio, real MLflow sqlite store, Prefect harness.

One world, four cycles in a row (each fixture continues where the previous one stopped):

1. must promote: the bootstrap champion is genuinely weak (1 epoch from the yaml: mAP 0); the cycle retrains from it for
   ``cycle.epochs`` on the same data and the real gate re-scores both on the same images: promote, by its margins.
2. must reject: the candidate is deliberately damaged (the train stage's model family wrapped: the kernels of the
   checkpoint its training hands on are shuffled before evaluate/export/gate see it; the flow itself is unchanged):
   the real gate rejects.
3. approval approved: a reviewer resumes the paused run with ``approve=True``: promoted, the reviewer in the audit.
4. approval timeout: nobody answers within ``promote.approval_timeout_s``: not promoted, the champion stays.
5. license refusal: ``gate.license.policy: commercial``, the gate passing anything and approval required: the YOLO
   candidate (AGPL model code and weights) is rejected by the license gate without asking a reviewer; the refused
   components reach the version's tags, the audit entry and the cycle report.

Cycles 3 and 4 are about what happens after the gate, so their gate passes anything (as in
``test_continuous_learning``'s approval tests); cycles 1 and 2 run the gate of ``params.yaml`` unchanged. A refused
approval is tested in ``test_continuous_learning`` (``test_promotion_waits_for_approval_and_a_refusal_...``).

~5-6 min on 2 cores (two trainings of 25 epochs at 96 px dominate): marked slow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from tasks import promote
from tasks.config import Params, load_params
from tasks.contracts.license_record import RECORD_TAG, kind_summaries, parse_record
from tasks.contracts.reports import load_report
from tasks.contracts.reports.gate import GateReport
from tasks.sim import annotator
from tests.conftest import tiny_params_dict
from tests.integration.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("labelstudio_env")]

CLEARLY_BETTER = 0.05  # golden mAP50-95 points the retrained candidate must beat the 1-epoch champion by
REVIEWER = {"approve": True, "reviewer": "qa-lead", "note": "holdout looks right"}


# ------------------------------------------------------------------------------------------------ helpers


def _world_params(root: Path) -> dict[str, Any]:
    """A world small enough for CPU, big enough for a decided gate: 96 px, 200 training images, 48 golden.

    The first champion trains 1 epoch (mAP50-95 0.0000 on every set: no resample of the paired bootstrap can favour
    it); a cycle retrains ``cycle.epochs`` = 25 from it (0.20 golden mAP50-95 measured here). AdamW with a short
    warm-up: ``optimizer: auto`` picks a learning rate too small to learn anything in so few iterations. No drift
    (severity 0): the production holdouts look like golden.
    """
    data = tiny_params_dict(root, predict={"conf": 0.001, "max_det": 5})
    data["base"].update(imgsz=96)
    data["world"].update(image_size=[96, 96], train_images=200, val_images=16, golden_images=48)
    data["world"]["production"].update(batches=2, images_per_batch=20, severity_start=0.0, severity_end=0.0)
    data["train"].update(epochs=1, batch=16)
    data["train"]["yolo"].update(optimizer="AdamW", lr0=0.003, extra_args={"warmup_epochs": 1})
    data["label"].update(project_title="visionloop-decisions-it", document_root=str(root.parent), min_labeled=4)
    data["label"].update(retries=1, retry_delay_s=0.5, wait_timeout_s=0, poll_s=1)
    data["sample"].update(budget=8, max_per_day=None, phash_distance=None)
    data["merge"].update(holdout_fraction=0.5)
    data["cycle"].update(epochs=25)
    data["export"].update(targets=["onnx"])
    return data


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _variant(params_file: Path, name: str, **sections: dict[str, Any]) -> Path:
    """The world's params with some keys changed (same paths, same stores), written beside it."""
    data = yaml.safe_load(params_file.read_text())
    for section, values in sections.items():
        data[section].update(values)
    return _write(params_file.with_name(f"params-{name}.yaml"), data)


def _open_and_label(params_file: Path) -> None:
    """Open a new cycle (its sampled images queued in Label Studio, the run waits) and let the simulator label it."""
    from flows.continuous_learning import continuous_learning

    opened = continuous_learning(params_path=str(params_file), return_state=True)
    assert opened.is_completed() and opened.name == "WaitingForLabels", opened
    assert annotator.run(load_params(params_file)).answered >= 4


def _champion(params: Params) -> str:
    client = MlflowClient(params.registry.tracking_uri)
    return str(client.get_model_version_by_alias(params.registry.model_name, "champion").version)


def _gate(params: Params) -> GateReport:
    report: GateReport = load_report(params.base.paths.reports, "gate")
    return report


def _golden_gain(gate: GateReport) -> float:
    golden = gate.sets["golden"]
    assert golden.candidate_map50_95 is not None and golden.champion_map50_95 is not None
    return golden.candidate_map50_95 - golden.champion_map50_95


def _numbers(gate: GateReport) -> str:
    """The gate's mAP50-95 per set, one line (printed: ``pytest -rP`` shows what the decision rested on)."""
    sets = [
        f"{name} {s.images} img: cand {s.candidate_map50_95:.4f} champ {s.champion_map50_95:.4f} "
        f"CI [{s.interval.low:+.4f}, {s.interval.high:+.4f}]"
        for name, s in gate.sets.items()
        if s.champion_map50_95 is not None and s.interval is not None
    ]
    return f"{gate.decision}: " + "; ".join(sets)


def _shuffle_kernels(checkpoint: Path) -> int:
    """Damage a checkpoint in place: every conv kernel's values shuffled (seeded); same shapes, sizes and speed,
    batch-norm statistics untouched (so activations stay finite). Returns the number of kernels shuffled."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    shuffled = 0
    for key in ("model", "ema"):
        if ckpt.get(key) is None:
            continue
        with torch.no_grad():
            for tensor in ckpt[key].state_dict().values():
                if tensor.is_floating_point() and tensor.dim() == 4:
                    flat = tensor.view(-1)
                    flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
                    shuffled += 1
    torch.save(ckpt, checkpoint)
    return shuffled


def _resume_when_paused(params_file: Path, run_input: dict[str, Any], stop: threading.Event, seen: list) -> None:
    """Play the reviewer: resume this world's first paused ``continuous_learning`` run with ``run_input``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    flows = FlowFilter(name=FlowFilterName(any_=["continuous_learning"]))
    while not stop.wait(1):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=flows, flow_run_filter=paused)
        for run in runs:
            if run.parameters.get("params_path") == str(params_file):
                seen.append(run.id)
                resume_flow_run(run.id, run_input=run_input)
                return


def _last_run(params_file: Path) -> tuple[Any, list[tuple[str, str | None, str | None]]]:
    """This world's newest ``continuous_learning`` run as the Prefect API has it, and ``(type, name, message)`` of
    every state it went through, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    flows = FlowFilter(name=FlowFilterName(any_=["continuous_learning"]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=flows, sort=FlowRunSort.START_TIME_DESC, limit=20)
        run = next(r for r in runs if r.parameters.get("params_path") == str(params_file))
        states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
    return run, [(s.type.value, s.name, s.message) for s in states]


def _run_cycle(params_file: Path, *, reviewer: dict[str, Any] | None = None, **flow_args: Any) -> dict[str, Any]:
    """Run the flow once (a reviewer answering the pause when given) and collect what the tests look at."""
    from flows.continuous_learning import continuous_learning

    params = load_params(params_file)
    before = _champion(params)
    stop = threading.Event()
    seen: list[Any] = []
    thread = None
    if reviewer is not None:
        thread = threading.Thread(target=_resume_when_paused, args=(params_file, reviewer, stop, seen), daemon=True)
        thread.start()
    try:
        summary = continuous_learning(params_path=str(params_file), **flow_args)
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
    run, states = _last_run(params_file)
    return {
        "params": params,
        "state": run.state,
        "states": states,
        "summary": summary,
        "champion_before": before,
        "champion_after": _champion(params),
        "gate": _gate(params),
        "audit": promote.read_audit(params),
        "resumed": seen,
    }


# ----------------------------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def params_file(server: Server, labelstudio_env: Server, prefect_harness) -> Path:
    """The world and a weak first champion (bootstrap: 1 epoch from the yaml)."""
    from flows.bootstrap import bootstrap

    path = _write(server.root / "decisions" / "params.yaml", _world_params(server.root / "decisions"))
    bootstrap(params_path=str(path))
    return path


@pytest.fixture(scope="module")
def promoted(params_file: Path) -> dict[str, Any]:
    """Cycle 1: the candidate retrained for 25 epochs from the 1-epoch champion, judged by the real gate."""
    _open_and_label(params_file)
    return _run_cycle(params_file)


class _DamagedTraining:
    """A model family whose training goes wrong: ``fit`` hands on a checkpoint with shuffled kernels.

    The damage happens before the train stage hashes the checkpoint into ``reports/train.json``: the flow records,
    evaluates, exports, gates and registers the damaged file as its own, the way a genuinely bad training would
    reach them (damaging ``best.pt`` after the stage is refused by the checkpoint trust check, rightly).
    """

    def __init__(self, inner: Any, shuffled: list[int]) -> None:
        self._inner, self._shuffled = inner, shuffled

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def fit(self, *args: Any, **kwargs: Any) -> Any:
        fitted = self._inner.fit(*args, **kwargs)
        self._shuffled.append(_shuffle_kernels(Path(fitted.checkpoint)))
        return fitted


@pytest.fixture(scope="module")
def rejected(promoted: dict[str, Any], params_file: Path) -> Iterator[dict[str, Any]]:
    """Cycle 2: the cycle's training hands on a damaged checkpoint (the flow unchanged); the real gate judges."""
    import tasks.train

    _open_and_label(params_file)
    family: Callable[[Params], Any] = tasks.train.family
    shuffled: list[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks.train, "family", lambda params: _DamagedTraining(family(params), shuffled))
        result = _run_cycle(params_file, epochs=1)
    yield {**result, "damaged": shuffled}


@pytest.fixture(scope="module")
def relaxed(params_file: Path) -> Path:
    """A gate that passes anything: cycles 3 and 4 are about what happens after it."""
    gate = {"min_production_gain": -1.0, "max_golden_loss": 1.0, "max_class_drop": None, "max_latency_factor": None}
    return _variant(params_file, "relaxed", gate=gate)


@pytest.fixture(scope="module")
def approved(rejected: dict[str, Any], relaxed: Path) -> dict[str, Any]:
    """Cycle 3: approval required; a reviewer resumes the paused run with ``approve=True``."""
    _open_and_label(relaxed)
    return _run_cycle(relaxed, reviewer=REVIEWER, epochs=1, require_approval=True)


@pytest.fixture(scope="module")
def timed_out(approved: dict[str, Any], relaxed: Path) -> dict[str, Any]:
    """Cycle 4: approval required within 3 s; nobody answers."""
    short = _variant(relaxed, "timeout", promote={"require_approval": True, "approval_timeout_s": 3})
    _open_and_label(short)
    return _run_cycle(short, epochs=1)


@pytest.fixture(scope="module")
def license_refused(timed_out: dict[str, Any], relaxed: Path) -> dict[str, Any]:
    """Cycle 5: a proprietary product's policy; approval required (nobody should be asked)."""
    gcc = {"license": "GPL-3.0-or-later WITH GCC-exception-3.1", "reference": "GCC runtime exception, reviewed"}
    commercial = _variant(
        relaxed,
        "commercial",
        gate={"license": {"policy": "commercial", "exceptions": [gcc]}},
        promote={"require_approval": True, "approval_timeout_s": 600},
    )
    _open_and_label(commercial)
    return _run_cycle(commercial, epochs=1)


# ------------------------------------------------------------------------------------------------- tests


def test_a_clearly_better_candidate_is_promoted(promoted):
    summary, gate = promoted["summary"], promoted["gate"]
    print("cycle 1 (weak champion) gate:", _numbers(gate))
    assert promoted["state"].is_completed(), promoted["states"]
    assert summary["decision"] == "promote" and summary["outcome"] == "promote", gate.reasons
    assert summary["promote_action"] == "promote"
    version = summary["candidate_version"]
    assert (promoted["champion_before"], version, promoted["champion_after"]) == ("1", "2", "2")
    client = MlflowClient(promoted["params"].registry.tracking_uri)
    name = promoted["params"].registry.model_name
    assert str(client.get_model_version_by_alias(name, "previous").version) == "1"
    assert client.get_model_version(name, version).tags["gate_decision"] == "promote"

    # the gate's own numbers: both models re-scored on golden and the production holdouts, every rule passed
    assert set(gate.sets) == {"golden", "production"} and gate.sets["production"].images >= 4
    assert all(r.passed for r in gate.reasons) and "production_gain" in {r.code for r in gate.reasons}
    assert _golden_gain(gate) >= CLEARLY_BETTER, gate.sets["golden"]
    production = gate.sets["production"]
    assert production.interval is not None and production.interval.low >= gate.policy["min_production_gain"]
    assert gate.policy["max_golden_loss"] == 0.01 and gate.policy["max_latency_factor"] == 1.5  # params.yaml's gate

    # the audit trail: challenger, then previous and champion moved, the gate's reasons as the why
    moves = [(r.action, r.alias, r.from_version, r.to_version) for r in promoted["audit"]]
    assert moves[-3:] == [
        ("challenge", "challenger", None, "2"),
        ("promote", "previous", None, "1"),
        ("promote", "champion", "1", "2"),
    ]
    why = promoted["audit"][-1].why
    assert all(r.message in why for r in gate.reasons), why


def test_a_damaged_candidate_is_rejected(rejected):
    summary, gate = rejected["summary"], rejected["gate"]
    print("cycle 2 (damaged candidate) gate:", _numbers(gate))
    assert rejected["damaged"] and rejected["damaged"][0] > 50  # the wrapper ran and shuffled the kernels
    assert rejected["state"].is_completed(), rejected["states"]
    assert summary["decision"] == "reject" and summary["outcome"] == "reject"
    version = summary["candidate_version"]
    assert version == "3" and rejected["champion_before"] == rejected["champion_after"] == "2"

    # the gate decided on numbers: the damaged candidate lost golden mAP beyond the allowed loss
    assert _golden_gain(gate) < -gate.policy["max_golden_loss"], gate.sets["golden"]
    failed = [r for r in gate.reasons if not r.passed]
    assert "golden_loss" in {r.code for r in failed}

    client = MlflowClient(rejected["params"].registry.tracking_uri)
    tags = client.get_model_version(rejected["params"].registry.model_name, version).tags
    assert tags["rejected"] == "true" and tags["gate_decision"] == "reject"
    assert tags["reject_reasons"] == "; ".join(r.message for r in failed)
    last = rejected["audit"][-1]
    assert (last.action, last.alias, last.to_version) == ("reject", None, version)
    assert last.why == tags["reject_reasons"]


def test_an_approved_promotion_records_the_reviewer(approved):
    summary = approved["summary"]
    assert approved["resumed"], "the flow never paused for approval"
    assert approved["state"].is_completed(), approved["states"]
    assert any(kind == "PAUSED" for kind, _, _ in approved["states"]), approved["states"]
    assert summary["decision"] == "promote" and summary["outcome"] == "promote"
    version = summary["candidate_version"]
    assert version == "4" and approved["champion_before"] == "2" and approved["champion_after"] == "4"
    last = approved["audit"][-1]
    assert (last.action, last.alias, last.from_version, last.to_version) == ("promote", "champion", "2", "4")
    assert last.why.endswith("approved by qa-lead: holdout looks right"), last.why


def test_nobody_answering_in_time_promotes_nothing(timed_out):
    summary = timed_out["summary"]
    assert isinstance(summary, dict), f"the flow returned no summary: {summary!r} ({timed_out['states']})"
    assert any(kind == "PAUSED" for kind, _, _ in timed_out["states"]), timed_out["states"]
    assert summary["decision"] == "promote"  # the gate said yes ...
    assert summary["outcome"] == "reject" and summary["promote_action"] == "reject"  # ... nobody approved
    version = summary["candidate_version"]
    assert version == "5" and timed_out["champion_before"] == timed_out["champion_after"] == "4"
    last = timed_out["audit"][-1]
    assert (last.action, last.to_version) == ("reject", version)
    assert last.why.startswith("not approved by nobody: no approval (") and "Timeout" in last.why, last.why
    params = timed_out["params"]
    tags = MlflowClient(params.registry.tracking_uri).get_model_version(params.registry.model_name, version).tags
    assert tags["rejected"] == "true" and tags["reject_reasons"] == last.why


def test_an_approval_timeout_ends_the_run_completed(timed_out):
    assert timed_out["state"].is_completed(), timed_out["states"]


def test_under_a_commercial_policy_the_agpl_candidate_is_refused_naming_it(license_refused):
    summary, params = license_refused["summary"], license_refused["params"]
    assert license_refused["state"].is_completed() and license_refused["state"].name == "Completed"
    assert not any(t == "PAUSED" for t, _, _ in license_refused["states"])  # no reviewer was asked
    assert summary["decision"] == "promote"  # the (relaxed) gate passed it ...
    assert summary["outcome"] == "reject" and summary["promote_action"] == "reject"  # ... the license gate did not
    assert license_refused["champion_after"] == license_refused["champion_before"]
    version = summary["candidate_version"]
    tags = MlflowClient(params.registry.tracking_uri).get_model_version(params.registry.model_name, version).tags
    assert tags["license.verdict"] == "refused" and tags["license.policy"] == "commercial"
    assert "yolo: ultralytics" in tags["license.refused"] and "[AGPL]" in tags["license.refused"]
    assert "under GCC runtime exception, reviewed" in tags["license.excepted"]
    bundled = kind_summaries(parse_record(tags[RECORD_TAG], where="test"))["bundled"]
    assert "FFmpeg in opencv-python" in bundled and "LGPL: " in tags["license.obligations"]
    last = license_refused["audit"][-1]
    assert (last.action, last.to_version) == ("reject", version)
    assert last.why.startswith("license gate (commercial): ") and "yolo: ultralytics" in last.why
    assert summary["license_refused"] and "AGPL" in summary["license_refused"][0]
    report = (params.base.paths.reports / "cycles" / summary["cycle"] / "report.md").read_text()
    assert "## Licenses" in report and "policy **commercial**: refused" in report
    assert "| model_code | yolo: ultralytics" in report and "Not promoted:" in report
