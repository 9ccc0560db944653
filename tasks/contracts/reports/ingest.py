"""``reports/ingest.json``: what one ingest (a file, or one HTTP request) added to the prediction log and refused."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.contracts.ingest_rows import Reason


@dataclass(frozen=True)
class IngestReport:
    """One ingest of prediction records from another serving stack.

    Attributes:
        input: the file read, or ``http`` for a request to the endpoint.
        format: ``jsonl``, ``json`` or ``parquet``.
        ingest_id: content hash of the records (:func:`tasks.contracts.ingest_rows.ingest_id`); the log part is
            ``date=<d>/ingest=<ingest_id>.parquet``, the quarantine file ``<ingest.quarantine>/<ingest_id>.jsonl``.
        records: input records read (images).
        added_images: records appended to the log by this run (0 when ``already_ingested``).
        added_rows: log rows appended (one per box, one per image without boxes).
        quarantined: records refused (duplicates included).
        duplicates: refused records that were duplicates (in the input, or of rows already in the log).
        already_ingested: the same records were ingested before: nothing was appended.
        parts: the log files of this ingest (written now, or found from before).
        quarantine_file: where the refused records and their reasons are, or None when none was refused.
        reasons: ``<check> <field>`` -> how many times it failed (detection indices folded to ``detections[]``).
        examples: the first refusals (at most 20), each with its line and field.
        wall_s: seconds the ingest took.
    """

    input: str
    format: str
    ingest_id: str
    records: int
    added_images: int
    added_rows: int
    quarantined: int
    duplicates: int
    already_ingested: bool
    parts: list[str] = field(default_factory=list)
    quarantine_file: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[Reason] = field(default_factory=list)
    wall_s: float = 0.0
