"""Stage reports: ``reports/<stage>.json`` written from, and read back into, the stage's typed record.

Each stage's record lives in ``tasks/contracts/reports/<stage>.py`` (a dataclass or pydantic model) and is
listed in :data:`RECORDS`. A stage writes its report with :func:`write_report` and any other code reads it
with :func:`load_report`, so renaming a field breaks loudly at the reader instead of silently.

Convention for the effective params: every report carries a top-level ``params`` object,
``{"sources": [files layered, base first], "digest": <Params.digest()>}`` (see ``Params.stamp``). The typed
record does not hold it; :func:`load_params_stamp` reads it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tasks.config import Params, VisionloopError
from tasks.io import write_bytes_atomic

# stage -> "module:Record" (imported on first use: reading one report does not import every stage's record)
RECORDS: dict[str, str] = {
    "validate": "tasks.contracts.reports.validate:ValidateReport",
    "world": "tasks.contracts.reports.world:WorldReport",
    "train": "tasks.contracts.reports.train:TrainResult",
    "compress": "tasks.contracts.reports.compress:CompressReport",
    "export": "tasks.contracts.reports.export:ExportReport",
    "merge": "tasks.contracts.reports.merge:MergeReport",
    "sample": "tasks.contracts.reports.sample:SampleResult",
    "label": "tasks.contracts.reports.label:LabelResult",
    "evaluate": "tasks.contracts.reports.evaluate:EvaluateReport",
    "gate": "tasks.contracts.reports.gate:GateReport",
    "registry": "tasks.contracts.reports.registry:RegistryResult",
    "predict": "tasks.contracts.reports.predict:PredictResult",
    "promote": "tasks.contracts.reports.promote:PromoteResult",
    "cycle": "tasks.contracts.reports.cycle:CycleReport",
    "cost": "tasks.contracts.reports.cost:CycleCost",  # reports/cycles/<cycle>/cost.json (the cycle stage)
    "monitor": "tasks.contracts.reports.monitor:MonitorReport",
    "forget": "tasks.contracts.reports.forget:ForgetReport",
    "ingest": "tasks.contracts.reports.ingest:IngestReport",
    "doctor": "tasks.contracts.reports.doctor:DoctorReport",
}

PARAMS_KEY = "params"


class ReportError(VisionloopError):
    """A report is missing, not JSON, or does not match its stage's record."""


def record_type(stage: str) -> Any:
    """The typed record of ``reports/<stage>.json``."""
    try:
        module, name = RECORDS[stage].split(":")
    except KeyError:
        raise ReportError(f"no report record registered for stage {stage!r} (known: {sorted(RECORDS)})") from None
    return getattr(importlib.import_module(module), name)


def report_path(reports: Path, stage: str) -> Path:
    """``<reports>/<stage>.json``."""
    return Path(reports) / f"{stage}.json"


def write_report(reports: Path, stage: str, record: Any, params: Params, *, path: Path | None = None) -> Path:
    """Write ``record`` (the stage's registered type) atomically with the params stamp; return the path."""
    adapter = TypeAdapter(record_type(stage))
    payload = adapter.dump_python(record, mode="json")
    if not isinstance(payload, dict):
        raise ReportError(f"{stage}: a report record must serialise to an object, got {type(payload).__name__}")
    payload[PARAMS_KEY] = params.stamp()
    target = path or report_path(reports, stage)
    return write_bytes_atomic(target, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def load_report(reports: Path, stage: str, *, path: Path | None = None) -> Any:
    """Read ``<reports>/<stage>.json`` (or ``path``) back into the stage's record.

    Raises:
        ReportError: missing file, not JSON, or fields that do not match the record (names the field).
    """
    source = path or report_path(reports, stage)
    if not source.is_file():
        raise ReportError(f"{source}: no {stage} report (run the {stage} stage first)")
    try:
        return TypeAdapter(record_type(stage)).validate_json(source.read_bytes())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ReportError(f"{source}: does not match the {stage} report: {problems}") from None


def load_report_json(reports: Path, stage: str, *, path: Path | None = None) -> dict[str, Any]:
    """:func:`load_report`, then back to JSON-shaped data: validated against the record, without the params stamp.

    For readers that summarise several stages' reports as data (the cycle report, the registry's export tags).
    """
    record = load_report(reports, stage, path=path)
    data = TypeAdapter(record_type(stage)).dump_python(record, mode="json")
    return dict(data)


def load_params_stamp(reports: Path, stage: str, *, path: Path | None = None) -> dict[str, Any] | None:
    """The ``params`` stamp of a report (``None`` for a report written before stamps existed)."""
    source = path or report_path(reports, stage)
    data = json.loads(source.read_text())
    stamp = data.get(PARAMS_KEY) if isinstance(data, dict) else None
    return stamp if isinstance(stamp, dict) else None
