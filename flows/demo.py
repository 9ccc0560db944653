"""The main demo (``make demo``): bootstrap a champion, then predict the production batches.

Everything runs on the embedded defaults: Prefect's temporary local server, MLflow on SQLite, DVC's
local remote. At the end it prints where to look.
"""

from __future__ import annotations

import argparse
import time

from prefect import flow

from flows.bootstrap import bootstrap
from flows.predict import predict
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.env import apply_env
from tasks.registry import tracking_uri


@flow(name="demo", log_prints=True)
def demo(params_path: str = DEFAULT_PARAMS, epochs: int | None = None) -> None:
    """world → bootstrap champion → predict every production batch."""
    start = time.perf_counter()
    bootstrap(params_path=params_path, epochs=epochs)
    result = predict(params_path=params_path)
    params = load_params(params_path)
    paths = params.base.paths
    print(
        "\n".join(
            [
                f"demo finished in {time.perf_counter() - start:.0f} s",
                f"  champion      : models:/{result.model_name}@champion (v{result.model_version}) "
                f"in {tracking_uri(params)}  -> make mlflow-ui",
                f"  predictions   : {paths.predictions}/date=*/ ({len(result.batches)} batches)",
                f"  reports       : {paths.reports}/*.json",
                "  flow runs     : make prefect-ui",
            ]
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    apply_env()
    demo(params_path=args.params, epochs=args.epochs)


if __name__ == "__main__":
    main()
