"""``reports/export.json``: every export target's checks, the selected artifact and the quantization lineage.

The export stage writes an :class:`ExportReport` with :func:`tasks.contracts.reports.write_report`; the registry
and cycle stages read it back with ``load_report(reports, "export")``. The nested records are the report's
schema: the targets room fills them in (:class:`ParityResult` in ``tasks.targets.parity``, :class:`SpeedResult`
in ``tasks.targets.timing``) and ``tasks.decisions.selection`` decides on :class:`ArtifactCheck` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.contracts.deployed import Deployed

FALLBACK_TARGET = "onnx"  # FP32 ONNX: built first, every other target derives from it, shipped when nothing beats it
COMPRESSED_PREFIX = "compressed_"  # the targets built from the compress stage's checkpoint: compressed_<target>


@dataclass(frozen=True)
class SpeedResult:
    """Network-only timing of one artifact on this host (pre/post-processing are shared by all runtimes).

    Attributes:
        threads: intra-op threads the runtime was given.
        static_shapes: whether OpenVINO ran static-shape compilations (see ``InferenceSettings``).
        latency_ms: batch-1 latency percentiles ``p50``, ``p95``, ``p99`` and ``mean`` over ``runs``.
        batch: batch size of the throughput run.
        batch_latency_ms: median latency of one batch of ``batch`` images.
        throughput_ips: images per second at ``batch``.
        peak_rss_mb: resident-memory growth while loading and warming up, a run at batch 1 and one at ``batch``
            (libraries already imported count 0).
        load_s: time to open the artifact (OpenVINO compiles on first use: its compilation is in the warm-up).
        runs: timed batch-1 runs (after ``warmup`` untimed ones).
        warmup: untimed runs before timing.
        rounds: rounds the runs were spread over, taking turns with the other artifacts
            (:func:`tasks.targets.timing.time_artifacts`).
    """

    threads: int
    static_shapes: bool
    latency_ms: dict[str, float]
    batch: int
    batch_latency_ms: float
    throughput_ips: float
    peak_rss_mb: float
    load_s: float
    runs: int
    warmup: int
    rounds: int = 1


@dataclass(frozen=True)
class ParityResult:
    """How many of PyTorch's top detections the artifact reproduces on the parity images.

    Attributes:
        images: images compared.
        reference: PyTorch detections compared (``top_k`` per image).
        matched: those found in the artifact's output (same class, score and corners within tolerance).
        worst_score_diff: largest score gap to the nearest same-class detection (``None`` if none had one).
        worst_box_diff_px: largest corner gap, network-input pixels, to the nearest same-class detection.
        score_atol: score tolerance applied.
        box_atol_px: corner tolerance applied.
        min_match: the matched share below which the artifact counts as collapsed.
        passed: ``matched / reference >= min_match``.
    """

    images: int
    reference: int
    matched: int
    worst_score_diff: float | None
    worst_box_diff_px: float | None
    score_atol: float
    box_atol_px: float
    min_match: float
    passed: bool


@dataclass(frozen=True)
class ArtifactCheck:
    """One export target and how its artifact measured against PyTorch on this host.

    ``status`` is ``built``, ``skipped`` (this host cannot build it; ``reason`` says why) or ``failed``
    (building or checking raised; ``reason`` holds the error). ``passed`` is the accuracy gate alone.
    ``source`` is ``unpruned`` (from the trained checkpoint) or ``compressed`` (from the compress stage's pruned
    checkpoint: its target is named ``compressed_<target>``, and its mAP is held against the unpruned PyTorch model
    with the compress budget added to ``max_drop``).
    """

    target: str
    path: str
    size_mb: float
    map50_95: dict[str, float]
    reference_map50_95: dict[str, float]
    max_drop: float
    passed: bool
    export_s: float = 0.0
    precision: str = "fp32"
    hardware: tuple[str, ...] = ("cpu",)
    sibling: str | None = None
    status: str = "built"
    reason: str = ""
    parity: ParityResult | None = None
    speed: SpeedResult | None = None
    details: dict[str, Any] = field(default_factory=dict)
    source: str = "unpruned"

    @property
    def deployable(self) -> bool:
        """Built, within its mAP tolerance and not collapsed in parity (speed aside)."""
        return self.status == "built" and self.passed and (self.parity is None or self.parity.passed)


@dataclass(frozen=True)
class ExportReport:
    """What ``reports/export.json`` holds (and what the export stage's ``run`` returns).

    Attributes:
        weights: the checkpoint exported.
        params_digest: ``Params.digest()`` of the run (the top-level ``params`` stamp repeats it).
        reference_map50_95: PyTorch mAP50-95 per evaluation set.
        artifacts: one check per target, in build order (FP32 ONNX first).
        selected: ``{target, path, reason}`` of the artifact to deploy (``None``: nothing may ship).
        selection: per target, why it was taken or refused.
        lineage: ``calibration`` (source, seed, image ids), ``quantization`` and ``calibration_settings``
            (the params used) and tool ``versions``.
        host: machine, processor, CPU model, ISA and instruction-set flags (:func:`tasks.core.host.cpu`), cpus,
            threads, device of the timing: the selection holds for this host.
        wall_s: seconds the stage took (``None`` in reports written before it was recorded).
        cache_hits, cache_misses: accuracy re-checks (an artifact, or the PyTorch reference, on one set) whose
            detections came from the detection cache, and those detected (and stored); 0 with the cache off.
    """

    weights: str
    params_digest: str
    reference_map50_95: dict[str, float]
    artifacts: list[ArtifactCheck]
    selected: dict[str, str] | None
    selection: dict[str, str]
    lineage: dict[str, Any]
    host: dict[str, Any]
    wall_s: float | None = None
    cache_hits: int = 0
    cache_misses: int = 0

    def deployed(self) -> Deployed | None:
        """The selected artifact as the version will run it (``None`` when nothing was selected)."""
        if not self.selected:
            return None
        target = self.selected["target"]
        precision = next((c.precision for c in self.artifacts if c.target == target), "")
        return Deployed(target=target, precision=precision, path=Path(self.selected["path"]))

    def built(self) -> list[ArtifactCheck]:
        """The checks of the targets that were built (whatever their verdict), in build order."""
        return [c for c in self.artifacts if c.status == "built"]

    def check(self, target: str) -> ArtifactCheck | None:
        """The check of ``target`` (``None`` when the target was not listed)."""
        return next((c for c in self.artifacts if c.target == target), None)
