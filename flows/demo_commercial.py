"""The license demo (``make demo-commercial``): a proprietary product's loop, where the license gate decides too.

With ``params.commercial.yaml`` layered over ``params.yaml`` (``gate.license.policy: commercial``, RF-DETR as the
family): world → bootstrap trains an RF-DETR first champion (Apache-2.0: allowed) → predict the production batches →
cycle 1 trains a **YOLO** candidate (``params.yolo.yaml`` layered for that cycle only): the license gate refuses it
(AGPL model code and weights), whatever the accuracy gate says → cycle 2 trains an RF-DETR candidate, warm-started
from the champion: the license gate allows it and the accuracy gate decides. Label Studio must be up (the make
target starts it); the annotator simulator answers through its API.

Prints one block per version (family, license verdict, what was refused, the cycle's outcome) and writes
``reports/demo_commercial.json``. Exits non-zero when the loop did not do what it shows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, cast

from prefect import flow

from flows.bootstrap import bootstrap
from flows.continuous_learning import continuous_learning
from flows.demo import run_reporting_failure
from flows.predict import predict
from flows.preflight import require_servers
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import load_params
from tasks.env import apply_env
from tasks.io import write_json_atomic
from tasks.sim.annotator import BackgroundAnnotator

DEFAULT = ["params.yaml", "params.commercial.yaml"]
YOLO_OVERLAY = "params.yolo.yaml"


def version_lines(tags: dict[str, str], version: str, outcome: str) -> list[str]:
    """One version's block for the summary: family, license verdict and what it refused, the outcome."""
    lines = [
        f"v{version}: {tags.get('model_family', '?')} ({tags.get('license', '?')} weights), license "
        f"{tags.get('license.verdict', 'not recorded')} under {tags.get('license.policy', '?')}; outcome {outcome}"
    ]
    lines += [f"    refused: {line}" for line in tags.get("license.refused", "").split(" | ") if line]
    lines += [f"    excepted: {line}" for line in tags.get("license.excepted", "").split(" | ") if line]
    return lines


def problems(yolo: dict[str, Any], rfdetr: dict[str, Any], champion_family: str) -> list[str]:
    """What the demo shows and did not happen (empty when it did)."""
    found = []
    if yolo.get("outcome") != "reject" or not yolo.get("license_refused"):
        found.append(f"the YOLO candidate was not refused by the license gate (outcome {yolo.get('outcome')})")
    if rfdetr.get("outcome") not in ("promote", "reject"):
        found.append(f"the RF-DETR cycle did not reach the gate (outcome {rfdetr.get('outcome')})")
    elif rfdetr.get("license_refused"):
        found.append(f"the RF-DETR candidate was refused by the license gate: {rfdetr['license_refused']}")
    if champion_family != "rfdetr":
        found.append(f"the champion is {champion_family}, not rfdetr")
    return found


@flow(name="demo_commercial", log_prints=True)
def demo_commercial(
    params_path: list[str] | None = None, epochs: int | None = None, label_wait_s: float = 600
) -> dict[str, Any]:
    """bootstrap (RF-DETR) → predict → a YOLO cycle (refused) → an RF-DETR cycle (allowed, the gate decides)."""
    files = params_path or DEFAULT
    start = time.perf_counter()
    bootstrap(params_path=files, epochs=epochs)
    params = load_params(files)
    first = mlflow_adapter.get_alias(params, "champion")
    predict(params_path=files)
    with BackgroundAnnotator(params) as annotator:
        yolo = continuous_learning(params_path=[*files, YOLO_OVERLAY], wait_timeout_s=label_wait_s, return_state=True)
        yolo_summary = cast(dict[str, Any], yolo.result())
        rfdetr = continuous_learning(params_path=files, wait_timeout_s=label_wait_s, return_state=True)
        rfdetr_summary = cast(dict[str, Any], rfdetr.result())
    champion = mlflow_adapter.get_alias(params, "champion")
    blocks = [version_lines(first.tags, first.version, "bootstrap champion")]
    for summary in (yolo_summary, rfdetr_summary):
        version = summary.get("candidate_version")
        if version is not None:
            tags = mlflow_adapter.get_version(params, str(version)).tags
            blocks.append(version_lines(tags, str(version), str(summary.get("outcome"))))
    found = problems(yolo_summary, rfdetr_summary, champion.tags.get("model_family", "?"))
    result = {
        "wall_s": round(time.perf_counter() - start, 1),
        "champion": f"v{champion.version}",
        "annotated_by_simulator": annotator.answered,
        "cycles": [yolo_summary, rfdetr_summary],
        "problem": "; ".join(found) or None,
    }
    write_json_atomic(params.base.paths.reports / "demo_commercial.json", result)
    print(
        "\n".join(
            [
                f"demo (commercial policy) finished in {result['wall_s']:.0f} s; champion v{champion.version}",
                *(line for block in blocks for line in block),
                f"  cycle reports : {params.base.paths.reports}/cycles/<cycle>/report.md (section Licenses)",
                "  license tags  : make mlflow-ui -> Models -> the version's tags license.*",
                "  alias audit   : make audit",
            ]
        )
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.demo_commercial", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help=f"params files (default: {DEFAULT})")
    parser.add_argument("--epochs", type=int, default=None, help="bootstrap training epochs (default: train.epochs)")
    parser.add_argument("--label-wait", type=float, default=600, help="seconds a cycle waits for labels")
    parser.add_argument("--failure-file", type=Path, default=None, help="on failure, also write the reason here")
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    run_reporting_failure(
        lambda: demo_commercial(params_path=args.params, epochs=args.epochs, label_wait_s=args.label_wait),
        args.failure_file,
    )


if __name__ == "__main__":
    main()
