"""Flow ``rollback``: champion back to ``previous`` (or a named version) after checking it loads and predicts.

Run: ``python -m flows.rollback [--params P ...] [--to VERSION] [--why TEXT]``, ``make rollback``, or the
``rollback`` deployment. Every move lands in the audit trail (``python -m tasks.promote --audit``) and a
``rollback`` alert goes out (``flows.alerts``); a failed or crashed run sends ``failed_run``.
"""

from __future__ import annotations

import argparse

from prefect import flow
from prefect.runtime import flow_run

from flows import stages
from flows.alerts import alert, on_failed_run
from flows.preflight import require_servers
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.env import apply_env
from tasks.promote import format_audit


@flow(name="rollback", log_prints=True, on_failure=[on_failed_run], on_crashed=[on_failed_run])
def rollback(
    params_path: str | list[str] = DEFAULT_PARAMS, to_version: str | None = None, why: str = "manual rollback"
) -> dict[str, list[str | None]]:
    """Move ``champion`` to ``previous`` (default) or ``to_version``; the replaced champion becomes ``previous``."""
    params = load_params(params_path)
    result = stages.rollback(params, to_version, why, who=f"flow rollback/{flow_run.name}")
    print(format_audit(result.records))
    moved = result.moves.get("champion", [None, result.version])
    alert(
        params,
        "rollback",
        f"{params.registry.model_name} rolled back: champion v{moved[0]} -> v{moved[1]}",
        f"{why} (flow run {flow_run.name}); audit trail: python -m tasks.promote --audit",
    )
    return result.moves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.rollback", description=__doc__)
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    parser.add_argument("--to", default=None, help="version to make champion (default: the 'previous' alias)")
    parser.add_argument("--why", default="manual rollback")
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    rollback(params_path=args.params or DEFAULT_PARAMS, to_version=args.to, why=args.why)


if __name__ == "__main__":
    main()
