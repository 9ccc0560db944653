"""The timing harness: artifacts' networks timed side by side, taking turns, with the kernel's peak memory.

:func:`time_rounds` loads and warms up every artifact, then spreads the timed runs over rounds in a rotating
order, so a burst of load on a shared host hits every artifact alike; :func:`time_artifacts` summarises each
as a :class:`~tasks.contracts.reports.export.SpeedResult`. The export stage times its built artifacts with
:func:`time_built`; the gate times the candidate against the champion with :func:`time_rounds` and
:func:`speed_settings`, the benchmark with :func:`time_artifacts` on :func:`probe_images`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tasks.config import Params, VisionloopError
from tasks.contracts.reports.export import ArtifactCheck, SpeedResult
from tasks.contracts.yolo_labels import list_images, load_rgb
from tasks.models import family
from tasks.runtimes.detectors import InferenceSettings, letterbox, load_detector

log = logging.getLogger(__name__)


class ProbeImagesMissing(VisionloopError, FileNotFoundError):
    """A folder meant to hold the images to check parity or time the artifacts on holds none."""


class _PeakRss:
    """Peak resident memory of this process above its level at ``__enter__``, from the kernel's high-water mark.

    Linux keeps the peak itself (``VmHWM``); writing ``5`` to ``/proc/self/clear_refs`` resets it to the current RSS,
    so nothing samples memory while the timed runs execute: a polling thread would wake every few milliseconds and
    take a core from the inference threads (on 2 cores it doubled the measured OpenVINO latency). Where the reset is
    unavailable the delta falls back to ``ru_maxrss`` (the lifetime peak, so it may read 0 for a model smaller than
    what the process held before).
    """

    _STATUS = Path("/proc/self/status")
    _CLEAR = Path("/proc/self/clear_refs")

    def __enter__(self) -> _PeakRss:
        self.baseline = self._rss_kib()
        try:
            self._CLEAR.write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.peak = self.baseline
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.baseline, self._peak_kib())

    def _field_kib(self, name: str) -> int | None:
        try:
            for line in self._STATUS.read_text().splitlines():
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None

    def _rss_kib(self) -> int:
        found = self._field_kib("VmRSS")
        if found is None:
            import psutil

            return int(psutil.Process().memory_info().rss // 1024)
        return found

    def _peak_kib(self) -> int:
        found = self._field_kib("VmHWM") if self._hwm_reset else None
        if found is None:
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
        return found

    @property
    def delta_mb(self) -> float:
        return round((self.peak - self.baseline) / 1024, 1)


def _timed_ms(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


# Before each artifact's turn in a round: a pause, then untimed runs. ONNX Runtime's intra-op threads spin-wait after
# a run; the artifact timed right after one ran 2.3 -> 3.6 ms p50 (OpenVINO INT8, 160 px, 2 cores, AVX2) until the
# spinning stopped (50 ms) or ten runs passed. The pause lets it stop; the runs warm the caches the last turn used.
TURN_SETTLE_S = 0.05
TURN_WARMUP = 2


def _settle(forward: Callable[[], object]) -> None:
    """Start a turn on a quiet machine: what ran before stops spinning, this artifact's data is back in cache."""
    time.sleep(TURN_SETTLE_S)
    for _ in range(TURN_WARMUP):
        forward()


def _cycling(forward: Callable[[Any], object], inputs: Sequence[Any]) -> Callable[[], object]:
    """A call that feeds ``forward`` the next of ``inputs`` each time, starting from the first."""
    feed = itertools.cycle(inputs)
    return lambda: forward(next(feed))


def _share(total: int, rounds: int, round_index: int) -> int:
    """Runs of round ``round_index`` when ``total`` runs are spread over ``rounds`` rounds (first rounds get more)."""
    return total // rounds + (1 if round_index < total % rounds else 0)


@dataclass(frozen=True)
class RoundTiming:
    """One artifact's share of a pass of :func:`time_rounds`: the summary export reports, and every round.

    Attributes:
        speed: the summary over all rounds, exactly what :func:`time_artifacts` returns.
        round_ms: ``(rounds,)`` median batch-1 latency (ms) of the artifact's runs in each round, in round order;
            a round in which it had no run is left out. Two artifacts of one pass line up round by round: their
            ratio per round compares runs made moments apart.
        runs_per_round: ``(rounds,)`` batch-1 runs behind each value of ``round_ms``.
    """

    speed: SpeedResult
    round_ms: tuple[float, ...]
    runs_per_round: tuple[int, ...]


def time_rounds(
    paths: Mapping[str, Path],
    *,
    settings: InferenceSettings,
    images: npt.NDArray[np.float32],
    batch: int,
    warmup: int,
    runs: int,
    batch_runs: int,
    rounds: int,
) -> dict[str, RoundTiming]:
    """Time several artifacts' networks in turns, so that a burst of load on a shared host hits them alike.

    Each artifact is loaded and warmed up on its own (untimed ``warmup`` runs at batch 1 and at ``batch``), which
    gives its load time and peak memory. Then, in each of ``rounds`` rounds, every artifact runs its share of the
    ``runs`` batch-1 and ``batch_runs`` batch-``batch`` timed runs, in an order rotated every round, each turn
    after a short pause and two untimed runs (:data:`TURN_SETTLE_S`: another runtime's spinning threads). A noisy
    moment therefore lands on all artifacts instead of on whichever was being timed alone, and the speed-up of
    an INT8 artifact over its FP32 sibling is measured side by side. The batch of ``batch`` repeats ``images``
    cyclically; batch-1 run ``k`` of a round feeds image ``k mod len(images)``, the same images for every
    artifact. ``batch_runs == 0`` times batch 1 only (the batch figures are then NaN and 0 img/s).

    Args:
        paths: name -> artifact (any format :func:`tasks.runtimes.detectors.load_detector` opens).
        settings: runtime settings every artifact is loaded with.
        images: ``(N, 3, S, S)`` float32 in [0, 1], letterboxed network inputs, ``N >= 1``.
        batch, warmup, runs, batch_runs, rounds: as described; ``runs`` and ``batch_runs`` are totals over
            all rounds, spread by :func:`_share`, and there are never more rounds than ``runs``.

    Returns:
        name -> :class:`RoundTiming`, in the order of ``paths``.
    """
    singles = [np.ascontiguousarray(images[i : i + 1]) for i in range(len(images))]
    many = np.ascontiguousarray(images[np.arange(batch) % len(images)])
    loaded: dict[str, Any] = {}
    memory: dict[str, tuple[float, float]] = {}
    for name, path in paths.items():
        loaded[name], memory[name] = _load_warm(path, settings, single=singles[0], many=many, warmup=warmup)
    rounds = max(1, min(rounds, runs))
    names = list(loaded)
    single: dict[str, list[list[float]]] = {name: [] for name in names}
    batched: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            detector = loaded[name]
            _settle(partial(detector.forward, singles[0]))
            single[name].append(_timed_ms(_cycling(detector.forward, singles), _share(runs, rounds, r)))
            batched[name] += _timed_ms(partial(detector.forward, many), _share(batch_runs, rounds, r))
    return {
        name: _round_timing(
            single[name],
            batched[name],
            memory=memory[name],
            settings=settings,
            batch=batch,
            runs=runs,
            warmup=warmup,
            rounds=rounds,
        )
        for name in names
    }


def _load_warm(
    path: Path,
    settings: InferenceSettings,
    *,
    single: npt.NDArray[np.float32],
    many: npt.NDArray[np.float32],
    warmup: int,
) -> tuple[Any, tuple[float, float]]:
    """Load one artifact and warm it up at batch 1 and at the batch; ``(detector, (peak MiB, load s))``."""
    with _PeakRss() as rss:
        start = time.perf_counter()
        detector = load_detector(path, settings)
        load_s = time.perf_counter() - start
        for _ in range(warmup):
            detector.forward(single)
        for _ in range(max(1, warmup)):
            detector.forward(many)
    return detector, (rss.delta_mb, round(load_s, 3))


def _round_timing(
    single: list[list[float]],
    batched: list[float],
    *,
    memory: tuple[float, float],
    settings: InferenceSettings,
    batch: int,
    runs: int,
    warmup: int,
    rounds: int,
) -> RoundTiming:
    """One artifact's summary: ``single`` batch-1 times (ms) per round, ``batched`` batch times (ms)."""
    every = [ms for per_round in single for ms in per_round]
    p50, p95, p99 = (float(v) for v in np.percentile(every, [50, 95, 99]))
    batch_ms = float(np.median(batched)) if batched else math.nan
    speed = SpeedResult(
        threads=settings.threads,
        static_shapes=settings.static_shapes,
        latency_ms={
            "p50": round(p50, 3),
            "p95": round(p95, 3),
            "p99": round(p99, 3),
            "mean": round(float(np.mean(every)), 3),
        },
        batch=batch,
        batch_latency_ms=round(batch_ms, 3),
        throughput_ips=round(batch * 1000.0 / batch_ms, 2) if batched else 0.0,
        peak_rss_mb=memory[0],
        load_s=memory[1],
        runs=runs,
        warmup=warmup,
        rounds=rounds,
    )
    kept = [per_round for per_round in single if per_round]
    return RoundTiming(
        speed=speed,
        round_ms=tuple(float(np.median(per_round)) for per_round in kept),
        runs_per_round=tuple(len(per_round) for per_round in kept),
    )


def time_artifacts(
    paths: Mapping[str, Path],
    *,
    settings: InferenceSettings,
    images: npt.NDArray[np.float32],
    batch: int,
    warmup: int,
    runs: int,
    batch_runs: int,
    rounds: int,
) -> dict[str, SpeedResult]:
    """Time several artifacts' networks in turns (:func:`time_rounds`); the summary of each over all rounds.

    Returns:
        name -> :class:`SpeedResult`, percentiles over all rounds.
    """
    timings = time_rounds(
        paths,
        settings=settings,
        images=images,
        batch=batch,
        warmup=warmup,
        runs=runs,
        batch_runs=batch_runs,
        rounds=rounds,
    )
    return {name: timing.speed for name, timing in timings.items()}


def speed_settings(params: Params) -> InferenceSettings:
    """The runtime settings every artifact (and PyTorch, in the benchmark) is timed with."""
    return InferenceSettings(
        imgsz=params.base.imgsz,
        threads=params.export.speed.threads,
        device=params.base.device,
        static_shapes=params.export.speed.static_shapes,
        nms_free=family(params).inference_hints(params).nms_free,
    )


def first_images(root: Path, count: int, imgsz: int, *, missing: str) -> npt.NDArray[np.float32]:
    """``(N, 3, S, S)`` float32: the first ``count`` images under ``root``, letterboxed to ``imgsz``.

    Raises:
        ProbeImagesMissing: ``root`` holds no image (``missing`` says what they were for).
    """
    paths = list_images(root)[:count]
    if not paths:
        raise ProbeImagesMissing(f"{root}: no images {missing}")
    return np.stack([letterbox(load_rgb(p), imgsz)[0] for p in paths])


def probe_images(params: Params) -> npt.NDArray[np.float32]:
    """The fixed parity/speed images: the first ``export.parity.images`` of the first evaluation set, letterboxed."""
    root = getattr(params.base.paths, params.evaluate.sets[0]) / "images"
    missing = "for the export parity check; check evaluate.sets and base.paths"
    return first_images(root, params.export.parity.images, params.base.imgsz, missing=missing)


def time_built(
    checks: Sequence[ArtifactCheck], *, params: Params, probe: npt.NDArray[np.float32]
) -> list[ArtifactCheck]:
    """Every built artifact timed side by side (:func:`time_artifacts`); the checks with their speed filled in."""
    cfg = params.export
    built = {c.target: Path(c.path) for c in checks if c.status == "built"}
    speeds = time_artifacts(
        built,
        settings=speed_settings(params),
        images=probe,
        batch=cfg.speed.batch if cfg.dynamic else 1,
        warmup=cfg.speed.warmup,
        runs=cfg.speed.runs,
        batch_runs=cfg.speed.batch_runs,
        rounds=cfg.speed.rounds,
    )
    for name, speed in speeds.items():
        p50, ips = speed.latency_ms["p50"], speed.throughput_ips
        log.info("%s: p50 %s ms at batch 1, %s img/s at batch %s", name, p50, ips, speed.batch)
    return [replace(c, speed=speeds[c.target]) if c.target in speeds else c for c in checks]
