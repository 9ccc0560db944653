"""Flow ``ingest``: a file of prediction records from another serving stack → the prediction log (bad rows
quarantined with their reasons), so the monitor, the shadow comparison and the sampler see that traffic too.

Run: ``python -m flows.ingest [--params P ...] FILE`` (the endpoint for a steady stream is
``python -m tasks.ingest --serve``, README "Ingest predictions from another serving stack").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows import stages
from flows.alerts import on_failed_run
from flows.preflight import require_servers
from tasks.config import DEFAULT_PARAMS, load_params
from tasks.contracts.reports.ingest import IngestReport
from tasks.env import apply_env


@flow(name="ingest", log_prints=True, on_failure=[on_failed_run], on_crashed=[on_failed_run])
def ingest(path: str, params_path: str | list[str] = DEFAULT_PARAMS) -> IngestReport:
    """Ingest one file of prediction records (``.jsonl``, ``.json`` or ``.parquet``)."""
    params = load_params(params_path)
    report = stages.ingest(params, path=Path(path))
    create_table_artifact(
        key="ingest-reasons",
        table=[{"reason": reason, "records": count} for reason, count in report.reasons.items()]
        or [{"reason": "none"}],
        description=f"{report.input}: {report.added_images} added, {report.quarantined} quarantined",
    )
    already = " (already ingested: nothing added)" if report.already_ingested else ""
    print(
        f"{report.input}: {report.records} record(s), {report.added_images} added{already}, "
        f"{report.quarantined} quarantined" + (f" -> {report.quarantine_file}" if report.quarantine_file else "")
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.ingest", description=__doc__)
    parser.add_argument("path", help="file of prediction records")
    parser.add_argument("--params", action="append", default=None, help="params file; repeat to layer overlays")
    args = parser.parse_args(argv)
    apply_env()
    require_servers()
    ingest(path=args.path, params_path=args.params or DEFAULT_PARAMS)


if __name__ == "__main__":
    main()
