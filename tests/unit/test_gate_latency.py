"""The gate's latency rule on real ONNX Runtime timings: a tie stays a tie beside a busy neighbour, a slowdown fails.

The models are plain convolution stacks at the project's 160 px input (a few ms per image, like YOLO26n at 160 px
on these cores): real inference, built in milliseconds. The neighbour is a separate process spinning on a core for
a bounded time, the situation in which single readings once rejected a far better candidate.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from tasks.config import GateParams
from tasks.contracts.deployed import Deployed
from tasks.core.coco import match_coco, score_matches
from tasks.decisions.gate import GOLDEN, GatePolicy, ModelScores, compare
from tasks.runtimes.detectors import InferenceSettings
from tasks.targets.latency import time_latency
from tests.onnx_models import write_conv_stack

IMGSZ = 160
SPIN_S = 60.0  # the neighbour stops by itself after this, whatever happens to the test


def write_convs(path: Path, convs: int, channels: int = 16) -> Path:
    """An ONNX model ``images (B, 3, 160, 160)`` -> ``convs`` 3x3 convolutions + ReLU of ``channels`` channels."""
    return write_conv_stack(path, convs, imgsz=IMGSZ, channels=channels, relu=True)


def spin(seconds: float, spinning: Any) -> None:
    """Keep one core busy until ``seconds`` have passed (``spinning``, an event, is set once it starts)."""
    deadline = time.monotonic() + seconds
    spinning.set()
    count = 0
    while time.monotonic() < deadline:
        count += 1


@pytest.fixture(scope="module")
def busy_neighbour() -> Iterator[psutil.Process]:
    """A process spinning on a core beside the tests of this module (killed at the end, or stops after SPIN_S)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds runtime threads
    spinning = context.Event()
    process = context.Process(target=spin, args=(SPIN_S, spinning), daemon=True)
    process.start()
    try:
        assert spinning.wait(timeout=30), "the busy neighbour did not start"
        yield psutil.Process(process.pid)
    finally:
        process.kill()
        process.join(timeout=10)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-latency")
    champion = write_convs(root / "champion.onnx", 6)
    same = root / "same" / "model.onnx"  # the same model, a separate file: a second session, as in the gate
    same.parent.mkdir()
    shutil.copyfile(champion, same)
    return {"champion": champion, "same": same, "slower": write_convs(root / "slower.onnx", 18)}


def golden_only() -> ModelScores:
    """The same trivial golden score for both models: only the latency rule can decide."""
    ground_truth = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900}],
        "categories": [{"id": 1, "name": "a"}],
    }
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9}]
    return ModelScores("m", {GOLDEN: score_matches(GOLDEN, match_coco(ground_truth, detections))}, 0.0)


def judge(candidate: Path, champion: Path) -> tuple[bool, str]:
    """One paired pass with the shipped ``gate`` defaults, judged by ``compare``: the latency_factor verdict."""
    gate = GateParams()
    cand_series, champ_series = time_latency(
        Deployed("onnx", "fp32", candidate),
        Deployed("onnx", "fp32", champion),
        settings=InferenceSettings(imgsz=IMGSZ, threads=gate.speed.threads),
        images=np.random.default_rng(1).random((gate.speed.images, 3, IMGSZ, IMGSZ), dtype=np.float32),
        rounds=gate.speed.rounds,
        runs=gate.speed.runs,
        warmup=gate.speed.warmup,
    )
    assert len(cand_series.round_ms) == len(champ_series.round_ms) == gate.speed.rounds
    scores = golden_only()
    decision = compare(
        ModelScores("candidate", scores.sets, 0.0, cand_series),
        ModelScores("champion", scores.sets, 0.0, champ_series),
        GatePolicy.from_config(gate, seed=0),
    )
    reason = next(r for r in decision.reasons if r.code == "latency_factor")
    return reason.passed, reason.message


@pytest.mark.parametrize("repeat", range(5))
def test_the_same_model_passes_every_time_beside_a_busy_neighbour(models, busy_neighbour, repeat):
    assert busy_neighbour.is_running()
    before = busy_neighbour.cpu_times().user
    passed, message = judge(models["same"], models["champion"])
    assert busy_neighbour.cpu_times().user > before, "the neighbour was not competing for the cores"
    assert passed, message
    assert "(onnx vs onnx, 10 rounds of 5 runs, 1 thread(s))" in message


def test_a_genuinely_slower_candidate_still_fails_beside_a_busy_neighbour(models, busy_neighbour):
    passed, message = judge(models["slower"], models["champion"])  # 3x the convolutions: ~3x the work
    assert not passed, message
    assert "lower bound > 1.5" in message
