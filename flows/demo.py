"""The main demo (``make demo``): the whole loop on the embedded defaults.

world → bootstrap champion → predict the drifted production batches → the monitor judges them against the
champion's baseline and, on confirmed drift, starts the continuous-learning cycle (a subflow here: no worker) with the
real Label Studio server (answered by the annotator simulator through its API) → gate → promote or keep → a final
predict with whatever is champion then → the monitor again (the watch over the promotion: rollback on
regression). Prefect's temporary local server, MLflow on SQLite, DVC's local remote;
Label Studio must be up (``make demo`` starts it and stops what it started). Prints a summary table per cycle
and writes it to ``reports/demo.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from prefect import flow

from flows.bootstrap import bootstrap
from flows.continuous_learning import continuous_learning
from flows.monitor import monitor
from flows.predict import predict
from flows.preflight import require_servers
from tasks.adapters import log_store
from tasks.adapters.labelstudio import label_studio_url
from tasks.adapters.mlflow import tracking_uri
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.contracts.reports import load_report_json
from tasks.env import apply_env
from tasks.io import write_bytes_atomic, write_json_atomic
from tasks.sim.annotator import BackgroundAnnotator

FINISHED = ("promote", "reject")
"""Cycle outcomes of a demo that worked: the gate decided (labels came, a candidate was trained and judged)."""


def _ui_hint(uri: str) -> str:
    """Where to see the registry: a tracking server is its own UI; an embedded store needs ``make mlflow-ui``."""
    return f"open {uri}" if uri.startswith(("http://", "https://")) else "make mlflow-ui"


def _prefect_ui_hint() -> str:
    """A Prefect server named by ``PREFECT_API_URL`` (the stack) serves its UI beside its API; else make prefect-ui."""
    api = os.environ.get("PREFECT_API_URL", "")
    return f"open {api.removesuffix('/api')}" if api.startswith(("http://", "https://")) else "make prefect-ui"


def monitor_lines(report: dict[str, Any], label: str) -> list[str]:
    """The monitor's windows (drifting signals, advice), flagged batches, trigger and watch, for the summary."""
    lines = [f"monitor ({label}): champion {report.get('model_version')}"]
    for w in report.get("windows", []):
        drifting = [s["name"] for s in w.get("signals", []) if s.get("drifted")]
        sources = [s["source"] for s in report.get("by_source", []) if s.get("key") == w["key"] and s.get("drifted")]
        state = "too small" if w.get("too_small") else ("DRIFT: " + ", ".join(drifting) if w.get("drifted") else "ok")
        by = f"; drifted sources: {', '.join(sources)}" if sources else ""
        lines.append(f"  window {w['key']}: {w['images']} images, {state}{by}")
        lines += [f"    advice: {a}" for a in w.get("advice", [])]
        for part in report.get("by_source", []):
            if part.get("key") == w["key"]:
                lines += [f"    advice ({part['source']}): {a}" for a in part.get("advice", [])]
    lines.append(f"  flagged batches: {', '.join(report.get('flagged_batches', [])) or 'none'}")
    trigger = report.get("trigger") or {}
    lines.append(f"  trigger: {trigger.get('reason', '-')}")
    watch = report.get("watch")
    if watch:
        rolled = " -> ROLLED BACK" if watch.get("rolled_back") else ""
        lines.append(f"  watch v{watch['new_version']} vs v{watch['previous_version']}: {watch.get('reason')}{rolled}")
    return lines


def incomplete_reason(unfinished: list[dict[str, Any]], answered: int, errors: list[str]) -> str | None:
    """Why the demo did not do what it shows (None when every cycle reached the gate's decision).

    A cycle that ends "waiting for labels" (or with nothing to label) is normal in production, but in the demo the
    simulated annotators are there to answer: such an ending means the loop is broken, and the demo must say so.
    """
    if not unfinished:
        return None
    cycles = "; ".join(f"cycle {s.get('cycle')}: {s.get('outcome')}" for s in unfinished)
    why = f"{len(unfinished)} cycle(s) did not reach the gate ({cycles}); the annotator simulator answered {answered}"
    if errors and not answered:  # it never got to answer: what stopped it is the likely cause
        why += f", its last error: {errors[-1].splitlines()[0]}"
    return why


def _fmt(value: float | None) -> str:
    return "  -   " if value is None else f"{value:.4f}"


def summary_table(cycles: list[dict[str, Any]]) -> str:
    """One row per cycle: labeled images by strategy, both models' mAP50-95 per gate set, decision, alias moves."""
    lines = []
    for s in cycles:
        strategies = ", ".join(f"{k} {v}" for k, v in s.get("sampled_by_strategy", {}).items() if v) or "-"
        lines.append(f"cycle {s['cycle']}: {s['outcome']}")
        lines.append(f"  labeled {s.get('labeled')} images; sampled by strategy: {strategies}")
        for name, cand in s.get("candidate_map50_95", {}).items():
            champ = s.get("champion_map50_95", {}).get(name)
            ci = (s.get("intervals") or {}).get(name)
            interval = f"  diff {ci['estimate']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]" if ci else ""
            lines.append(f"  {name:<11} champion {_fmt(champ)}  candidate {_fmt(cand)}{interval}")
        lines.append(f"  decision {s.get('decision')}; alias moves {s.get('alias_moves') or '-'}")
        for rule in s.get("failed_rules", []):
            lines.append(f"    failed: {rule}")
    return "\n".join(lines)


@flow(name="demo", log_prints=True)
def demo(
    params_path: str | list[str] = DEFAULT_PARAMS, epochs: int | None = None, cycles: int = 1, label_wait_s: float = 600
) -> dict[str, Any]:
    """world → bootstrap → predict → monitor (drift starts the cycle) → more cycles → predict → monitor (watch)."""
    start = time.perf_counter()
    bootstrap(params_path=params_path, epochs=epochs)
    first = predict(params_path=params_path)
    params = load_params(params_path)
    paths = params.base.paths
    summaries: list[dict[str, Any]] = []
    with BackgroundAnnotator(params) as annotator:
        watched = monitor(params_path=params_path, start="subflow", label_wait_s=label_wait_s)
        first_monitor = load_report_json(paths.reports, "monitor")
        if watched.get("cycle") is not None:
            summaries.append(cast(dict[str, Any], watched["cycle"]))
        for _ in range(cycles - 1):
            state = continuous_learning(params_path=params_path, wait_timeout_s=label_wait_s, return_state=True)
            summaries.append(cast(dict[str, Any], state.result()))
    final = predict(params_path=params_path)
    monitor(params_path=params_path, start="none")
    final_monitor = load_report_json(paths.reports, "monitor")
    unfinished = [s for s in summaries if s.get("outcome") not in FINISHED]
    rerun = ", ".join(b.batch for b in final.batches)
    problem = incomplete_reason(unfinished, annotator.answered, annotator.errors)
    if watched.get("cycle") is None:
        problem = f"the monitor did not start a cycle: {watched.get('trigger')}"
    result = {
        "wall_s": round(time.perf_counter() - start, 1),
        "first_champion": f"v{first.model_version}",
        "final_champion": f"v{final.model_version}",
        "annotated_by_simulator": annotator.answered,
        "cycles": summaries,
        "monitor": {"first": first_monitor, "final": final_monitor},
        "problem": problem,
    }
    write_json_atomic(paths.reports / "demo.json", result)
    print(
        "\n".join(
            [
                f"demo finished in {result['wall_s']:.0f} s",
                *monitor_lines(first_monitor, "after the first predict"),
                summary_table(summaries),
                *monitor_lines(final_monitor, "after the final predict"),
                f"  champion      : models:/{final.model_name}@champion (v{final.model_version}, was "
                f"v{first.model_version}) in {tracking_uri(params)}  -> {_ui_hint(tracking_uri(params))}",
                f"  predictions   : {log_store.describe(params)} date=*/ "
                f"(re-run by the final champion: {rerun or 'none'})",
                f"  cycle reports : {paths.reports}/cycles/<cycle>/report.md (+ PNG plots; also in MLflow)",
                f"  monitor       : {paths.reports}/monitor.json, {paths.reports / params.monitor.metrics.textfile} "
                "(make metrics serves it), plots in reports/monitor/",
                f"  summary       : {paths.reports}/demo.json; alias audit: make audit",
                f"  labeling      : Label Studio project {params.label.project_title} "
                f"(make labelstudio-up, {label_studio_url(params.label)})",
                f"  flow runs     : {_prefect_ui_hint()}",
            ]
        )
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    parser.add_argument("--epochs", type=int, default=None, help="bootstrap training epochs (default: train.epochs)")
    parser.add_argument("--cycles", type=int, default=1, help="continuous-learning cycles (default 1)")
    parser.add_argument("--label-wait", type=float, default=600, help="seconds a cycle waits for labels")
    parser.add_argument(
        "--failure-file",
        type=Path,
        default=None,
        help="on failure, also write the reason here (make demo prints it last, after the servers have stopped)",
    )
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    run_reporting_failure(
        lambda: demo(
            params_path=args.params or DEFAULT_PARAMS,
            epochs=args.epochs,
            cycles=args.cycles,
            label_wait_s=args.label_wait,
        ),
        args.failure_file,
    )


def run_reporting_failure(run: Callable[[], dict[str, Any]], failure_file: Path | None) -> dict[str, Any]:
    """Run a demo flow; on an exception or a result whose ``problem`` is set, say why and fail.

    The reason is printed (``demo FAILED: ...``) and, with ``failure_file``, written there atomically so that
    ``make demo`` can repeat it last, after the servers have stopped. An exception is re-raised (its traceback
    stays in the log); a problem exits with status 1.
    """
    try:
        result = run()
    except Exception as exc:
        _fail(failure_file, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    if result["problem"]:
        _fail(failure_file, result["problem"])
        sys.exit(1)
    return result


def _fail(path: Path | None, reason: str) -> None:
    print(f"demo FAILED: {reason}", flush=True)
    if path is not None:
        write_bytes_atomic(path, (reason + "\n").encode())


if __name__ == "__main__":
    main()
