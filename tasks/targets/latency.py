"""The gate's paired latency pass: both deployed artifacts timed in one pass, taking turns round by round.

Latency is not taken from the scoring pass (each model alone, one after the other): :func:`time_latency` times
both models' networks with the export stage's harness (:func:`tasks.targets.timing.time_rounds`), round by round
on the same images, so that a noisy moment on a shared host hits both within a round. :func:`measure_latency` is
what the gate stage runs: the deployed artifacts of both when both are known and load here
(:func:`timed_pair`), else the FP32 ONNX files both were scored with, saying why. The series are judged by
:func:`tasks.decisions.gate.compare`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tasks.config import Params
from tasks.contracts.deployed import Deployed
from tasks.decisions.gate import LatencySeries
from tasks.runtimes.detectors import InferenceSettings
from tasks.targets.builders import TARGETS
from tasks.targets.timing import first_images, speed_settings, time_rounds

log = logging.getLogger(__name__)


# what an artifact runs on, by its suffix, when nobody named its export target (``python -m tasks.gate`` paths)
_RUNTIME_BY_SUFFIX = {".onnx": "onnx", ".xml": "openvino", ".engine": "tensorrt", ".pt": "pytorch"}


def runtime_of(path: Path) -> str:
    """The export target an artifact file looks like.

    Its folder's name when that names a target (the export stage and the registry lay them out so:
    ``openvino_int8/model.xml``), else the runtime its suffix loads (an OpenVINO folder is ``openvino``).
    """
    if path.parent.name in TARGETS:
        return path.parent.name
    return _RUNTIME_BY_SUFFIX.get(path.suffix, "openvino" if path.is_dir() else path.suffix.lstrip(".") or "unknown")


def timed_pair(
    candidate: Path, champion: Path, *, candidate_deployed: Deployed | None, champion_deployed: Deployed | None
) -> tuple[Deployed, Deployed]:
    """What the latency pass times: both deployed artifacts, or else the scored FP32 ONNX files of both.

    Deployed artifacts are compared only with each other: when one side has none (an old champion registered
    before export selection, a champion whose artifact cannot be fetched, ``python -m tasks.gate`` given paths
    only), both sides fall back to the files they were scored with, and ``fallback`` says why.
    """
    missing = []
    for who, deployed in (("candidate", candidate_deployed), ("champion", champion_deployed)):
        if deployed is None:
            missing.append(f"the {who} has no selected artifact given")
        elif deployed.fallback is not None:
            missing.append(f"{who}: {deployed.fallback}")
    if candidate_deployed is not None and champion_deployed is not None and not missing:
        return candidate_deployed, champion_deployed
    return _scored_files(candidate, champion, "; ".join(missing))


def _scored_files(candidate: Path, champion: Path, why: str) -> tuple[Deployed, Deployed]:
    """The files both models were scored with (FP32 ONNX in the loop), to be timed instead, and why."""
    return (
        Deployed(runtime_of(candidate), "fp32", candidate, fallback=why),
        Deployed(runtime_of(champion), "fp32", champion, fallback=why),
    )


def latency_images(params: Params) -> npt.NDArray[np.float32]:
    """``(N, 3, S, S)`` float32: the first ``gate.speed.images`` golden images, letterboxed to ``base.imgsz``."""
    root = params.base.paths.golden / "images"
    return first_images(root, params.gate.speed.images, params.base.imgsz, missing="to time the models on")


def latency_settings(params: Params) -> InferenceSettings:
    """The runtime settings of the latency pass: ``gate.speed.threads``, OpenVINO shapes as export timed them."""
    return dataclasses.replace(speed_settings(params), threads=params.gate.speed.threads)


def time_latency(
    candidate: Deployed,
    champion: Deployed,
    *,
    settings: InferenceSettings,
    images: npt.NDArray[np.float32],
    rounds: int,
    runs: int,
    warmup: int,
) -> tuple[LatencySeries, LatencySeries]:
    """Time both models' networks in one pass, taking turns round by round (:func:`tasks.targets.timing.time_rounds`).

    Each model is loaded and warmed up (``warmup`` untimed runs); then in each of ``rounds`` rounds each runs
    ``runs`` timed batch-1 forwards over ``images`` (cycled, the same for both), who goes first alternating
    between rounds. Network only: pre- and post-processing are the same code for every runtime.

    Args:
        candidate, champion: the artifacts to time and the runtime each is named by (``fallback`` is carried over).
        settings: runtime settings (threads, OpenVINO static shapes).
        images: ``(N, 3, S, S)`` float32 letterboxed network inputs.
        rounds, runs, warmup: the pass (``runs`` per model and round).

    Returns:
        The candidate's and the champion's series, round ``r`` of one paired with round ``r`` of the other.
    """
    timings = time_rounds(
        {"candidate": candidate.path, "champion": champion.path},
        settings=settings,
        images=images,
        batch=1,
        warmup=warmup,
        runs=rounds * runs,
        batch_runs=0,
        rounds=rounds,
    )
    cand, champ = (
        LatencySeries(
            artifact=str(deployed.path),
            runtime=deployed.target,
            round_ms=timings[who].round_ms,
            runs_per_round=runs,
            threads=settings.threads,
            fallback=deployed.fallback,
        )
        for who, deployed in (("candidate", candidate), ("champion", champion))
    )
    return cand, champ


def measure_latency(
    params: Params,
    candidate: Path,
    champion: Path,
    *,
    candidate_deployed: Deployed | None = None,
    champion_deployed: Deployed | None = None,
) -> tuple[LatencySeries, LatencySeries]:
    """The paired latency pass of the stage: deployed artifacts when both are given and load, else both FP32 ONNX.

    Args:
        params: ``gate.speed``, ``base`` (image size, device, golden set), ``export.speed.static_shapes``.
        candidate, champion: the files both models were scored with (the fallback).
        candidate_deployed, champion_deployed: what each will run in production (``None``: not known).
    """
    cfg = params.gate.speed
    settings, images = latency_settings(params), latency_images(params)
    timed = timed_pair(candidate, champion, candidate_deployed=candidate_deployed, champion_deployed=champion_deployed)
    try:
        return time_latency(
            *timed, settings=settings, images=images, rounds=cfg.rounds, runs=cfg.runs, warmup=cfg.warmup
        )
    except Exception as exc:  # a deployed artifact this host cannot open (TensorRT without CUDA): time what can
        if timed[0].fallback is not None:
            raise
        why = f"{timed[0].target} vs {timed[1].target} cannot be timed here ({type(exc).__name__}: {exc})"
        log.warning("%s; timing the FP32 ONNX of both", why)
        return time_latency(
            *_scored_files(candidate, champion, why),
            settings=settings,
            images=images,
            rounds=cfg.rounds,
            runs=cfg.runs,
            warmup=cfg.warmup,
        )
