"""Re-checking a built artifact against PyTorch: mAP per set within its tolerance, and raw-output parity.

:func:`check_parity` decodes PyTorch's and the artifact's raw outputs on the same fixed images with the shared
post-processing and counts how many of PyTorch's top detections reappear (:func:`match_detections`): a
collapsed export (boxes halved, scores flattened) fails it even when an untrained model's mAP is near zero.
:func:`check_artifact` records the accuracy verdict as the export report's
:class:`~tasks.contracts.reports.export.ArtifactCheck`; :func:`recheck` runs all of it on one built artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tasks.config import Params
from tasks.contracts.deployed import artifact_files
from tasks.contracts.reports.export import ArtifactCheck, ParityResult
from tasks.decisions.selection import map_shortfalls
from tasks.runtimes.detectors import (
    Detections,
    InferenceSettings,
    Letterbox,
    decode_output,
    load_detector,
)
from tasks.targets.builders import Built, ExportTarget
from tasks.targets.scoring import DetectionCache, evaluate_set, inference_settings


def check_artifact(
    *,
    target: str,
    artifact: Path,
    reference: dict[str, float],
    measured: dict[str, float],
    max_drop: float,
    export_s: float = 0.0,
    **extra: Any,
) -> ArtifactCheck:
    """Compare an artifact's mAP50-95 per set with the PyTorch reference (pure; no I/O but file size).

    ``extra`` fills the remaining :class:`ArtifactCheck` fields (precision, parity, speed, ...).
    """
    passed = not map_shortfalls(measured, reference, max_drop)
    size = sum(p.stat().st_size for p in artifact_files(artifact) if p.is_file())  # OpenVINO: .xml + .bin
    return ArtifactCheck(
        target=target,
        path=str(artifact),
        size_mb=round(size / 2**20, 3),
        map50_95=measured,
        reference_map50_95=reference,
        max_drop=max_drop,
        passed=passed,
        export_s=export_s,
        **extra,
    )


def match_detections(
    reference: Detections, candidate: Detections, *, score_atol: float, box_atol_px: float
) -> tuple[int, float | None, float | None]:
    """Count reference detections the candidate reproduces, ignoring order (near-tied scores swap).

    A reference detection is matched by any candidate detection of the same class whose score is within
    ``score_atol`` and whose four corners are within ``box_atol_px``.

    Returns:
        ``(matched, worst_score_diff, worst_box_diff_px)``; the worst diffs are taken, per reference
        detection, to its nearest same-class candidate (``None`` when no reference detection had one).
    """
    matched = 0
    worst_score: float | None = None
    worst_box: float | None = None
    for box, score, cls in zip(reference.boxes_xyxy, reference.confidence, reference.class_id, strict=True):
        same = candidate.class_id == cls
        if not same.any():
            continue
        box_diff = np.abs(candidate.boxes_xyxy[same] - box).max(axis=1)
        score_diff = np.abs(candidate.confidence[same] - score)
        ok = (box_diff <= box_atol_px) & (score_diff <= score_atol)
        matched += int(ok.any())
        nearest = int(np.argmin(box_diff))
        worst_box = max(worst_box or 0.0, float(box_diff[nearest]))
        worst_score = max(worst_score or 0.0, float(score_diff[nearest]))
    return matched, worst_score, worst_box


def check_parity(
    reference_output: npt.NDArray[np.float32],
    candidate_output: npt.NDArray[np.float32],
    *,
    imgsz: int,
    top_k: int,
    score_atol: float,
    box_atol_px: float,
    min_match: float,
) -> ParityResult:
    """Compare raw network outputs of PyTorch and an artifact on the same ``(B, 3, S, S)`` batch.

    Both are decoded by the shared post-processing in network-input pixels; PyTorch's ``top_k`` detections
    per image (no score threshold, so an untrained model still has some) must reappear in the artifact's.
    """
    images = len(reference_output)
    boxes = [Letterbox(scale=1.0, pad_x=0, pad_y=0, width=imgsz, height=imgsz)] * images
    ref = decode_output(reference_output, boxes, InferenceSettings(imgsz=imgsz, conf=0.0, max_det=top_k))
    cand = decode_output(candidate_output, boxes, InferenceSettings(imgsz=imgsz, conf=0.0, max_det=10_000))
    total = matched = 0
    worst_score: float | None = None
    worst_box: float | None = None
    for r, c in zip(ref, cand, strict=True):
        m, s, b = match_detections(r, c, score_atol=score_atol, box_atol_px=box_atol_px)
        total, matched = total + len(r), matched + m
        worst_score = s if worst_score is None else max(worst_score, s or 0.0)
        worst_box = b if worst_box is None else max(worst_box, b or 0.0)
    return ParityResult(
        images=images,
        reference=total,
        matched=matched,
        worst_score_diff=None if worst_score is None else round(worst_score, 6),
        worst_box_diff_px=None if worst_box is None else round(worst_box, 4),
        score_atol=score_atol,
        box_atol_px=box_atol_px,
        min_match=min_match,
        passed=total == 0 or matched / total >= min_match,
    )


def recheck(
    target: ExportTarget,
    built: Built,
    *,
    params: Params,
    reference: dict[str, float],
    reference_output: npt.NDArray[np.float32],
    probe: npt.NDArray[np.float32],
    export_s: float,
    cache: DetectionCache | None = None,
) -> ArtifactCheck:
    """Re-evaluate and parity-check one built artifact against PyTorch (``tasks.targets.timing`` times them all).

    Args:
        target: the target that built it (precision, hardware, sibling: its tolerances).
        built: the artifact and what its builder recorded.
        params: config (``evaluate`` sets and batch, ``export`` tolerances and parity settings).
        reference: PyTorch mAP50-95 per evaluation set.
        reference_output: PyTorch's raw output on ``probe``.
        probe: ``(B, 3, S, S)`` float32 letterboxed parity images (:func:`tasks.targets.timing.probe_images`).
        export_s: seconds the build took.
        cache: the detection cache for the mAP re-check (the artifact's bytes are in its key); ``None``: detect.

    Returns:
        The target's check, without speed (timing comes later, all artifacts side by side).
    """
    cfg = params.export
    eval_settings = inference_settings(params)
    eval_batch = params.evaluate.batch if cfg.dynamic else 1
    measured = {
        s: evaluate_set(
            built.path,
            getattr(params.base.paths, s),
            classes=params.base.classes,
            settings=eval_settings,
            batch=eval_batch,
            set_name=s,
            cache=cache,
        ).map50_95
        for s in params.evaluate.sets
    }
    output = (
        load_detector(built.path, eval_settings).forward(probe)
        if cfg.dynamic
        else _forward_one_by_one(built, probe, eval_settings)
    )
    parity = check_parity(
        reference_output,
        output,
        imgsz=params.base.imgsz,
        top_k=cfg.parity.top_k,
        score_atol=cfg.parity.score_atol.of(target.precision),
        box_atol_px=cfg.parity.box_atol_px.of(target.precision),
        min_match=cfg.parity.min_match,
    )
    return check_artifact(
        target=target.name,
        artifact=built.path,
        reference=reference,
        measured=measured,
        max_drop=cfg.max_map_drop.of(target.precision),
        export_s=export_s,
        precision=target.precision,
        hardware=tuple(target.hardware),
        sibling=target.sibling,
        parity=parity,
        details=built.details,
    )


def _forward_one_by_one(built: Built, batch: npt.NDArray[np.float32], settings: InferenceSettings) -> Any:
    detector = load_detector(built.path, settings)
    return np.concatenate([detector.forward(batch[i : i + 1]) for i in range(len(batch))])
