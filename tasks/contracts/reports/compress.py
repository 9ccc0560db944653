"""``reports/compress.json``: what the compress stage made of the trained checkpoint (a DVC metrics file).

Written on every run: a pass-through (``status: off``), a skip with the reason (``skipped``: the family cannot be
pruned), a dropped candidate (``dropped``: the fine-tune diverged; the unpruned path still ships) or a compressed
checkpoint (``compressed``) with its lineage: the parent checkpoint, the ratio and method, MACs and parameters before
and after, the fine-tune's settings and metrics. The export stage reads it for the compressed candidate, the
checkpoint records (:mod:`tasks.contracts.checkpoints`) for its hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CompressStatus = Literal["off", "skipped", "dropped", "compressed"]


@dataclass(frozen=True)
class CompressReport:
    """One run of the compress stage.

    Attributes:
        status: ``off`` (``compress.enabled`` false), ``skipped`` (cannot prune this family/checkpoint),
            ``dropped`` (pruned, but the fine-tune failed: nothing to export), ``compressed``.
        reason: why, for every status but ``compressed``.
        parent: the unpruned checkpoint (``<models>/train/best.pt``) and ``parent_sha256`` its hash.
        weights: the compressed checkpoint (``<models>/compressed/best.pt``), empty unless compressed.
        checkpoint_sha256: its SHA-256: the record that lets later stages open it.
        family: the model family.
        method: channel importance (``compress.method``), ``ratio`` the per-layer ratio applied (searched when
            ``macs_reduction`` was given: ``target`` says which).
        macs_before, macs_after, params_before, params_after: one forward pass at ``base.imgsz``, batch 1.
        kept_whole: what the family kept from pruning, and why.
        layers: per pruned group, its root layer: channels before and after.
        fine_tune: epochs, distillation (on/off, weight), the trainer's settings of note.
        final_metrics: the fine-tuned checkpoint's validation metrics (family-neutral names).
        prune_s, fine_tune_s, wall_s: seconds.
        mlflow_run_id: the run with the fine-tune's per-epoch metrics and this report.
    """

    status: CompressStatus
    reason: str = ""
    parent: str = ""
    parent_sha256: str | None = None
    weights: str = ""
    checkpoint_sha256: str | None = None
    family: str = ""
    method: str = ""
    target: dict[str, float | None] = field(default_factory=dict)
    ratio: float | None = None
    round_to: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    kept_whole: str = ""
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    fine_tune: dict[str, Any] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    prune_s: float = 0.0
    fine_tune_s: float = 0.0
    wall_s: float = 0.0
    mlflow_run_id: str | None = None
