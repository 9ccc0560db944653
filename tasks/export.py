"""Stage ``export``: turn the trained checkpoint into deployable artifacts, re-check each, select one.

Contract:
    inputs: ``<models>/train/best.pt``, the sets in ``evaluate.sets``, ``<reports>/evaluate.json`` (the
        PyTorch mAP to compare against), ``base.paths.train`` images (INT8 calibration), and the compress stage's
        ``<models>/compressed/best.pt`` with ``<reports>/compress.json`` when it made one;
    params: ``base``, ``train`` (``family`` and its ``train.<family>`` section: the ONNX export, the head),
        ``evaluate`` (thresholds, sets, batch), ``predict`` (threads, batch size), ``export``, ``compress`` (the
        compressed artifacts' mAP budget);
    outputs: one artifact per built target in ``<models>/export/`` (``model.onnx``, ``model_int8.onnx``,
        ``openvino/model.xml``, ``openvino_int8/model.xml``, ``model_fp16.engine``, ``model_int8.engine``) and
        ``<reports>/export.json``: per target its mAP, parity with PyTorch, speed on this host, size, peak
        memory and verdict (or why it was skipped), the selected artifact with the reason, and the lineage
        of quantization (calibration image ids, settings, tool versions);
    side effects: the detection cache (``evaluate.cache``): each artifact's detections on each set are stored
        there, where the gate finds the selected artifact's on golden.

Where the work lives: the builders (``ExportTarget`` and ``TARGETS``, chosen by ``export.targets``) in
:mod:`tasks.targets.builders`, the INT8 sample in :mod:`tasks.targets.calibration`, the accuracy and parity
checks in :mod:`tasks.targets.parity`, the timing harness in :mod:`tasks.targets.timing`, the pure choice of
what ships in :mod:`tasks.decisions.selection`, the report's schema in :mod:`tasks.contracts.reports.export`.

A compressed checkpoint (the compress stage) is exported to every target again (``compressed_<target>``, under
``<models>/export/compressed/``): its artifacts are re-checked against the *unpruned* PyTorch mAP with the compress
budget added (``compress.max_map_drop``, never more than ``compress.max_total_map_drop`` in all), timed beside the
others, and the fastest eligible artifact of either kind ships.

FP32 ONNX is built first, every other target starts from it. A target this host cannot build (TensorRT
without CUDA) is recorded as skipped with the reason. Every built artifact is re-evaluated with the same code
as PyTorch and compared with PyTorch's raw outputs on a few fixed images; then all built artifacts are timed
side by side, taking turns, and ``select_artifact`` (pure) picks what to deploy.

The stage fails (:class:`ExportCheckError`, naming both numbers) when FP32 ONNX loses more mAP50-95 than
``export.max_map_drop.fp32`` or fails parity: then nothing is deployable. A reduced-precision artifact that
fails is refused, logged and reported, and the stage ships the next best.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts.reports import ReportError, load_report, report_path, write_report
from tasks.contracts.reports.compress import CompressReport
from tasks.contracts.reports.evaluate import EvaluateReport
from tasks.contracts.reports.export import COMPRESSED_PREFIX, FALLBACK_TARGET, ArtifactCheck, ExportReport
from tasks.core import host
from tasks.core.hashing import file_sha256
from tasks.decisions.selection import SelectionPolicy, map_shortfalls, select_artifact
from tasks.runtimes.detectors import load_detector
from tasks.targets.builders import TARGETS, ExportInputs, ExportTarget
from tasks.targets.calibration import load_calibration
from tasks.targets.parity import recheck
from tasks.targets.scoring import (
    DetectionCache,
    default_model_path,
    detection_cache_of,
    evaluate_set,
    inference_settings,
)
from tasks.targets.timing import probe_images, time_built

log = logging.getLogger(__name__)

LINEAGE_PACKAGES = ("onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "tensorrt", "torch", "ultralytics")


class ExportCheckError(VisionloopError, RuntimeError):
    """FP32 ONNX lost more accuracy than ``export.max_map_drop`` allows or collapsed: nothing is deployable."""


class CheckpointMissing(VisionloopError, FileNotFoundError):
    """The checkpoint to export does not exist (the train stage has not run)."""


def _reference_map(params: Params, weights: Path, *, cache: DetectionCache) -> dict[str, float]:
    """PyTorch mAP per set: from ``reports/evaluate.json`` when it scored this checkpoint, else measured now."""
    if report_path(params.base.paths.reports, "evaluate").is_file():
        scored: EvaluateReport = load_report(params.base.paths.reports, "evaluate")
        if Path(scored.model).resolve() == weights.resolve() and set(params.evaluate.sets) <= set(scored.sets):
            return {name: scored.sets[name].map50_95 for name in params.evaluate.sets}
    settings = inference_settings(params)
    return {
        name: evaluate_set(
            weights,
            getattr(params.base.paths, name),
            classes=params.base.classes,
            settings=settings,
            batch=params.evaluate.batch,
            set_name=name,
            cache=cache,
        ).map50_95
        for name in params.evaluate.sets
    }


def _not_built(
    target: ExportTarget, *, status: str, reason: str, reference: dict[str, float], params: Params
) -> ArtifactCheck:
    return ArtifactCheck(
        target=target.name,
        path="",
        size_mb=0.0,
        map50_95={},
        reference_map50_95=reference,
        max_drop=params.export.max_map_drop.of(target.precision),
        passed=False,
        precision=target.precision,
        hardware=tuple(target.hardware),
        sibling=target.sibling,
        status=status,
        reason=reason,
    )


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in LINEAGE_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _host(params: Params) -> dict[str, Any]:
    """Where the artifacts were timed: the selection holds for this CPU's instruction sets (``isa_flags``)."""
    cpu = host.cpu()
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu["cpu"],
        "isa": cpu["isa"],
        "isa_flags": cpu["isa_flags"],
        "cpus": os.cpu_count(),
        "threads": params.export.speed.threads,
        "device": params.base.device,
    }


def _failure_lines(checks: Sequence[ArtifactCheck]) -> list[str]:
    lines = []
    for c in checks:
        if c.status != "built":
            lines.append(f"{c.target}: {c.status}: {c.reason}")
            continue
        if not c.passed:
            lines.append(
                f"{c.target} ({c.path}): mAP50-95 {c.map50_95} vs PyTorch {c.reference_map50_95}, "
                f"allowed drop {c.max_drop}"
            )
        if c.parity is not None and not c.parity.passed:
            lines.append(
                f"{c.target} ({c.path}): collapsed against PyTorch, {c.parity.matched}/{c.parity.reference} "
                f"top detections reproduced (worst box diff {c.parity.worst_box_diff_px} px)"
            )
    return lines


def _export_one(
    target: ExportTarget,
    inputs: ExportInputs,
    *,
    unavailable: str | None,
    out_dir: Path,
    params: Params,
    reference: dict[str, float],
    reference_output: npt.NDArray[np.float32],
    probe: npt.NDArray[np.float32],
    cache: DetectionCache | None = None,
    label: str = "",
    required: bool = False,
) -> ArtifactCheck:
    """Build and re-check one target; one that raises is recorded as failed, unless ``required`` (then it raises).

    ``label`` prefixes the target's name in the log (``compressed_``: a target built from the compressed checkpoint).
    """
    name = label + target.name
    if unavailable:
        log.warning("%s: skipped, %s", name, unavailable)
        return _not_built(target, status="skipped", reason=unavailable, reference=reference, params=params)
    try:
        start = time.perf_counter()
        built = target.build(inputs, out_dir=out_dir, params=params)
        export_s = round(time.perf_counter() - start, 2)
        check = recheck(
            target,
            built,
            params=params,
            reference=reference,
            reference_output=reference_output,
            probe=probe,
            export_s=export_s,
            cache=cache,
        )
    except Exception as exc:
        if required:
            raise
        # an optional target must not stop the fallback from shipping; the report says what broke
        log.exception("%s: build or check failed", name)
        reason = f"{type(exc).__name__}: {exc}"
        return _not_built(target, status="failed", reason=reason, reference=reference, params=params)
    healthy = check.deployable
    log.log(
        logging.INFO if healthy else logging.ERROR,
        "%s: mAP50-95 %s vs PyTorch %s, parity %s/%s%s",
        name,
        check.map50_95,
        reference,
        check.parity.matched if check.parity else "-",
        check.parity.reference if check.parity else "-",
        "" if healthy else " (fails its checks: will not ship)",
    )
    return check


def _export_chain(
    targets: Sequence[ExportTarget],
    inputs: ExportInputs,
    *,
    unavailable: dict[str, str | None],
    out_dir: Path,
    params: Params,
    reference: dict[str, float],
    reference_output: npt.NDArray[np.float32],
    probe: npt.NDArray[np.float32],
    cache: DetectionCache,
    label: str = "",
    fallback_required: bool = True,
) -> list[ArtifactCheck]:
    """Build and re-check ``targets`` in order (FP32 ONNX first: every later target starts from it).

    With ``fallback_required`` a failing FP32 ONNX raises (the unpruned chain: nothing could ship); without, the
    failure is recorded and the chain ends there (the compressed chain: the unpruned artifacts still ship).
    """
    checks: list[ArtifactCheck] = []
    for target in targets:
        fallback = target.name == FALLBACK_TARGET
        check = _export_one(
            target,
            inputs,
            unavailable=unavailable[target.name],
            out_dir=out_dir,
            params=params,
            reference=reference,
            reference_output=reference_output,
            probe=probe,
            cache=cache,
            label=label,
            required=fallback and fallback_required,
        )
        checks.append(check)
        if fallback:
            if check.status != "built":
                break
            inputs = replace(inputs, onnx=Path(check.path))
    return checks


def compressed_checkpoint(params: Params) -> Path | None:
    """The compress stage's checkpoint when its report says ``compressed`` and the file is the one it recorded."""
    try:
        report: CompressReport = load_report(params.base.paths.reports, "compress")
    except ReportError:
        return None
    weights = Path(report.weights) if report.weights else None
    if report.status != "compressed" or weights is None or not weights.is_file():
        return None
    if file_sha256(weights) != report.checkpoint_sha256:
        log.warning("%s: not the checkpoint reports/compress.json records; no compressed candidates", weights)
        return None
    return weights


def _as_compressed(check: ArtifactCheck, policy: SelectionPolicy, reference: dict[str, float]) -> ArtifactCheck:
    """A check of an artifact built from the compressed checkpoint, renamed and held to the compressed budget."""
    drop = policy.allowed_drop(check.precision, "compressed")
    passed = check.status == "built" and not map_shortfalls(check.map50_95, reference, drop)
    return replace(
        check,
        target=COMPRESSED_PREFIX + check.target,
        sibling=COMPRESSED_PREFIX + check.sibling if check.sibling else None,
        source="compressed",
        max_drop=round(drop, 6),
        passed=passed,
    )


def _compressed_checks(
    params: Params,
    targets: Sequence[ExportTarget],
    *,
    unavailable: dict[str, str | None],
    calibration: Any,
    reference: dict[str, float],
    probe: npt.NDArray[np.float32],
    cache: DetectionCache,
) -> list[ArtifactCheck]:
    """Every target built again from the compressed checkpoint (none without one), in ``<models>/export/compressed/``.

    Accuracy against the unpruned PyTorch model (``reference``), parity against the compressed one (what each
    conversion must preserve). A compressed FP32 ONNX that fails to build ends the chain (every other target starts
    from it): the failure is recorded, nothing compressed ships, the unpruned artifacts are unaffected.
    """
    weights = compressed_checkpoint(params)
    if weights is None:
        return []
    policy = SelectionPolicy.from_params(params.export, params.compress)
    reference_output = load_detector(weights, inference_settings(params)).forward(probe)
    out_dir = params.base.paths.models / "export" / "compressed"
    out_dir.mkdir(parents=True, exist_ok=True)
    checks = _export_chain(
        targets,
        ExportInputs(weights=weights, calibration=calibration),
        unavailable=unavailable,
        out_dir=out_dir,
        params=params,
        reference=reference,
        reference_output=reference_output,
        probe=probe,
        cache=cache,
        label=COMPRESSED_PREFIX,
        fallback_required=False,
    )
    return [_as_compressed(check, policy, reference) for check in checks]


def run(params: Params, *, weights: Path | None = None) -> ExportReport:
    """Build every target, re-check each, select the deployable one, write ``reports/export.json``.

    Raises:
        CheckpointMissing: the checkpoint is missing.
        ProbeImagesMissing: the first evaluation set has no images for the parity check.
        CalibrationError: an INT8 target is listed and the calibration set is empty or too small.
        ExportCheckError: FP32 ONNX lost more than ``export.max_map_drop.fp32`` or collapsed in parity.
    """
    start = time.perf_counter()
    weights = weights or default_model_path(params)
    if not weights.is_file():
        raise CheckpointMissing(f"{weights}: checkpoint missing; run the train stage first (python -m tasks.train)")
    cfg = params.export
    out_dir = params.base.paths.models / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [TARGETS[FALLBACK_TARGET], *(TARGETS[n] for n in cfg.targets if n != FALLBACK_TARGET)]
    unavailable = {t.name: t.unavailable(params) for t in targets}
    calibration = (
        load_calibration(params) if any(t.needs_calibration and not unavailable[t.name] for t in targets) else None
    )
    cache = detection_cache_of(params)
    reference = _reference_map(params, weights, cache=cache)
    probe = probe_images(params)
    reference_output = load_detector(weights, inference_settings(params)).forward(probe)
    inputs = ExportInputs(weights=weights, calibration=calibration)
    checks = _export_chain(
        targets,
        inputs,
        unavailable=unavailable,
        out_dir=out_dir,
        params=params,
        reference=reference,
        reference_output=reference_output,
        probe=probe,
        cache=cache,
    )
    # the compress stage's candidate, if it made one: the same targets, the same rules + its budget
    checks += _compressed_checks(
        params, targets, unavailable=unavailable, calibration=calibration, reference=reference, probe=probe, cache=cache
    )
    checks = time_built(checks, params=params, probe=probe)
    policy = SelectionPolicy.from_params(cfg, params.compress)
    selection = select_artifact(checks, reference_map=reference, policy=policy)
    report = ExportReport(
        weights=str(weights),
        params_digest=params.digest(),
        reference_map50_95=reference,
        artifacts=checks,
        selected=selection.summary(),
        selection=selection.reasons_per_target,
        lineage={
            "calibration": None if calibration is None else calibration.lineage(),
            "quantization": cfg.quantization.model_dump(mode="json"),
            "calibration_settings": cfg.calibration.model_dump(mode="json"),
            "versions": _versions(),
        },
        host=_host(params),
        wall_s=round(time.perf_counter() - start, 2),
        cache_hits=cache.hits,
        cache_misses=cache.misses,
    )
    write_report(params.base.paths.reports, "export", report, params)
    fallback = checks[0]
    if selection.chosen is None or not fallback.passed:
        raise ExportCheckError(
            "export check failed:\n  " + "\n  ".join(_failure_lines([fallback]) or [selection.reason])
        )
    log.info("selected %s on %s: %s", selection.chosen.target, host.describe(report.host), selection.reason)
    return report


def main(argv: list[str] | None = None) -> ExportReport:
    """``python -m tasks.export [--params P ...]``."""
    return stage_main(
        "export",
        __doc__,
        run=lambda params, args: run(params),
        summary=lambda report: json.dumps(
            {"selected": report.selected, "map50_95": {c.target: c.map50_95 for c in report.artifacts}}
        ),
        argv=argv,
    )


if __name__ == "__main__":
    main()
