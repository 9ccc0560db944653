"""The timing harness: artifacts take turns, and peak memory comes from the kernel, not a polling thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tasks.runtimes.detectors import InferenceSettings
from tasks.targets.timing import TURN_WARMUP, _PeakRss, _share, time_artifacts
from tests.onnx_models import write_conv_stack


def test_peak_memory_sees_a_freed_allocation_without_a_thread():
    threads = threading.active_count()
    with _PeakRss() as rss:
        assert threading.active_count() == threads  # nothing wakes up during the timed runs
        block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB, touched
        del block
    assert 190 <= rss.delta_mb <= 260


def test_peak_memory_of_nothing_is_small():
    with _PeakRss() as rss:
        pass
    assert 0 <= rss.delta_mb < 20


def write_model(path: Path, convs: int) -> Path:
    """An ONNX model ``images (B, 3, 32, 32)`` -> ``convs`` 3x3 convolutions of 32 channels (0 = identity)."""
    return write_conv_stack(path, convs, imgsz=32, channels=32)


@pytest.mark.parametrize(("total", "rounds", "shares"), [(7, 3, [3, 2, 2]), (5, 5, [1] * 5), (2, 4, [1, 1, 0, 0])])
def test_runs_are_spread_over_the_rounds(total, rounds, shares):
    assert [_share(total, rounds, r) for r in range(rounds)] == shares


def test_artifacts_take_turns_and_the_heavier_one_is_slower(tmp_path):
    paths = {"light": write_model(tmp_path / "light.onnx", 0), "heavy": write_model(tmp_path / "heavy.onnx", 6)}
    images = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    speeds = time_artifacts(
        paths,
        settings=InferenceSettings(imgsz=32, threads=1),
        images=images,
        batch=4,
        warmup=1,
        runs=7,
        batch_runs=3,
        rounds=3,
    )
    assert set(speeds) == {"light", "heavy"}
    for speed in speeds.values():
        assert speed.runs == 7 and speed.rounds == 3 and speed.batch == 4 and speed.threads == 1
        assert 0 < speed.latency_ms["p50"] <= speed.latency_ms["p95"] <= speed.latency_ms["p99"]
        assert speed.peak_rss_mb >= 0 and speed.load_s >= 0
    assert speeds["heavy"].latency_ms["p50"] > speeds["light"].latency_ms["p50"]
    assert speeds["heavy"].throughput_ips < speeds["light"].throughput_ips


def test_timed_runs_alternate_between_artifacts_round_by_round(monkeypatch):
    calls: list[tuple[str, int]] = []

    class Recorder:
        def __init__(self, path: Path, settings: InferenceSettings) -> None:
            self.name = path.name

        def forward(self, batch: np.ndarray) -> np.ndarray:
            calls.append((self.name, len(batch)))
            return batch

    monkeypatch.setattr("tasks.targets.timing.load_detector", Recorder)
    monkeypatch.setattr("tasks.targets.timing.time.sleep", lambda s: calls.append(("pause", 0)))
    images = np.zeros((1, 3, 8, 8), np.float32)
    time_artifacts(
        {"a": Path("a"), "b": Path("b"), "c": Path("c")},
        settings=InferenceSettings(imgsz=8),
        images=images,
        batch=2,
        warmup=1,
        runs=6,
        batch_runs=3,
        rounds=3,
    )
    warmups = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2)]  # loaded and warmed one by one
    assert calls[:6] == warmups
    timed = calls[6:]
    # per turn: a pause and untimed runs (another runtime's spinning threads, cold caches), then 2 batch-1 runs and
    # 1 batch run, all timed
    size = 1 + TURN_WARMUP + 3
    blocks = [timed[i : i + size] for i in range(0, len(timed), size)]
    order = [block[1][0] for block in blocks]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # every round, each in turn; rotated
    for name, block in zip(order, blocks, strict=True):
        assert block == [("pause", 0), *[(name, 1)] * TURN_WARMUP, (name, 1), (name, 1), (name, 2)]
