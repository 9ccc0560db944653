"""Flow ``bootstrap``: world → merge → train → evaluate → export → registry → champion, recorded in DVC.

The DVC stages that ran are committed to ``dvc.lock`` and the DVC cache; the registered version is pinned
(``dvc.lock`` on ``refs/visionloop/pins/<model>-v<n>``), its outputs pushed to the DVC remote, and its tags say how
to restore it (``tasks.registry.pin``).

Run: ``python -m flows.bootstrap [--params P ...] [--epochs N]`` or the ``bootstrap`` deployment.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import stages
from flows.alerts import on_failed_run
from flows.preflight import require_servers
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.env import apply_env
from tasks.registry import describe_pin


@flow(name="bootstrap", log_prints=True, on_failure=[on_failed_run], on_crashed=[on_failed_run])
def bootstrap(params_path: str | list[str] = DEFAULT_PARAMS, epochs: int | None = None) -> dict[str, list[str | None]]:
    """Build the first champion from the source domain.

    Args:
        params_path: params file of the whole run, or several layered ones (overlays, later wins).
        epochs: override of ``train.epochs``.
    """
    overrides: dict[str, Any] = {"cycle": {"warm_start": False}}  # the first champion: from the yaml
    if epochs:
        overrides["train"] = {"epochs": epochs}
    params = load_params(params_path, overrides=overrides)
    if params.world.enabled:
        stages.world(params)
    stages.merge(params, None)  # the historical sets (no cycle yet), as `dvc repro` trains on them
    trained = stages.train(params)
    stages.compress(params)  # compress.enabled: pruned + fine-tuned; off, the pass-through export depends on
    report = stages.evaluate(params)
    stages.export(params)
    recorded = ["merge", "train", "compress", "evaluate", "export"]
    stages.dvc_record(params, (["world"] if params.world.enabled else []) + recorded)
    version = stages.registry(params)
    pinned = stages.dvc_pin(params, version.version)  # dvc.lock on refs/visionloop/pins/..., outputs pushed, tagged
    print(describe_pin(version.version, pinned))
    promoted = stages.promote(
        params,
        version.version,
        "promote",
        ["bootstrap: first champion from the source domain"],
        who=f"flow bootstrap/{flow_run.name}",
    )
    if promoted.action != "promote":  # the license gate refused it: the loop has no champion to build on
        why = promoted.records[-1].why if promoted.records else promoted.action
        raise RuntimeError(f"bootstrap: v{version.version} was not made champion: {why}")
    moves = promoted.moves
    stages.baseline(params, version.version)  # the monitor's reference: this champion on its validation images
    rows = "\n".join(f"| {name} | {s.map50_95:.4f} | {s.map50:.4f} | {s.images} |" for name, s in report.sets.items())
    create_markdown_artifact(
        key="bootstrap-summary",
        markdown=(
            f"## Bootstrap: {version.name} v{version.version} is champion\n\n"
            f"Trained {trained.epochs} epochs ({trained.family}, {trained.license}); MLflow run "
            f"`{trained.mlflow_run_id}`\n\n| set | mAP50-95 | mAP50 | images |\n|---|---|---|---|\n{rows}\n"
        ),
        description="first champion",
    )
    print(f"champion: {version.name} v{version.version}; alias moves {moves}")
    return moves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.bootstrap", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    bootstrap(params_path=args.params or DEFAULT_PARAMS, epochs=args.epochs)


if __name__ == "__main__":
    main()
