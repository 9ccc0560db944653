"""The gate's promotion rules: should the candidate replace the champion? Pure and table-tested.

:func:`compare` takes both models' scores (:class:`ModelScores`: per set a :class:`~tasks.core.coco.SetScore`
with the stored COCO matches, and the paired latency pass) and a :class:`GatePolicy`, and returns a
:class:`Decision` with one :class:`~tasks.contracts.reports.gate.Reason` per checked rule. Each rule is one
function below; ``compare`` runs them in a fixed order and rejects if any fails. Nothing here reads files or runs
a model: the stage (:mod:`tasks.gate`) scores (:mod:`tasks.targets.gate_scoring`) and times
(:mod:`tasks.targets.latency`) first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tasks.config import GateParams
from tasks.contracts.reports.gate import Reason, ReasonCode, Verdict
from tasks.core.bootstrap import Interval, bootstrap_median, paired_bootstrap
from tasks.core.coco import SetScore

GOLDEN = "golden"
PRODUCTION = "production"


@dataclass(frozen=True)
class LatencySeries:
    """One model's share of the paired latency pass (:func:`tasks.targets.latency.time_latency`), round by round.

    Attributes:
        artifact: the file timed.
        runtime: its export target (``onnx``, ``openvino_int8``, ...).
        round_ms: ``(R,)`` per round, the median batch-1 network ms of the model's runs in that round. The
            candidate's and the champion's series of one pass line up: round ``r`` of both was timed moments apart,
            taking turns, on the same images.
        runs_per_round: timed runs behind each round's median.
        threads: intra-op threads the runtime was given.
        fallback: why the FP32 ONNX files were timed instead of the deployed artifacts (``None``: deployed ones).
    """

    artifact: str
    runtime: str
    round_ms: tuple[float, ...]
    runs_per_round: int
    threads: int
    fallback: str | None = None


@dataclass(frozen=True)
class ModelScores:
    """One model scored on every gate set.

    Attributes:
        model: artifact path.
        sets: by set name.
        ms_per_image: mean wall time per image over all sets in the scoring pass (pre-processing + network +
            decoding, in batches of ``evaluate.batch``, after one untimed warm-up batch); informational only: the
            models are scored one after the other, so a noisy moment lands on one of them.
        latency: the model's series from the paired latency pass the latency rules judge (``None``: not timed).
    """

    model: str
    sets: dict[str, SetScore]
    ms_per_image: float
    latency: LatencySeries | None = None


@dataclass(frozen=True)
class GatePolicy:
    """The promotion rules (``gate`` section, seed resolved). ``None`` switches a rule off.

    Attributes:
        min_production_gain: the lower CI bound of production mAP50-95 (candidate − champion) must reach this.
        max_golden_loss: golden mAP50-95 may fall at most this much (point estimate).
        max_golden_loss_ci: the lower CI bound of the golden difference may fall at most this far below 0.
        max_class_drop: AP50-95 any class may lose on any set (point estimate).
        min_class_boxes: classes with fewer ground-truth boxes in a set are not held to ``max_class_drop`` there.
        max_latency_ms: the candidate's ms per image budget (fails when clearly over it, see :func:`compare`).
        max_latency_factor: the candidate may be at most this many times slower per image than the champion (fails
            when clearly slower, see :func:`compare`).
        resamples, level, seed: the paired bootstrap (over images for mAP, over rounds for latency).
    """

    min_production_gain: float
    max_golden_loss: float | None
    max_golden_loss_ci: float | None
    max_class_drop: float | None
    min_class_boxes: int
    max_latency_ms: float | None
    max_latency_factor: float | None
    resamples: int
    level: float
    seed: int

    @property
    def judges_latency(self) -> bool:
        """Whether a latency rule is on (then both models are timed in one paired pass)."""
        return self.max_latency_ms is not None or self.max_latency_factor is not None

    @classmethod
    def from_config(cls, gate: GateParams, *, seed: int) -> GatePolicy:
        """Build the policy from the ``gate`` section; ``seed`` is used when ``gate.seed`` is null."""
        # how to time is the stage's business, and licenses are the license gate's (decisions/license_gate.py)
        values = gate.model_dump(exclude={"speed", "license"})
        values["seed"] = seed if gate.seed is None else gate.seed
        return cls(**values)


@dataclass(frozen=True)
class LatencyComparison:
    """The paired latency pass as :func:`compare` judged it.

    Attributes:
        ratios: ``(R,)`` candidate / champion ms per usable round (both readings finite and > 0).
        ratio: median of ``ratios`` with its bootstrap interval over rounds.
        candidate_ms: median of the candidate's per-round ms with its bootstrap interval over rounds.
        champion_ms: median of the champion's per-round ms over the same rounds.
    """

    ratios: tuple[float, ...]
    ratio: Interval
    candidate_ms: Interval
    champion_ms: float


@dataclass(frozen=True)
class Decision:
    """What :func:`compare` returns: the verdict, every checked rule, and the intervals it used."""

    decision: Verdict
    reasons: list[Reason]
    intervals: dict[str, Interval] = field(default_factory=dict)
    latency: LatencyComparison | None = None

    @property
    def failed(self) -> list[Reason]:
        return [r for r in self.reasons if not r.passed]


# ---------------------------------------------------------------------------------------------------- latency


def compare_latency(
    candidate: LatencySeries, champion: LatencySeries, *, resamples: int, seed: int, level: float
) -> LatencyComparison:
    """Pair two series of one latency pass round by round: the ratio per round and the intervals of both medians.

    Rounds in which either reading is not a finite positive number are left out (a timer that read 0).

    Raises:
        ValueError: the series have different lengths (they were not timed in one paired pass).
    """
    if len(candidate.round_ms) != len(champion.round_ms):
        raise ValueError(
            f"latency series of {len(candidate.round_ms)} and {len(champion.round_ms)} rounds: candidate and "
            "champion must be timed in one paired pass (time_latency)"
        )
    cand = np.asarray(candidate.round_ms, np.float64)
    champ = np.asarray(champion.round_ms, np.float64)
    usable = np.isfinite(cand) & np.isfinite(champ) & (cand > 0) & (champ > 0)
    cand, champ = cand[usable], champ[usable]
    ratios = cand / champ
    return LatencyComparison(
        ratios=tuple(float(r) for r in ratios),
        ratio=bootstrap_median(ratios, resamples=resamples, seed=seed, level=level),
        candidate_ms=bootstrap_median(cand, resamples=resamples, seed=seed, level=level),
        champion_ms=float(np.median(champ)) if champ.size else math.nan,
    )


# ----------------------------------------------------------------------------------------------------- rules


def no_ap(value: float | None) -> bool:
    """No AP to compare: absent, NaN, or COCO's -1 (no ground truth)."""
    return value is None or math.isnan(value) or value < 0


def first_cycle_reasons(candidate: ModelScores) -> list[Reason]:
    """No champion yet: the candidate is promoted (``no_champion``)."""
    golden = candidate.sets[GOLDEN]
    return [
        Reason(
            "no_champion",
            True,
            f"no champion yet: the candidate is promoted (golden mAP50-95 {golden.map50_95:.4f})",
            {"candidate_golden_map50_95": golden.map50_95, "candidate_ms_per_image": candidate.ms_per_image},
        )
    ]


def production_reasons(intervals: Mapping[str, Interval], policy: GatePolicy) -> list[Reason]:
    """``production_gain``: the lower CI bound of production mAP50-95 (cand − champ) reaches the minimum gain.

    Without a production set, one ``no_holdouts`` note: the decision rests on golden only.
    """
    if PRODUCTION not in intervals:
        return [
            Reason(
                "no_holdouts", True, "no production holdouts yet: production comparison skipped, decided on golden only"
            )
        ]
    iv = intervals[PRODUCTION]
    ok = iv.low >= policy.min_production_gain  # NaN fails: no evidence of a gain
    return [
        Reason(
            "production_gain",
            ok,
            f"production mAP50-95 gain {iv.estimate:+.4f}, {policy.level:.0%} CI [{iv.low:+.4f}, {iv.high:+.4f}]: "
            f"lower bound {'>=' if ok else '<'} {policy.min_production_gain}",
            {
                "estimate": iv.estimate,
                "low": iv.low,
                "high": iv.high,
                "min_production_gain": policy.min_production_gain,
            },
        )
    ]


def golden_loss_reasons(cand: SetScore, champ: SetScore, policy: GatePolicy) -> list[Reason]:
    """``golden_loss``: golden mAP50-95 (cand − champ) >= −``max_golden_loss`` (point estimate)."""
    if policy.max_golden_loss is None:
        return []
    diff = cand.map50_95 - champ.map50_95
    ok = diff >= -policy.max_golden_loss
    return [
        Reason(
            "golden_loss",
            ok,
            f"golden mAP50-95 {champ.map50_95:.4f} -> {cand.map50_95:.4f} ({diff:+.4f}; "
            f"{'within' if ok else 'beyond'} the allowed loss {policy.max_golden_loss})",
            {
                "candidate": cand.map50_95,
                "champion": champ.map50_95,
                "diff": diff,
                "max_golden_loss": policy.max_golden_loss,
            },
        )
    ]


def golden_ci_reasons(golden: Interval, policy: GatePolicy) -> list[Reason]:
    """``golden_loss_ci``: the lower CI bound of the golden difference >= −``max_golden_loss_ci``."""
    if policy.max_golden_loss_ci is None:
        return []
    ok = golden.low >= -policy.max_golden_loss_ci
    return [
        Reason(
            "golden_loss_ci",
            ok,
            f"golden mAP50-95 difference {policy.level:.0%} CI [{golden.low:+.4f}, {golden.high:+.4f}]: lower bound "
            f"{'>=' if ok else '<'} -{policy.max_golden_loss_ci}",
            {
                "estimate": golden.estimate,
                "low": golden.low,
                "high": golden.high,
                "max_golden_loss_ci": policy.max_golden_loss_ci,
            },
        )
    ]


def class_reasons(name: str, cand: SetScore, champ: SetScore, policy: GatePolicy) -> list[Reason]:
    """``class_drop`` on one set: no class (with ground truth and enough boxes) loses more than the limit.

    One failing reason per class over the limit, else one passing reason naming the largest drop and the
    classes not compared.
    """
    if policy.max_class_drop is None:
        return []
    limit = policy.max_class_drop
    failing, skipped, worst = [], [], -math.inf
    for cls, champ_ap in champ.per_class_ap.items():
        cand_ap = cand.per_class_ap.get(cls, math.nan)
        boxes = cand.boxes_per_class.get(cls, 0)
        if no_ap(cand_ap) or no_ap(champ_ap) or boxes < policy.min_class_boxes:
            skipped.append(cls)
            continue
        drop = champ_ap - cand_ap
        worst = max(worst, drop)
        if drop > limit:
            failing.append(
                Reason(
                    "class_drop",
                    False,
                    f"{name}: class {cls!r} AP50-95 {champ_ap:.4f} -> {cand_ap:.4f} (drop {drop:.4f} > {limit})",
                    {"champion": champ_ap, "candidate": cand_ap, "drop": drop, "max_class_drop": limit},
                )
            )
    if failing:
        return failing
    note = f"; not compared: {skipped} (no ground truth or < {policy.min_class_boxes} boxes)" if skipped else ""
    worst_text = f"{worst:.4f}" if math.isfinite(worst) else "n/a"
    return [
        Reason(
            "class_drop",
            True,
            f"{name}: no class lost more than {limit} AP50-95 (largest drop {worst_text}){note}",
            {"largest_drop": worst if math.isfinite(worst) else math.nan, "max_class_drop": limit},
        )
    ]


def _latency_limits(policy: GatePolicy) -> list[tuple[ReasonCode, float]]:
    """The latency rules that are on, budget first."""
    limits: list[tuple[ReasonCode, float]] = []
    if policy.max_latency_ms is not None:
        limits.append(("latency_budget", policy.max_latency_ms))
    if policy.max_latency_factor is not None:
        limits.append(("latency_factor", policy.max_latency_factor))
    return limits


def _rounds_text(cand: LatencySeries, latency: LatencyComparison) -> str:
    """How the latency pass ran, for the latency reasons: rounds, runs, threads and any fallback."""
    note = f"; FP32 ONNX of both timed: {cand.fallback}" if cand.fallback else ""
    return f"{len(latency.ratios)} rounds of {cand.runs_per_round} runs, {cand.threads} thread(s){note}"


def latency_budget_reason(cand: LatencySeries, latency: LatencyComparison, *, limit: float, level: float) -> Reason:
    """``latency_budget``: fails only when the lower bound of the candidate's median ms is over ``limit``."""
    iv = latency.candidate_ms
    ok = iv.low <= limit
    return Reason(
        "latency_budget",
        ok,
        f"candidate {iv.estimate:.2f} ms/image, {level:.0%} CI [{iv.low:.2f}, {iv.high:.2f}] ({cand.runtime}, "
        f"{_rounds_text(cand, latency)}): lower bound {'<=' if ok else '>'} budget {limit} ms",
        {
            "estimate_ms": iv.estimate,
            "low_ms": iv.low,
            "high_ms": iv.high,
            "max_latency_ms": limit,
            "rounds": float(len(latency.ratios)),
        },
    )


def latency_factor_reason(
    cand: LatencySeries, champ: LatencySeries, latency: LatencyComparison, *, limit: float, level: float
) -> Reason:
    """``latency_factor``: fails only when the lower bound of the median per-round ratio is over ``limit``."""
    iv = latency.ratio
    ok = iv.low <= limit
    return Reason(
        "latency_factor",
        ok,
        f"candidate/champion {iv.estimate:.2f}x, {level:.0%} CI [{iv.low:.2f}, {iv.high:.2f}] ({cand.runtime} vs "
        f"{champ.runtime}, {_rounds_text(cand, latency)}): lower bound {'<=' if ok else '>'} {limit}",
        {
            "ratio": iv.estimate,
            "low": iv.low,
            "high": iv.high,
            "candidate_ms": latency.candidate_ms.estimate,
            "champion_ms": latency.champion_ms,
            "max_latency_factor": limit,
            "rounds": float(len(latency.ratios)),
        },
    )


def latency_reasons(
    cand: LatencySeries | None, champ: LatencySeries | None, latency: LatencyComparison | None, policy: GatePolicy
) -> list[Reason]:
    """The ``latency_budget`` and ``latency_factor`` reasons (each only when its limit is set).

    A rule that is on but has nothing to judge (no paired pass, no usable round) fails: a switched-on rule is
    never silently skipped.
    """
    limits = _latency_limits(policy)
    if cand is None or champ is None or latency is None or not latency.ratios:
        why = (
            "no paired latency pass of both models"
            if latency is None
            else f"no usable round among {len(cand.round_ms) if cand else 0}"
        )
        return [
            Reason(code, False, f"not measured ({why}): cannot show the candidate is within {limit}", {"limit": limit})
            for code, limit in limits
        ]
    return [
        latency_budget_reason(cand, latency, limit=limit, level=policy.level)
        if code == "latency_budget"
        else latency_factor_reason(cand, champ, latency, limit=limit, level=policy.level)
        for code, limit in limits
    ]


# ---------------------------------------------------------------------------------------------------- compare


def _check_comparable(candidate: ModelScores, champion: ModelScores) -> None:
    """Both models scored on the same sets and, set by set, on the same ground truth."""
    if set(candidate.sets) != set(champion.sets):
        raise ValueError(f"models scored on different sets: {sorted(candidate.sets)} vs {sorted(champion.sets)}")
    for name, score in candidate.sets.items():
        if not score.matches.same_ground_truth(champion.sets[name].matches):
            raise ValueError(f"set {name!r}: candidate and champion were not scored on the same ground truth")


def set_intervals(candidate: ModelScores, champion: ModelScores, policy: GatePolicy) -> dict[str, Interval]:
    """The paired-bootstrap interval of mAP50-95 (cand − champ) on every set, by set name."""
    return {
        name: paired_bootstrap(
            candidate.sets[name].matches,
            champion.sets[name].matches,
            resamples=policy.resamples,
            seed=policy.seed,
            level=policy.level,
        )
        for name in sorted(candidate.sets)
    }


def paired_latency(candidate: ModelScores, champion: ModelScores, policy: GatePolicy) -> LatencyComparison | None:
    """Both models' series of the paired latency pass, compared (``None`` when either was not timed)."""
    if candidate.latency is None or champion.latency is None:
        return None
    return compare_latency(
        candidate.latency, champion.latency, resamples=policy.resamples, seed=policy.seed, level=policy.level
    )


def compare(candidate: ModelScores, champion: ModelScores | None, policy: GatePolicy) -> Decision:
    """Decide whether the candidate replaces the champion. Pure: the same inputs give the same decision.

    Rules (each ``None`` in the policy switches its rule off); the candidate is rejected if any fails:
        production_gain: lower CI bound of production mAP50-95 (cand − champ) >= ``min_production_gain``;
        golden_loss: golden mAP50-95 (cand − champ) >= −``max_golden_loss``;
        golden_loss_ci: lower CI bound of the golden difference >= −``max_golden_loss_ci``;
        class_drop: on every set, no class (with ground truth and >= ``min_class_boxes`` boxes) loses more than
            ``max_class_drop`` AP50-95;
        latency_factor: fails only when the candidate is *clearly* more than ``max_latency_factor`` times slower:
            the lower bound of the interval of the median per-round ratio (candidate / champion) is above it;
        latency_budget: fails only when the candidate is clearly over ``max_latency_ms``: the lower bound of the
            interval of its median per-round ms is above it.
    No champion: promote ("no_champion"). No production set: decided on golden only ("no_holdouts").

    Why the latency rules look like this: a single ms/image per model, each measured alone, swings by 2x and more
    on a shared host (another process, another thread), and one unlucky reading rejected a better model. The paired
    pass (:func:`tasks.targets.latency.time_latency`) times both models in rounds, taking turns on the same images,
    so a noisy moment hits both within a round; the per-round *ratio* cancels what the round shared. The median
    over rounds shrugs off the rounds a burst hit only one side of, and the bootstrap over rounds (``resamples``,
    ``seed``, ``level``, as for mAP) says how far that median may be off. The burden of proof is on "slower": a
    noisy pass gives a wide interval whose lower bound stays low, so it passes; a genuine slowdown moves every
    round and the whole interval. A latency rule that is on but has nothing to judge (no pass, no usable round)
    fails: a switched-on rule is never silently skipped.

    Args:
        candidate: the candidate scored on ``golden`` and, when holdouts exist, ``production``.
        champion: the champion scored on the same sets, or ``None`` on the first cycle.
        policy: the rules and the bootstrap settings.

    Raises:
        ValueError: golden missing, the two models were not scored on the same sets and ground truth, or their
            latency series were not timed in one pass.
    """
    if GOLDEN not in candidate.sets:
        raise ValueError(f"candidate was not scored on {GOLDEN!r} (sets: {sorted(candidate.sets)})")
    if champion is None:
        return Decision("promote", first_cycle_reasons(candidate))
    _check_comparable(candidate, champion)
    intervals = set_intervals(candidate, champion, policy)
    reasons = [
        *production_reasons(intervals, policy),
        *golden_loss_reasons(candidate.sets[GOLDEN], champion.sets[GOLDEN], policy),
        *golden_ci_reasons(intervals[GOLDEN], policy),
    ]
    for name in sorted(candidate.sets):
        reasons.extend(class_reasons(name, candidate.sets[name], champion.sets[name], policy))
    latency = None
    if policy.judges_latency:
        latency = paired_latency(candidate, champion, policy)
        reasons.extend(latency_reasons(candidate.latency, champion.latency, latency, policy))
    verdict: Verdict = "promote" if all(r.passed for r in reasons) else "reject"
    return Decision(verdict, reasons, intervals, latency)
