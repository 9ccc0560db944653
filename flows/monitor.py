"""Flow ``monitor``: judge the prediction log against the champion's baseline, start a cycle on confirmed drift, roll
a regressed promotion back, and tell a person.

The decisions are the stage's (``tasks/monitor.py``, pure functions in ``tasks/decisions/monitoring.py``); this flow
acts on them:

* drift confirmed and the trigger fires → a ``continuous_learning`` run with the drifted batches flagged: through
  ``run_deployment`` (``start="deployment"``, the scheduled deployment's way: a worker runs it) or as a subflow in this
  process (``start="subflow"``: the demo, which has no worker). A Prefect API that is down is reported, the monitor
  report is still written and the trigger is retried by the next run.
* the newest promotion regressed against ``previous`` (the watch) → the rollback stage (load-and-predict check, audit
  entry with the reason and the numbers).
* alerts (``flows/alerts.py``): drift confirmed, automatic rollback.

Run: ``python -m flows.monitor [--params P ...] [--start deployment|subflow|none]`` or the ``monitor-hourly``
deployment.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from flows import stages
from flows.alerts import alert
from flows.continuous_learning import continuous_learning
from flows.preflight import require_servers
from flows.trigger import TriggerError, start_cycle
from tasks.config import DEFAULT_PARAMS, Params, load_params
from tasks.contracts.reports.monitor import MonitorReport
from tasks.cycle import open_cycles
from tasks.env import apply_env
from tasks.monitor import record_rollback, record_trigger, rollback_reason
from tasks.promote import RollbackError

Start = Literal["deployment", "subflow", "none"]


def _markdown(report: MonitorReport) -> str:
    lines = [
        f"# monitor: {report.model_name} v{report.model_version} (@{report.alias})",
        "",
        f"baseline: {report.baseline.get('from')} ({report.baseline.get('images')} images of "
        f"{report.baseline.get('sets')}); input side: {report.input_side}",
        "",
        "| window | images | drifted | drifting signals | p95 ms | errors | advice |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in report.windows:
        signals = ", ".join(f"{s.name} ({s.effect:.2f})" for s in w.signals if s.drifted and s.effect is not None)
        errors = ", ".join(f"{k} {v}" for k, v in w.errors.items() if v) or "-"
        p95 = w.latency_ms.get("p95")
        lines.append(
            f"| {w.key} | {w.images} | {'too small' if w.too_small else ('yes' if w.drifted else 'no')} | "
            f"{signals or '-'} | {'-' if p95 is None else f'{p95:.1f}'} | {errors} | {'; '.join(w.advice) or '-'} |"
        )
    for w in report.by_source:
        if w.drifted:
            signals = ", ".join(s.name for s in w.signals if s.drifted)
            advice = "".join(f"; {a}" for a in w.advice)
            lines.append(f"\nsource {w.source} drifted in window {w.key} ({signals}){advice}")
    lines.append(f"\nflagged batches: {', '.join(report.flagged_batches) or 'none'}")
    if report.trigger is not None:
        lines.append(f"\ntrigger: {report.trigger.reason}")
    if report.watch is not None:
        lines.append(f"\nwatch v{report.watch.new_version} vs v{report.watch.previous_version}: {report.watch.reason}")
    lines += [f"\nplot: {p} (also an image artifact and in MLflow)" for p in report.plots]
    return "\n".join(lines)


def _publish(report: MonitorReport) -> None:
    create_markdown_artifact(key="monitor", markdown=_markdown(report), description="drift windows, trigger, watch")
    rows = [
        {
            "window": w.key,
            "images": w.images,
            "drifted": w.drifted,
            **{s.name: None if s.effect is None else round(s.effect, 3) for s in w.signals},
        }
        for w in report.windows
    ]
    if rows:
        create_table_artifact(key="monitor-windows", table=rows, description="effect size per signal and window")
    for plot in map(Path, report.plots):  # inline: the UI shows them without access to this host's files
        if plot.is_file():
            data = base64.b64encode(plot.read_bytes()).decode()
            create_image_artifact(
                image_url=f"data:image/png;base64,{data}", key=f"monitor-{plot.stem}", description=str(plot)
            )


def _rollback(params: Params, report: MonitorReport, who: str) -> MonitorReport:
    watch = report.watch
    assert watch is not None
    why = rollback_reason(watch)
    try:
        stages.rollback(params, watch.previous_version, why, who=who, expected_champion=watch.new_version)
    except RollbackError as exc:
        print(f"automatic rollback to v{watch.previous_version} FAILED: {exc}")
        alert(params, "rollback", f"rollback to v{watch.previous_version} failed", f"{why}\n{exc}")
        return record_rollback(params, watch, error=str(exc))
    print(f"rolled back: champion v{watch.new_version} -> v{watch.previous_version}: {why}")
    alert(params, "rollback", f"champion rolled back to v{watch.previous_version}", why)
    return record_rollback(params, watch, error=None)


@flow(name="monitor", log_prints=True)
def monitor(
    params_path: str | list[str] = DEFAULT_PARAMS, start: Start = "deployment", label_wait_s: float | None = None
) -> dict[str, Any]:
    """Judge the log; on confirmed drift start a cycle (``start``), on a regressed promotion roll back.

    Args:
        params_path: params file(s), later overlays win.
        start: how a triggered cycle starts: ``deployment`` (run_deployment of ``monitor.trigger.deployment``),
            ``subflow`` (in this process, as the demo does), ``none`` (decide and report only).
        label_wait_s: a subflow cycle's label wait (``label.wait_timeout_s`` override).
    """
    params = load_params(params_path)
    opened = open_cycles(params)
    report = stages.monitor(params, opened[-1].cycle if opened else None)
    print(_markdown(report))
    result: dict[str, Any] = {"flagged_batches": report.flagged_batches, "cycle": None}
    trigger = report.trigger
    if report.watch is not None and report.watch.regressed and params.monitor.watch.auto_rollback:
        report = _rollback(params, report, who="flow monitor")
    elif trigger is not None and trigger.fire and start != "none":
        alert(
            params, "drift", f"drift confirmed: starting a cycle for {len(trigger.batches)} batch(es)", trigger.reason
        )
        if start == "deployment":
            try:
                run_id = start_cycle(params_path, params, trigger.batches)
            except TriggerError as exc:
                print(f"trigger: {exc} (retried by the next monitor run)")
                report = record_trigger(params, trigger, started=None, error=str(exc))
            else:
                print(f"trigger: started {params.monitor.trigger.deployment} flow run {run_id}")
                report = record_trigger(params, trigger, started=run_id, error=None)
        else:
            report = record_trigger(params, trigger, started="subflow", error=None)
            result["cycle"] = continuous_learning(
                params_path=params_path, drift_batches=trigger.batches, wait_timeout_s=label_wait_s
            )
    _publish(report)
    result["trigger"] = None if report.trigger is None else report.trigger.reason
    result["watch"] = None if report.watch is None else report.watch.reason
    result["rolled_back"] = bool(report.watch and report.watch.rolled_back)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.monitor", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    parser.add_argument("--start", choices=["deployment", "subflow", "none"], default="deployment")
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    monitor(params_path=args.params or DEFAULT_PARAMS, start=args.start)


if __name__ == "__main__":
    main()
