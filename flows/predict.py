"""Flow ``predict``: the champion (resolved at run time) over production batches → prediction log.

Run: ``python -m flows.predict [--params P ...] [--batch 2026-11-02] [--shards N]`` or the scheduled deployment.
``shards`` > 1 (or ``predict.shards`` in params) fans the images out over Dask (``flows/fanout.py``, ``base.dask``).
"""

from __future__ import annotations

import argparse

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows import fanout
from flows.alerts import on_failed_run
from flows.preflight import require_servers
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.contracts.reports.predict import PredictResult
from tasks.env import apply_env


@flow(name="predict", log_prints=True, on_failure=[on_failed_run], on_crashed=[on_failed_run])
def predict(
    params_path: str | list[str] = DEFAULT_PARAMS,
    batches: list[str] | None = None,
    alias: str = "champion",
    shards: int | None = None,
) -> PredictResult:
    """Predict the given production batches (default: all not yet logged by the aliased version).

    ``shards``: > 1 fans the images out over Dask in that many shards (None: ``predict.shards``).
    """
    params = load_params(params_path, overrides={"predict": {"shards": shards}} if shards is not None else None)
    result = fanout.predict(params, batches=batches, alias=alias)
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
    parser.add_argument("--shards", type=int, default=None, help="> 1: fan out over Dask (default: predict.shards)")
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    predict(params_path=args.params or DEFAULT_PARAMS, batches=args.batch, alias=args.alias, shards=args.shards)


if __name__ == "__main__":
    main()
