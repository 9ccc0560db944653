"""Stage ``ingest``: prediction records from another serving stack (an edge device, an inference server) → the
prediction log, bad ones quarantined with their reasons.

Contract:
    inputs: a file of prediction records, one per image, boxes nested (``.jsonl``/``.ndjson``, ``.json``,
        ``.parquet``; the record's fields and checks: :mod:`tasks.contracts.ingest_rows`), or the body of a
        ``POST /predictions`` to the endpoint (``--serve``); the prediction log (for duplicates);
    params: ``base.classes``, ``base.paths`` (predictions, quarantine, reports), ``ingest``;
    outputs: the good records appended to the log as one new part per date,
        ``<base.paths.predictions>/date=YYYY-MM-DD/ingest=<ingest id>.parquet`` (the log's own schema and writer:
        :func:`tasks.contracts.prediction_log.append`); the refused ones in ``<quarantine>/<ingest id>.jsonl``
        (``ingest.quarantine``, default ``<base.paths.quarantine>/ingest``; each with its line and one reason per
        failed field); ``<reports>/ingest.json``
        (:class:`tasks.contracts.reports.ingest.IngestReport`);
    side effects: the lock file ``<base.paths.predictions>/.ingest.lock`` (held while checking for duplicates and
        appending, so two ingests never both append the same prediction).

With ``base.storage.predictions`` set the parts are published to the S3 log and the duplicate check reads its
synced mirror (:mod:`tasks.adapters.log_store`); the lock is then per host, so run one ingest endpoint per log.

Atomic: each part file is written to a hidden temp file, fsynced and renamed (what every writer of the log does), so
a reader sees all of a part or none of it; a crash mid-write leaves only an ignored temp file, removed by the next
write of that part. An ingest spanning several dates writes one part per date; one interrupted between two dates is
completed by running it again.

Idempotent: the ingest id is a hash of the records' content (canonical JSON, in order: the same rows from another
file name or format give the same id). A second ingest of the same records finds its parts (``already_ingested``)
and adds nothing; the quarantine file is rewritten with the same content. Other records that repeat a prediction
already in the log (same image hash, model name, version, shadow) are refused as ``duplicate_in_log``.

``python -m tasks.ingest [--params P ...] FILE`` ingests a file; ``--serve`` serves ``POST
http://127.0.0.1:<ingest.port>/predictions`` (JSON array or JSON Lines body): 200 with the counts when every record
was added, 422 with every refused record's reasons (the good ones are added), 400 for a body that is not JSON,
413 over ``ingest.max_request_rows`` / ``ingest.max_request_bytes`` (nothing added), 503 while another ingest
holds the lock past ``ingest.lock_timeout_s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.adapters import ingest_http, log_store
from tasks.adapters.registry_lease import LeaseHeldError, file_lease
from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts import ingest_rows, prediction_log
from tasks.contracts.ingest_rows import IngestError, InputRow, Reason, Record, Rules
from tasks.contracts.reports import write_report
from tasks.contracts.reports.ingest import IngestReport

log = logging.getLogger(__name__)

LOCK_FILE = ".ingest.lock"
PART_PREFIX = "ingest="
MAX_EXAMPLES = 20
_INDEX = re.compile(r"\[\d+\]")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """An ingest's report and every refused record with its reasons (the HTTP answer lists them all)."""

    report: IngestReport
    refused: list[tuple[InputRow, list[Reason]]]


def ingest(params: Params, rows: Sequence[InputRow], *, source: str, fmt: str) -> Outcome:
    """Check ``rows``, quarantine the bad ones, append the good ones to the log, write ``reports/ingest.json``.

    Args:
        params: the whole configuration (``base`` and ``ingest`` are read).
        rows: the input records as read (:func:`tasks.contracts.ingest_rows.read_input` or a parsed body).
        source: what they came from, for the report (a path, or ``http``).
        fmt: their format (``jsonl``, ``json``, ``parquet``).

    Returns:
        The :class:`Outcome`.

    Raises:
        LeaseHeldError: another ingest held the log's lock for longer than ``ingest.lock_timeout_s``.
        IngestError: a log file could not be read while looking for duplicates.
    """
    start = time.perf_counter()
    config = params.ingest
    rules = Rules(
        classes=tuple(params.base.classes), default_source=config.default_source, tolerance_px=config.box_tolerance_px
    )
    ident = ingest_rows.ingest_id(rows)
    part = PART_PREFIX + ident
    by_line = {row.line: row for row in rows}
    good, refused = check_rows(rows, rules)
    root = log_store.log_root(params)
    with file_lease(
        root / LOCK_FILE,
        timeout_s=config.lock_timeout_s,
        run=None,
        what="the prediction log's ingest lock",
        fix="another ingest is appending; retry when it is done",
    ):
        logged = ingest_rows.logged_keys(root, {r.key[0] for r in good}, skip_file=part + prediction_log.PART_SUFFIX)
        fresh = []
        for record in good:
            if record.key in logged:
                why = f"model {record.model_name} v{record.model_version} already logged this image"
                refused.append((by_line[record.line], [Reason(record.line, "image_sha256", "duplicate_in_log", why)]))
            else:
                fresh.append(record)
        refused.sort(key=lambda item: item[0].line)
        quarantine_file = ingest_rows.write_quarantine(quarantine_dir(params), ident, refused)
        table = ingest_rows.to_table(fresh, classes=params.base.classes)
        targets = [root / f"{prediction_log.PARTITION_KEY}={d.isoformat()}" / f"{part}.parquet" for d in _dates(fresh)]
        already = bool(targets) and all(target.is_file() for target in targets)
        if not already:
            log_store.append(params, table, part=part)
    reasons = [reason for _, items in refused for reason in items]
    report = IngestReport(
        input=source,
        format=fmt,
        ingest_id=ident,
        records=len(rows),
        added_images=0 if already else len(fresh),
        added_rows=0 if already else table.num_rows,
        quarantined=len(refused),
        duplicates=sum(r.check.startswith("duplicate") for r in reasons),
        already_ingested=already,
        parts=[str(t) for t in targets],
        quarantine_file=str(quarantine_file) if quarantine_file else None,
        reasons=dict(Counter(f"{r.check} {_INDEX.sub('[]', r.field)}" for r in reasons).most_common()),
        examples=reasons[:MAX_EXAMPLES],
        wall_s=round(time.perf_counter() - start, 3),
    )
    write_report(params.base.paths.reports, "ingest", report, params)
    log.info(
        "ingest %s (%s, id %s): %d record(s), %d added (%d rows)%s, %d quarantined%s",
        source,
        fmt,
        ident,
        report.records,
        report.added_images,
        report.added_rows,
        " (already ingested)" if already else "",
        report.quarantined,
        f" -> {quarantine_file}" if quarantine_file else "",
    )
    return Outcome(report=report, refused=refused)


def check_rows(rows: Sequence[InputRow], rules: Rules) -> tuple[list[Record], list[tuple[InputRow, list[Reason]]]]:
    """The records that pass every check, and the refused ones with their reasons (a repeat within the input too)."""
    refused: list[tuple[InputRow, list[Reason]]] = []
    good: list[Record] = []
    first_line: dict[ingest_rows.Key, int] = {}
    for row in rows:
        checked = ingest_rows.check_record(row, rules)
        if isinstance(checked, list):
            refused.append((row, checked))
        elif first_line.setdefault(checked.key, row.line) != row.line:
            why = f"the same image and model as line {first_line[checked.key]} of this input"
            refused.append((row, [Reason(row.line, "image_sha256", "duplicate_in_input", why)]))
        else:
            good.append(checked)
    return good, refused


def quarantine_dir(params: Params) -> Path:
    """``ingest.quarantine``, or ``<base.paths.quarantine>/ingest`` when it is null."""
    return params.ingest.quarantine or params.base.paths.quarantine / "ingest"


def _dates(records: Sequence[Record]) -> list[Any]:
    return sorted({r.date for r in records})


def run(params: Params, *, path: Path) -> IngestReport:
    """Ingest one file of prediction records (format by suffix, one of ``ingest.formats``).

    Raises:
        IngestError: the file is missing, of a format not accepted, or not readable as its format.
        LeaseHeldError: another ingest held the log's lock for longer than ``ingest.lock_timeout_s``.
    """
    fmt = ingest_rows.input_format(path, params.ingest.formats)
    return ingest(params, ingest_rows.read_input(path, fmt), source=str(path), fmt=fmt).report


def handle_request(params: Params, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    """Answer one ``POST /predictions``: ``(HTTP status, JSON object)`` (see the module docstring for the statuses)."""
    fmt = "jsonl" if any(kind in content_type for kind in ("ndjson", "jsonl", "json-lines")) else "json"
    if fmt not in params.ingest.formats:
        return 415, {"error": f"{fmt} bodies are not accepted (ingest.formats: {params.ingest.formats})"}
    try:
        rows = (ingest_rows.parse_jsonl if fmt == "jsonl" else ingest_rows.parse_json)(body, what="request body")
    except IngestError as exc:
        return 400, {"error": str(exc)}
    limit = params.ingest.max_request_rows
    if len(rows) > limit:
        return 413, {"error": f"{len(rows)} records exceed ingest.max_request_rows = {limit}; split the request"}
    if not rows:
        return 400, {"error": "no prediction records in the body"}
    try:
        outcome = ingest(params, rows, source="http", fmt=fmt)
    except LeaseHeldError as exc:
        return 503, {"error": str(exc)}
    payload = dataclasses.asdict(outcome.report)
    payload["refused"] = [
        {"line": row.line, "reasons": [dataclasses.asdict(r) for r in reasons]} for row, reasons in outcome.refused
    ]
    return (422 if outcome.refused else 200), payload


def serve(params: Params) -> None:
    """Serve ``POST http://127.0.0.1:<ingest.port>/predictions`` until SIGINT/SIGTERM (requests in flight finish)."""
    server = ingest_http.make_server(
        lambda body, content_type: handle_request(params, body, content_type),
        port=params.ingest.port,
        max_bytes=params.ingest.max_request_bytes,
    )
    host, port = server.server_address[:2]
    log.info("ingest: serving on http://%s:%d%s (Ctrl-C or SIGTERM stops)", host, port, ingest_http.PATH)
    ingest_http.serve_until_stopped(server)
    log.info("ingest: server stopped")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", type=Path, help="file of prediction records (.jsonl, .json, .parquet)")
    parser.add_argument("--serve", action="store_true", help="serve POST /predictions on 127.0.0.1:ingest.port")


def _run_cli(params: Params, args: argparse.Namespace) -> IngestReport | None:
    if args.serve:
        serve(params)
        return None
    if args.path is None:
        raise IngestError("name a file of prediction records, or --serve for the HTTP endpoint")
    return run(params, path=args.path)


def _summary(report: IngestReport | None) -> str:
    if report is None:
        return "ingest server stopped"
    keys = ("ingest_id", "records", "added_images", "added_rows", "quarantined", "already_ingested", "quarantine_file")
    return json.dumps({key: getattr(report, key) for key in keys})


def main(argv: list[str] | None = None) -> IngestReport | None:
    """``python -m tasks.ingest [--params P ...] FILE`` or ``python -m tasks.ingest [--params P ...] --serve``."""
    return stage_main("ingest", __doc__, run=_run_cli, arguments=_arguments, summary=_summary, argv=argv)


if __name__ == "__main__":
    main()
