"""Which exported artifact ships: :func:`select_artifact`, pure, with a reason for every target.

Inputs are the export report's :class:`~tasks.contracts.reports.export.ArtifactCheck` records (accuracy, parity,
speed, hardware, sibling) and a :class:`SelectionPolicy` read from ``export`` params; nothing here touches a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tasks.config import CompressParams, ExportParams
from tasks.contracts.reports.export import FALLBACK_TARGET, ArtifactCheck


def map_shortfalls(
    measured: Mapping[str, float], reference: Mapping[str, float], max_drop: float
) -> dict[str, tuple[float | None, float]]:
    """Sets where ``measured`` mAP is missing or more than ``max_drop`` below ``reference``: ``{set: (got, ref)}``."""
    return {
        name: (measured.get(name), ref)
        for name, ref in reference.items()
        if name not in measured or measured[name] < ref - max_drop
    }


@dataclass(frozen=True)
class SelectionPolicy:
    """What :func:`select_artifact` needs from ``export`` params.

    Attributes:
        target_hardware: where the deployed artifact runs (``cpu`` / ``cuda``).
        max_map_drop: allowed mAP50-95 loss against PyTorch per precision.
        min_speedup: how much faster than its higher-precision sibling a reduced-precision artifact must be.
        select_by: ``latency`` (batch-1 p50, lower wins) or ``throughput`` (images/s at the batch, higher wins).
        fallback: the target shipped when nothing better qualifies; it must itself pass.
        compressed_extra: what a compressed artifact may lose beyond ``max_map_drop`` (``compress.max_map_drop``).
        compressed_total: what a compressed artifact may never lose more than (``compress.max_total_map_drop``).
    """

    target_hardware: str = "cpu"
    max_map_drop: Mapping[str, float] = field(default_factory=lambda: {"fp32": 0.003, "fp16": 0.005, "int8": 0.01})
    min_speedup: float = 1.1
    select_by: str = "latency"
    fallback: str = FALLBACK_TARGET
    compressed_extra: float = 0.0
    compressed_total: float | None = None

    @classmethod
    def from_params(cls, export: ExportParams, compress: CompressParams | None = None) -> SelectionPolicy:
        """The policy ``export`` (and ``compress``: the compressed artifacts' budget) params describe."""
        return cls(
            target_hardware=export.target_hardware,
            max_map_drop=export.max_map_drop.model_dump(),
            min_speedup=export.min_speedup,
            select_by=export.select_by,
            compressed_extra=compress.max_map_drop if compress else 0.0,
            compressed_total=compress.max_total_map_drop if compress else None,
        )

    def allowed_drop(self, precision: str, source: str = "unpruned") -> float:
        """mAP50-95 an artifact of ``precision`` may lose against the (unpruned) PyTorch model on every set."""
        drop = self.max_map_drop[precision]
        if source != "compressed":
            return drop
        drop += self.compressed_extra
        return drop if self.compressed_total is None else min(drop, self.compressed_total)

    def tolerance(self, precision: str, source: str = "unpruned") -> str:
        """How :meth:`allowed_drop` was reached, for a refusal's message."""
        if source != "compressed":
            return f"{precision} tolerance"
        total = "" if self.compressed_total is None else f", at most {self.compressed_total}"
        return f"compressed {precision}: {self.max_map_drop[precision]} + compress {self.compressed_extra}{total}"


@dataclass(frozen=True)
class Selection:
    """The deployable artifact (``None``: nothing may ship) and, per target, why it was taken or refused."""

    chosen: ArtifactCheck | None
    reasons_per_target: dict[str, str]

    @property
    def reason(self) -> str:
        if self.chosen is None:
            return f"nothing deployable: {self.reasons_per_target.get(FALLBACK_TARGET, 'no FP32 ONNX candidate')}"
        return self.reasons_per_target[self.chosen.target]

    def summary(self) -> dict[str, str] | None:
        """``{target, path, reason}`` of the chosen artifact, as written to the report."""
        if self.chosen is None:
            return None
        return {"target": self.chosen.target, "path": self.chosen.path, "reason": self.reason}


def select_artifact(
    candidates: Sequence[ArtifactCheck], *, reference_map: Mapping[str, float], policy: SelectionPolicy
) -> Selection:
    """Pick the artifact to deploy on ``policy.target_hardware`` and say why each candidate was taken or not.

    Rules, in order: a candidate must be built, run on the target hardware, lose at most
    ``policy.max_map_drop[precision]`` mAP50-95 on every reference set, and not have collapsed in the
    parity check. A reduced-precision candidate must also be ``policy.min_speedup`` times faster than its
    sibling (``ArtifactCheck.sibling``, or the fallback when the sibling was not measured). Of those, the
    fastest (``policy.select_by``) ships; ties keep the candidates' order. The fallback (FP32 ONNX) must
    itself pass: if it fails, nothing ships, because every other artifact is derived from it.

    Args:
        candidates: one check per target, in build order.
        reference_map: PyTorch mAP50-95 per evaluation set.
        policy: the selection rules.

    Returns:
        The chosen candidate (or ``None``) and one reason per candidate target.
    """
    by_name = {c.target: c for c in candidates}
    reasons: dict[str, str] = {}
    eligible: list[ArtifactCheck] = []
    for check in candidates:
        refusal = _refusal(check, reference_map=reference_map, policy=policy)
        if refusal is None and check.precision != "fp32":
            refusal = _speedup_refusal(check, by_name, policy)
        if refusal is None:
            eligible.append(check)
        else:
            reasons[check.target] = refusal
    fallback = by_name.get(policy.fallback)
    if fallback is None or policy.fallback in reasons:
        why = "no candidate" if fallback is None else reasons[policy.fallback]
        for check in eligible:
            reasons[check.target] = f"refused: the fallback {policy.fallback} failed ({why}), nothing ships"
        return Selection(chosen=None, reasons_per_target=reasons)
    costs = {c.target: _cost(c, policy.select_by) or 0.0 for c in eligible}  # all measured (see _refusal)
    ranked = sorted(eligible, key=lambda c: costs[c.target])
    chosen = ranked[0]
    if len(ranked) == 1 and chosen.target == policy.fallback:
        reasons[chosen.target] = (
            f"selected as the fallback: no other artifact qualified on {policy.target_hardware} "
            f"({_describe(chosen, policy.select_by)})"
        )
    else:
        gain = (
            f", {costs[policy.fallback] / costs[chosen.target]:.2f}x {policy.fallback}"
            if chosen.target != policy.fallback and costs[chosen.target] > 0
            else ""
        )
        reasons[chosen.target] = (
            f"selected: fastest eligible on {policy.target_hardware} ({_describe(chosen, policy.select_by)}{gain})"
        )
    for check in ranked[1:]:
        reasons[check.target] = (
            f"eligible, slower than {chosen.target} ({_describe(check, policy.select_by)} vs "
            f"{_describe(chosen, policy.select_by)})"
        )
    return Selection(chosen=chosen, reasons_per_target={c.target: reasons[c.target] for c in candidates})


def _cost(check: ArtifactCheck, select_by: str) -> float | None:
    """Lower is better: batch-1 p50 latency (ms), or seconds per image at the throughput batch."""
    if check.speed is None:
        return None
    if select_by == "throughput":
        return 1.0 / check.speed.throughput_ips if check.speed.throughput_ips > 0 else None
    return check.speed.latency_ms["p50"]


def _describe(check: ArtifactCheck, select_by: str) -> str:
    assert check.speed is not None
    if select_by == "throughput":
        return f"{check.speed.throughput_ips:.1f} img/s at batch {check.speed.batch}"
    return f"p50 {check.speed.latency_ms['p50']:.2f} ms at batch 1"


def _refusal(check: ArtifactCheck, *, reference_map: Mapping[str, float], policy: SelectionPolicy) -> str | None:
    """Why ``check`` may not ship regardless of speed (``None``: it may)."""
    if check.status != "built":
        return f"{check.status}: {check.reason}" if check.reason else check.status
    if policy.target_hardware not in check.hardware:
        return f"refused: runs on {'/'.join(check.hardware)}, export.target_hardware is {policy.target_hardware}"
    drop = policy.allowed_drop(check.precision, check.source)
    short = map_shortfalls(check.map50_95, reference_map, drop)
    if short:
        parts = [
            f"{name} {'not evaluated' if got is None else f'{got:.4f}'} < PyTorch {ref:.4f} - {drop:g}"
            for name, (got, ref) in short.items()
        ]
        unpruned = " unpruned" if check.source == "compressed" else ""
        parts = [p.replace("< PyTorch", f"<{unpruned} PyTorch") for p in parts]
        return f"refused: mAP50-95 {'; '.join(parts)} ({policy.tolerance(check.precision, check.source)})"
    if check.parity is not None and not check.parity.passed:
        p = check.parity
        return (
            f"refused: collapsed against PyTorch, {p.matched}/{p.reference} top detections reproduced "
            f"(needs {p.min_match:.0%}; worst score diff {p.worst_score_diff}, box diff {p.worst_box_diff_px} px)"
        )
    if _cost(check, policy.select_by) is None:
        return "refused: not benchmarked"
    return None


def _speedup_refusal(check: ArtifactCheck, by_name: Mapping[str, ArtifactCheck], policy: SelectionPolicy) -> str | None:
    """Refuse a reduced-precision artifact that is not ``min_speedup`` times faster than its sibling."""
    sibling = by_name.get(check.sibling or "")
    if sibling is None or _cost(sibling, policy.select_by) is None:
        sibling = by_name.get(policy.fallback)
    sibling_cost = None if sibling is None else _cost(sibling, policy.select_by)
    if sibling is None or sibling_cost is None:
        return f"refused: no sibling ({check.sibling} or {policy.fallback}) was measured to prove a speedup"
    own = _cost(check, policy.select_by)
    assert own is not None  # checked by _refusal
    speedup = sibling_cost / own
    if speedup < policy.min_speedup:
        return (
            f"refused: only {speedup:.2f}x faster than {sibling.target} ({_describe(check, policy.select_by)} vs "
            f"{_describe(sibling, policy.select_by)}), export.min_speedup is {policy.min_speedup}"
        )
    return None
