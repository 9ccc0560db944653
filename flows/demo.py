"""The main demo (``make demo``): the whole loop on the embedded defaults.

world → bootstrap champion → predict the drifted production batches → continuous-learning cycle(s) with the real
Label Studio server (answered by the annotator simulator through its API) → gate → promote or keep → a final
predict with whatever is champion then. Prefect's temporary local server, MLflow on SQLite, DVC's local remote;
Label Studio must be up (``make demo`` starts it and stops what it started). Prints a summary table per cycle
and writes it to ``reports/demo.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, cast

from prefect import flow

from flows.bootstrap import bootstrap
from flows.continuous_learning import continuous_learning
from flows.predict import predict
from tasks.adapters.mlflow import tracking_uri
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.env import apply_env
from tasks.io import write_bytes_atomic, write_json_atomic
from tasks.sim.annotator import BackgroundAnnotator

FINISHED = ("promote", "reject")
"""Cycle outcomes of a demo that worked: the gate decided (labels came, a candidate was trained and judged)."""


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
    """world → bootstrap → predict → ``cycles`` loop cycles (simulated annotators) → predict with the champion."""
    start = time.perf_counter()
    bootstrap(params_path=params_path, epochs=epochs)
    first = predict(params_path=params_path)
    params = load_params(params_path)
    summaries: list[dict[str, Any]] = []
    with BackgroundAnnotator(params) as annotator:
        for _ in range(cycles):
            state = continuous_learning(params_path=params_path, wait_timeout_s=label_wait_s, return_state=True)
            summaries.append(cast(dict[str, Any], state.result()))
    final = predict(params_path=params_path)
    paths = params.base.paths
    unfinished = [s for s in summaries if s.get("outcome") not in FINISHED]
    rerun = ", ".join(b.batch for b in final.batches)
    result = {
        "wall_s": round(time.perf_counter() - start, 1),
        "first_champion": f"v{first.model_version}",
        "final_champion": f"v{final.model_version}",
        "annotated_by_simulator": annotator.answered,
        "cycles": summaries,
        "problem": incomplete_reason(unfinished, annotator.answered, annotator.errors),
    }
    write_json_atomic(paths.reports / "demo.json", result)
    print(
        "\n".join(
            [
                f"demo finished in {result['wall_s']:.0f} s",
                summary_table(summaries),
                f"  champion      : models:/{final.model_name}@champion (v{final.model_version}, was "
                f"v{first.model_version}) in {tracking_uri(params)}  -> make mlflow-ui",
                f"  predictions   : {paths.predictions}/date=*/ (re-run by the final champion: {rerun or 'none'})",
                f"  cycle reports : {paths.reports}/cycles/<cycle>/report.md (+ PNG plots; also in MLflow)",
                f"  summary       : {paths.reports}/demo.json; alias audit: make audit",
                "  labeling      : Label Studio project visionloop (make labelstudio-up, http://127.0.0.1:8080)",
                "  flow runs     : make prefect-ui",
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
    try:
        result = demo(
            params_path=args.params or DEFAULT_PARAMS,
            epochs=args.epochs,
            cycles=args.cycles,
            label_wait_s=args.label_wait,
        )
    except Exception as exc:
        _fail(args.failure_file, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    if result["problem"]:
        _fail(args.failure_file, result["problem"])
        sys.exit(1)


def _fail(path: Path | None, reason: str) -> None:
    print(f"demo FAILED: {reason}", flush=True)
    if path is not None:
        write_bytes_atomic(path, (reason + "\n").encode())


if __name__ == "__main__":
    main()
