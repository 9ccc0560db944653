"""Flow ``predict``: the champion (resolved at run time) over production batches → prediction log.

Run: ``python -m flows.predict [--params P ...] [--batch 2026-11-02]`` or the scheduled deployment.
"""

from __future__ import annotations

import argparse

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows import stages
from flows.alerts import on_failed_run
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.contracts.reports.predict import PredictResult
from tasks.env import apply_env


@flow(name="predict", log_prints=True, on_failure=[on_failed_run], on_crashed=[on_failed_run])
def predict(
    params_path: str | list[str] = DEFAULT_PARAMS, batches: list[str] | None = None, alias: str = "champion"
) -> PredictResult:
    """Predict the given production batches (default: all not yet logged by the aliased version)."""
    params = load_params(params_path)
    result = stages.predict(params, batches=batches, alias=alias)
    create_table_artifact(
        key="predict-batches",
        table=[
            {
                "batch": b.batch,
                "images": b.images,
                "detections": b.detections,
                "skipped": len(b.skipped),
                "ms_per_image": b.ms_per_image,
            }
            for b in result.batches
        ],
        description=f"{result.model_name} v{result.model_version} (@{result.alias}), ran {result.target}",
    )
    fallback = f" (fallback: {result.fallback})" if result.fallback else ""
    print(
        f"{result.model_name} v{result.model_version} predicted {len(result.batches)} batch(es) "
        f"with {result.target}{fallback}"
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.predict", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    parser.add_argument("--batch", action="append", default=None, help="batch folder name (repeatable)")
    parser.add_argument("--alias", default="champion")
    args = parser.parse_args(argv)
    apply_env()
    predict(params_path=args.params or DEFAULT_PARAMS, batches=args.batch, alias=args.alias)


if __name__ == "__main__":
    main()
