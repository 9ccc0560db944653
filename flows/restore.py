"""Flow ``restore``: a registered version's data and engines back into this clone, every hash checked.

Run: ``python -m flows.restore --version N [--params P ...] [--retrain]``, ``make restore VERSION=N``, or the
``restore`` deployment. With ``--retrain`` the restored data is trained on again with this checkout's code and the
version's own effective params (train → evaluate → export, recorded in DVC): "v1's data with today's code".
"""

from __future__ import annotations

import argparse

from prefect import flow

from flows import stages
from flows.preflight import require_servers
from tasks.adapters.dvc import EFFECTIVE_PARAMS
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.env import apply_env


@flow(name="restore", log_prints=True)
def restore(params_path: str | list[str] = DEFAULT_PARAMS, version: str = "1", retrain: bool = False) -> dict:
    """Restore ``version`` (merged data, holdouts, world, checkpoint, export folder); optionally retrain on it."""
    restored = stages.restore(load_params(params_path), version)
    print(f"restored version {version} (pin {restored.commit[:10]}): {len(restored.outputs)} outputs, hashes checked")
    if retrain:
        params = load_params(EFFECTIVE_PARAMS)  # the params version N's outputs were made with
        stages.train(params)
        stages.compress(params)
        stages.evaluate(params)
        stages.export(params)
        stages.dvc_record(params, ["train", "compress", "evaluate", "export"])
    return restored.outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.restore", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    parser.add_argument("--version", required=True, help="registered model version to restore")
    parser.add_argument("--retrain", action="store_true", help="then train, evaluate and export on the restored data")
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    restore(params_path=args.params or DEFAULT_PARAMS, version=args.version, retrain=args.retrain)


if __name__ == "__main__":
    main()
