"""What a registered model version carries: its record, alias names, tag names and export artifact layout.

One owner of the contract between the registry stage (which writes a version's tags and attaches its export
artifacts) and every reader (predict, cycle, gate, flows): :class:`ModelVersionInfo`, the aliases ``champion`` /
``challenger`` / ``previous`` (never MLflow stages), the ``deploy.*`` tags naming the deployable artifact, and the
translation of an export report into run artifacts, metrics, a table and version tags.

Export artifacts: every artifact the export stage built and re-checked successfully is attached to the version's
run under ``export/<target>/`` (OpenVINO: ``.xml`` + ``.bin``); the export numbers go to the run as metrics
(``export/<target>/<metric>``) and as a table (``export/table.json``, one row per target and registration), the INT8
lineage (calibration sample, quantization settings, runtime versions) as ``export/lineage.json``. The version is
tagged only with the deployable artifact the export stage selected: ``deploy.target``, ``deploy.artifact``
(run-relative path of the file to load), ``deploy.precision`` (as built). Per-target figures are not version tags:
MLflow's version table draws every tag as one line, and ~35 export tags made each version one tall column (a
reviewer decides on lineage, license, deploy target, gate decision and cycle; the figures are one click away, in the
run). The pyfunc stays on FP32 ONNX.

The export report is read as the JSON object ``reports/export.json`` holds (``Mapping``): these functions look at
its ``artifacts`` (``target``, ``status``, ``passed``, ``parity``, ``path``, ``precision``, ``details``,
``map50_95``, ``speed``, ``size_mb``, ``max_drop``), ``selected``, ``selection``, ``reference_map50_95`` and
``lineage`` fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.contracts.deployed import artifact_files
from tasks.core.host import describe

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
CLASSES_TAG = "classes"  # the version's class list, JSON (index = class id)


class ClassListError(ValueError):
    """A version was trained on other classes than ``base.classes``: its detections cannot be scored on our labels."""


def check_classes(tags: Mapping[str, str], classes: Sequence[str], *, where: str) -> None:
    """Raise :class:`ClassListError` when ``tags`` record a class list other than ``classes``; a version registered
    before the list was recorded passes (nothing to compare).

    Args:
        tags: the version's tags (:data:`CLASSES_TAG`).
        classes: ``base.classes``.
        where: the version, for the message (``champion v3 of visionloop-detector``).
    """
    recorded = tags.get(CLASSES_TAG)
    if recorded is None:
        return
    try:
        theirs = json.loads(recorded)
    except json.JSONDecodeError:
        raise ClassListError(f"{where}: tag {CLASSES_TAG!r} is not a JSON list: {recorded[:80]!r}") from None
    if list(theirs) != list(classes):
        raise ClassListError(
            f"{where} was trained on classes {theirs}, base.classes is {list(classes)}: the two models cannot be "
            "scored on the same labels. Keep base.classes as the champion's, or promote a model trained on the new "
            "list by hand (python -m tasks.promote --version N --decision promote) after checking it"
        )


EXPORT_FOLDER = "export"  # run artifact folder of the export artifacts, one sub-folder per target
EXPORT_TABLE = f"{EXPORT_FOLDER}/table.json"
EXPORT_LINEAGE = f"{EXPORT_FOLDER}/lineage.json"  # run artifact: INT8 calibration, quantization, versions
DEPLOY_TARGET, DEPLOY_ARTIFACT, DEPLOY_PRECISION = "deploy.target", "deploy.artifact", "deploy.precision"
DEPLOY_SELECTED_ON = "deploy.selected_on"  # the CPU and its ISA flags the selection was timed on: on another host
# (AVX-512 VNNI vs AVX2 only) another artifact may be the fastest
SELECTION_HOST = ("cpu", "isa", "isa_flags", "threads", "device")
TRAIN_RUN_ID = "train_run_id"  # lineage tag: the training run a version was logged in (one version per run)


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version as the rest of the pipeline sees it."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: list[str]


def deploy_artifact(info: ModelVersionInfo) -> str | None:
    """The run-relative path of the version's deployable artifact (tag ``deploy.artifact``), if it has one."""
    return info.tags.get(DEPLOY_ARTIFACT) or None


# --------------------------------------------------------------------------------------------- export artifacts


@dataclass(frozen=True)
class ExportAttachment:
    """An export artifact that passed every check, as it is attached to the version's run.

    Attributes:
        target: export target name (``onnx``, ``openvino_int8``, ...).
        precision: the precision it was built in (TensorRT: what the engine actually built).
        path: the local file a loader opens (OpenVINO: the ``.xml``).
        files: every local file of the artifact (OpenVINO: ``.xml`` and ``.bin``).
        artifact: run-relative path of ``path`` once attached: ``export/<target>/<file name>``.
    """

    target: str
    precision: str
    path: Path
    files: tuple[Path, ...]
    artifact: str

    def artifact_path_of(self, file: Path) -> str:
        """The run artifact folder ``file`` goes to (sub-folders of a folder artifact are kept)."""
        return str(PurePosixPath(EXPORT_FOLDER, self.target, *file.relative_to(self.path.parent).parent.parts))


def _healthy(check: Mapping[str, Any]) -> bool:
    parity = check.get("parity")
    return (
        check.get("status") == "built" and bool(check.get("passed")) and (parity is None or bool(parity.get("passed")))
    )


def export_attachments(report: Mapping[str, Any]) -> list[ExportAttachment]:
    """The artifacts of an export report (``reports/export.json``) that were built and passed every check.

    Raises:
        FileNotFoundError: a file of such an artifact is missing (the export folder changed after the report).
    """
    found = []
    for check in report.get("artifacts", []):
        if not _healthy(check):
            continue
        path = Path(check["path"])
        files = artifact_files(path)
        missing = [str(f) for f in files if not f.is_file()]
        if not files or missing:
            raise FileNotFoundError(
                f"export report lists {check['target']} at {path} as built and checked, but "
                f"{', '.join(missing) or 'no file'} is missing; re-run the export stage (python -m tasks.export)"
            )
        found.append(
            ExportAttachment(
                target=check["target"],
                precision=str((check.get("details") or {}).get("built_precision") or check["precision"]),
                path=path,
                files=tuple(files),
                artifact=str(PurePosixPath(EXPORT_FOLDER, check["target"], path.name)),
            )
        )
    return found


def _built(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in report.get("artifacts", []) if c.get("status") == "built"]


def deploy_tags(report: Mapping[str, Any], attachments: Sequence[ExportAttachment]) -> dict[str, str]:
    """Version tags from an export report: the deployable artifact (``deploy.*``); none when nothing was selected.

    Raises:
        ValueError: the selected target is not among ``attachments`` (did not pass its checks).
    """
    selected = (report.get("selected") or {}).get("target")
    if not selected:
        return {}
    chosen = next((a for a in attachments if a.target == selected), None)
    if chosen is None:
        raise ValueError(f"export report selects {selected!r}, not a built artifact that passed its checks")
    tags = {DEPLOY_TARGET: chosen.target, DEPLOY_ARTIFACT: chosen.artifact, DEPLOY_PRECISION: chosen.precision}
    timed_on = report.get("host") or {}
    if timed_on.get("isa_flags") is not None:  # reports written before the host's flags were recorded have none
        tags[DEPLOY_SELECTED_ON] = describe(timed_on)
    return tags


def export_lineage(report: Mapping[str, Any]) -> dict[str, Any]:
    """The INT8 lineage of an export report, as ``export/lineage.json`` of the version's run holds it.

    ``calibration``: source, seed, count and the sha256 of the calibration image ids (one per line; the ids
    themselves stay in ``reports/export.json``, attached to the version), ``null`` when no INT8 target was built;
    ``quantization``: the quantization and calibration settings; ``versions``: the export runtimes installed;
    ``host``: the CPU the artifacts were timed and selected on (model, ISA flags, threads; ``{}`` in reports written
    before it was recorded).
    """
    lineage = report.get("lineage") or {}
    calibration = lineage.get("calibration")
    if calibration is not None:
        ids = "\n".join(calibration.get("image_ids", []))
        calibration = {k: v for k, v in calibration.items() if k != "image_ids"} | {
            "image_ids_sha256": hashlib.sha256(ids.encode()).hexdigest()
        }
    return {
        "calibration": calibration,
        "quantization": {
            "quantization": lineage.get("quantization"),
            "calibration": lineage.get("calibration_settings"),
        },
        "versions": {k: v for k, v in (lineage.get("versions") or {}).items() if v},
        "host": {k: v for k, v in (report.get("host") or {}).items() if k in SELECTION_HOST},
    }


def export_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Per built target: mAP50-95 per set, its drop against PyTorch, latency, throughput, size, memory, parity."""
    metrics: dict[str, float] = {}
    reference = report.get("reference_map50_95") or {}
    for check in _built(report):
        prefix = f"{EXPORT_FOLDER}/{check['target']}"
        for name, value in (check.get("map50_95") or {}).items():
            metrics[f"{prefix}/map50_95.{name}"] = float(value)
            if name in reference:
                metrics[f"{prefix}/map_drop.{name}"] = float(reference[name]) - float(value)
        metrics[f"{prefix}/size_mb"] = float(check.get("size_mb", 0.0))
        speed = check.get("speed")
        if speed is not None:
            metrics |= {f"{prefix}/{k}_ms": float(v) for k, v in speed["latency_ms"].items()}
            metrics[f"{prefix}/throughput_ips"] = float(speed["throughput_ips"])
            metrics[f"{prefix}/peak_rss_mb"] = float(speed["peak_rss_mb"])
        parity = check.get("parity")
        if parity is not None and parity.get("reference"):
            metrics[f"{prefix}/parity_match"] = parity["matched"] / parity["reference"]
    return metrics


def export_table(report: Mapping[str, Any], attachments: Sequence[ExportAttachment]) -> dict[str, list[Any]]:
    """One row per export target (skipped ones too): status, numbers, verdict and the attached artifact."""
    attached = {a.target: a.artifact for a in attachments}
    selected = (report.get("selected") or {}).get("target")
    sets = list(report.get("reference_map50_95") or {})
    rows = []
    for check in report.get("artifacts", []):
        speed, parity = check.get("speed") or {}, check.get("parity")
        latency = speed.get("latency_ms", {})
        rows.append(
            {
                "target": check["target"],
                "status": check.get("status", ""),
                "precision": check.get("precision", ""),
                "selected": check["target"] == selected,
                **{f"map50_95.{s}": (check.get("map50_95") or {}).get(s) for s in sets},
                "max_drop": check.get("max_drop"),
                "parity": None if parity is None else f"{parity['matched']}/{parity['reference']}",
                "p50_ms": latency.get("p50"),
                "p95_ms": latency.get("p95"),
                "p99_ms": latency.get("p99"),
                "throughput_ips": speed.get("throughput_ips"),
                "batch": speed.get("batch"),
                "threads": speed.get("threads"),
                "size_mb": check.get("size_mb"),
                "peak_rss_mb": speed.get("peak_rss_mb"),
                "artifact": attached.get(check["target"], ""),
                "verdict": (report.get("selection") or {}).get(check["target"], ""),
            }
        )
    columns = list(rows[0]) if rows else ["target"]
    return {column: [row.get(column) for row in rows] for column in columns}
