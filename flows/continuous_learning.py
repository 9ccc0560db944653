"""Flow ``continuous_learning``: sample → label → validate → merge → retrain → evaluate → export → gate → register
the challenger → promote or keep the champion, with a report per cycle.

Labeling can wait: when fewer than ``label.min_labeled`` images of the cycle are labeled after
``label.wait_timeout_s``, the run ends in the state ``WaitingForLabels`` and the next run continues the same cycle
(the label ledger makes sure nothing is imported twice and no annotation is lost). With
``promote.require_approval`` the run pauses before a promotion until someone approves it in the Prefect UI.

The promotion is a compare-and-set on the champion the candidate was gated against: when a rollback or another
cycle moved the champion meanwhile, the candidate is rejected with that reason (outcome ``reject``; the returned
summary's ``promote_why`` says why) instead of silently replacing the new champion.

One cycle at a time: the run holds the cycle lease (``tasks.cycle.lease``: a file lock beside the audit trail for
the embedded store, a lease on the MLflow server otherwise, so clones and hosts sharing the server are covered too)
from start to end. A second run started meanwhile does not wait: it ends at once in the state ``CycleBusy`` with a
message naming the run that holds the lease and since when. Waiting would start a second cycle on the same data
right after the first; the deployments queue their own runs instead (``concurrency_limit`` in ``prefect.yaml``).

Alerts (``flows.alerts``, when a webhook is configured): ``approval_pending`` before the pause, ``labels_waiting``
when a run ends waiting for labels on a cycle open longer than ``monitor.alerts.labels_deadline_hours``,
``failed_run`` when the run fails or crashes. ``drift_batches`` (set by the monitor's trigger) adds batches to
``sample.drift_batches``.

Run: ``python -m flows.continuous_learning [--params P ...] [--cycle NAME] [--epochs N] [--drift-batch B ...]`` or the
``retrain-nightly`` / ``retrain`` deployments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Completed, Running, State

from flows import fanout, stages
from flows.alerts import alert, labels_overdue, on_failed_run
from flows.preflight import require_servers
from tasks.config import DEFAULT_PARAMS, Params, load_params
from tasks.contracts.reports.cycle import CycleReport
from tasks.contracts.reports.gate import GateReport
from tasks.contracts.reports.label import LabelResult
from tasks.contracts.sample_manifest import manifest_path
from tasks.cycle import CycleState, Status, candidate_lineage, read_report
from tasks.cycle import lease as cycle_lease
from tasks.decisions import approval
from tasks.decisions.license_gate import refusals_in_tags
from tasks.env import apply_env
from tasks.registry import describe_pin

WAITING = "waiting for labels"


class Approval(RunInput):
    """What the Prefect UI asks before a promotion when ``promote.require_approval`` is on."""

    approve: bool = False
    reviewer: str = ""
    note: str = ""


def _publish(report: CycleReport) -> None:
    """The cycle report as Prefect artifacts (markdown + the summary table); the PNGs are in MLflow and on disk."""
    key = "cycle-" + report.cycle.lower().replace("_", "-").replace(".", "-")
    create_markdown_artifact(key=key, markdown=report.markdown, description=f"cycle {report.cycle}: {report.outcome}")
    s = report.summary
    rows = [
        {"set": name, "champion": s["champion_map50_95"].get(name), "candidate": value}
        for name, value in s["candidate_map50_95"].items()
    ]
    if rows:
        create_table_artifact(key=f"{key}-gate", table=rows, description="mAP50-95 on the gate's sets")


def _close(params: Params, state: CycleState, outcome: str, *, status: Status = "closed") -> CycleReport:
    since = dt.datetime.fromisoformat(state.started_at)
    report = stages.cycle(params, state.cycle, outcome, since=since)
    stages.cycle_finish(params, state, status, outcome)
    _publish(report)
    print(report.markdown)
    return report


@flow(name="continuous_learning", log_prints=True, on_failure=[on_failed_run], on_crashed=[on_failed_run])
def continuous_learning(
    params_path: str | list[str] = DEFAULT_PARAMS,
    cycle: str | None = None,
    epochs: int | None = None,
    wait_timeout_s: float | None = None,
    require_approval: bool | None = None,
    drift_batches: list[str] | None = None,
) -> dict[str, Any] | State:
    """One cycle of the loop (or the continuation of a cycle that waits for labels).

    Args:
        params_path: params file of the whole run, or several layered ones (overlays, later wins).
        cycle: cycle to continue or open (default: the newest unclosed cycle, else a new one).
        epochs: override of ``cycle.epochs`` (retraining epochs).
        wait_timeout_s: override of ``label.wait_timeout_s``.
        require_approval: override of ``promote.require_approval``.
        drift_batches: batches flagged as drifted (the monitor's trigger), added to ``sample.drift_batches``.
    """
    overrides: dict[str, dict[str, Any]] = {
        "cycle": {"epochs": epochs},
        "label": {"wait_timeout_s": wait_timeout_s},
        "promote": {"require_approval": require_approval},
    }
    params = _load(params_path, overrides, drift_batches)
    who = f"flow continuous_learning/{flow_run.name}"
    with cycle_lease(params, holder=who) as busy:  # one cycle at a time (another run, clone or host: it says who)
        if busy is not None:
            print(busy)
            return Completed(name="CycleBusy", message=busy)
        return _run_cycle(params, cycle, who)


def _run_cycle(params: Params, cycle: str | None, who: str) -> dict[str, Any] | State:
    """The cycle itself, under the cycle lease."""
    state = stages.cycle_start(params, cycle)
    name = state.cycle
    if state.status == "closed":
        print(f"cycle {name} is closed ({state.outcome}): nothing to do; omit --cycle to start a new one")
        return read_report(params, name) or {"cycle": name, "outcome": state.outcome}

    if params.cycle.predict_first:
        fanout.predict(params)  # predict.shards > 1: over Dask
    if not manifest_path(params.base.paths.samples, name).is_file():
        sampled = stages.sample(params, name)
        if sampled.selected == 0:
            report = _close(params, state, f"nothing to label ({sampled.reason})")
            return report.summary

    labeled = _label_until_enough(params, name)
    if labeled.waiting:
        report = _close(params, state, WAITING, status="waiting")
        message = (
            f"cycle {name}: {labeled.labeled} of {params.label.min_labeled} images labeled, {labeled.pending} pending "
            "in Label Studio; the next run continues this cycle"
        )
        _alert_if_labels_overdue(params, state, message)
        return Completed(name="WaitingForLabels", message=message, data=report.summary)
    if labeled.labeled == 0:
        report = _close(params, state, "nothing labeled (every task skipped)")
        return report.summary

    # first, so that a broken champion (deleted version, lost files) stops the cycle before anything is written;
    # also the parent checkpoint train warm-starts from (cycle.warm_start)
    champion = stages.champion(params)
    validated = stages.validate(params, name)
    stages.merge(params, name)
    stages.train(params)
    stages.compress(params)  # compress.enabled: pruned + fine-tuned; off, the pass-through export depends on
    fanout.evaluate(params)  # evaluate.shards > 1: over Dask
    exported = stages.export(params)
    stages.dvc_record(params, ["merge", "train", "compress", "evaluate", "export"])
    # both models scored and timed on what each deploys (an INT8 artifact ships: the gate judges the INT8 artifact);
    # a champion whose artifact cannot run on this host is scored on its ONNX file, the reason in its Deployed
    deployed = exported.deployed()
    if deployed is None:
        raise RuntimeError("the export report selects no artifact: nothing to score the candidate with")
    gate = stages.gate(
        params,
        deployed.path,
        champion.scored if champion else None,
        candidate_deployed=deployed,
        champion_deployed=champion.deployed if champion else None,
    )

    lineage, extra = candidate_lineage(
        params,
        cycle=name,
        champion=champion,
        gx_report=Path(validated.report),
        gate_decision=gate.decision,
    )
    version = stages.registry(params, extra_lineage=lineage, extra_reports=extra)
    print(describe_pin(version.version, stages.dvc_pin(params, version.version)))
    stages.promote(params, version.version, "challenge", [f"cycle {name} candidate"], who=who)

    outcome = _decide(params, gate, version.version, license_refusals=refusals_in_tags(version.tags))
    applied = stages.promote(  # compare-and-set: only over the champion the gate judged against
        params,
        version.version,
        outcome.decision,
        outcome.reasons,
        who=who,
        expected_champion=champion.version if champion else None,
    )
    if applied.action != outcome.decision:
        print(f"v{version.version} not promoted: {applied.records[-1].why if applied.records else applied.action}")
    if applied.action == "promote":
        stages.baseline(params, version.version)  # what the monitor compares production with from now on
    report = _close(params, state, applied.action)  # "reject" when the champion moved meanwhile
    why = [r.why for r in applied.records if r.alias in (None, "champion")]
    return {**report.summary, "promote_action": applied.action, "promote_why": why}


def _given(overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The flow parameters that were given (``None``: keep the params file's value), as load_params overrides."""
    given = {section: {k: v for k, v in keys.items() if v is not None} for section, keys in overrides.items()}
    return {section: keys for section, keys in given.items() if keys}


def _load(
    params_path: str | list[str], overrides: dict[str, dict[str, Any]], drift_batches: list[str] | None
) -> Params:
    """The run's params: the given overrides, and ``drift_batches`` added to ``sample.drift_batches`` (a list in the
    params file too: the union, the file's batches first, no repeats)."""
    params = load_params(params_path, overrides=_given(overrides))
    if not drift_batches:
        return params
    union = list(dict.fromkeys([*params.sample.drift_batches, *drift_batches]))
    return load_params(params_path, overrides=_given({**overrides, "sample": {"drift_batches": union}}))


def _alert_if_labels_overdue(params: Params, state: CycleState, message: str) -> None:
    """``labels_waiting`` alert when the cycle has waited longer than ``monitor.alerts.labels_deadline_hours``."""
    deadline = params.monitor.alerts.labels_deadline_hours
    hours = labels_overdue(state.started_at, deadline_hours=deadline)
    if hours is not None:
        alert(
            params,
            "labels_waiting",
            f"cycle {state.cycle} has waited {hours:.0f} h for labels (deadline {deadline:g} h)",
            message,
        )


def _label_until_enough(params: Params, cycle: str) -> LabelResult:
    """Run the label stage until enough images are labeled or ``label.wait_timeout_s`` passes."""
    labeled = stages.label(params, cycle)
    deadline = time.monotonic() + params.label.wait_timeout_s
    while labeled.waiting and time.monotonic() < deadline:
        print(f"{labeled.labeled}/{params.label.min_labeled} labeled, {labeled.pending} pending: waiting")
        time.sleep(params.label.poll_s)
        labeled = stages.label(params, cycle)
    return labeled


def _decide(params: Params, gate: GateReport, version: str, *, license_refusals: list[str]) -> approval.Outcome:
    """The gate's decision, after a reviewer's answer when ``promote.require_approval`` asks for one; a version
    the license gate refused is rejected without asking anyone."""
    answer = None
    needs = approval.needs_approval(
        gate.decision, require_approval=params.promote.require_approval, license_refused=bool(license_refusals)
    )
    if needs:
        answer = _ask_approval(params, version)
    return approval.decide(
        gate.decision,
        [(r.passed, r.message) for r in gate.reasons],
        require_approval=params.promote.require_approval,
        answer=answer,
        license_refusals=license_refusals,
    )


def _ask_approval(params: Params, version: str) -> approval.Answer:
    """Pause the flow run until someone answers in the Prefect UI (or ``promote.approval_timeout_s`` passes)."""
    print(f"v{version} passed the gate; waiting for approval in the Prefect UI (Resume)")
    alert(
        params,
        "approval_pending",
        f"v{version} of {params.registry.model_name} waits for approval",
        f"v{version} passed the gate; approve or refuse it in the Prefect UI (flow run {flow_run.name}, Resume) "
        f"within {params.promote.approval_timeout_s:g} s, or it is not promoted",
    )
    try:
        given = pause_flow_run(wait_for_input=Approval, timeout=params.promote.approval_timeout_s, poll_interval=5)
    except Exception as exc:  # a timeout or an aborted pause: nobody approved
        _resume_after_unanswered_pause(f"v{version} was not approved in time; the cycle closes without promoting it")
        return approval.Answer(approve=False, reviewer="nobody", note=f"no approval ({type(exc).__name__})")
    return approval.Answer(approve=given.approve, reviewer=given.reviewer, note=given.note)


def _resume_after_unanswered_pause(message: str) -> None:
    """Put the run back to Running after a pause nobody answered.

    The server keeps a timed-out run Paused and refuses every later transition from it (its pause-timeout rule),
    so the run that goes on to record the rejection would end Failed ("never resumed") and fire the failed-run
    alert. Forcing Running records what happened: the cycle goes on, the candidate is not promoted.
    """
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id).state
        if current is not None and current.is_paused():
            client.set_flow_run_state(flow_run.id, Running(message=message), force=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.continuous_learning", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    parser.add_argument("--cycle", default=None, help="cycle to continue or open (default: newest unclosed / new)")
    parser.add_argument("--epochs", type=int, default=None, help="retraining epochs (default: cycle.epochs)")
    parser.add_argument("--wait-timeout", type=float, default=None, help="seconds to wait for labels")
    parser.add_argument("--require-approval", action="store_true", default=None)
    parser.add_argument("--drift-batch", action="append", default=None, help="flag a batch as drifted (repeatable)")
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    continuous_learning(
        params_path=args.params or DEFAULT_PARAMS,
        cycle=args.cycle,
        epochs=args.epochs,
        wait_timeout_s=args.wait_timeout,
        require_approval=args.require_approval,
        drift_batches=args.drift_batch,
    )


if __name__ == "__main__":
    main()
