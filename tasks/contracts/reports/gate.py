"""``reports/gate.json``: the gate's decision, its reasons, both models' mAP per set and the latency pass.

The gate stage writes a :class:`GateReport` with :func:`tasks.contracts.reports.write_report`; other stages read
it back with ``load_report(reports, "gate")``. :class:`Reason` is also what the pure rules of
:mod:`tasks.decisions.gate` return, so the rules and the report share one record.

Strict JSON has no NaN: a number that does not exist (an interval bound without evidence, a rule's missing value)
is written as ``null`` and read back as NaN.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PlainSerializer

from tasks.core.bootstrap import Interval

Verdict = Literal["promote", "reject"]
ReasonCode = Literal[
    "no_champion",
    "no_holdouts",
    "production_gain",
    "golden_loss",
    "golden_loss_ci",
    "class_drop",
    "latency_budget",
    "latency_factor",
]


def json_safe(value: Any) -> Any:
    """NaN and infinities become ``None`` (strict JSON has neither), in nested dicts, lists and dataclasses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _null_as_nan(value: Any) -> Any:
    return math.nan if value is None else value


def _nulls_as_nan(value: Any) -> Any:
    return {k: _null_as_nan(v) for k, v in value.items()} if isinstance(value, dict) else value


_AS_JSON = PlainSerializer(json_safe, when_used="json")
# a float that may be NaN: written as null, read back as NaN
Number = Annotated[float, BeforeValidator(_null_as_nan), _AS_JSON]
# an interval whose bounds may be NaN (no resample had ground truth)
NullableInterval = Annotated[Interval | None, BeforeValidator(_nulls_as_nan), _AS_JSON]


@dataclass(frozen=True)
class Reason:
    """One checked rule (or note) behind a decision.

    Attributes:
        code: which rule.
        passed: ``False`` when this rule rejects the candidate; notes are ``True``.
        message: one line for humans.
        numbers: the values the rule compared (NaN where a value does not exist).
    """

    code: ReasonCode
    passed: bool
    message: str
    numbers: dict[str, Number] = field(default_factory=dict)


@dataclass(frozen=True)
class SetComparison:
    """One set in the report: both models' mAP, the interval of the difference, the per-class table."""

    images: int
    boxes: int
    paths: list[str]
    candidate_map50_95: float
    champion_map50_95: float | None
    candidate_map50: float
    champion_map50: float | None
    interval: NullableInterval
    per_class: dict[str, dict[str, float | int | None]]


@dataclass(frozen=True)
class GateReport:
    """What ``reports/gate.json`` holds.

    Attributes:
        decision: ``promote`` or ``reject``.
        reasons: every checked rule (and note), in the order the rules ran.
        candidate, champion: the scored artifacts (``champion`` is ``None`` on the first cycle).
        sets: by set name (``golden``, ``production``).
        latency_ms_per_image: each model's mean ms per image in the scoring pass (informational).
        policy: the rules and bootstrap settings the decision used.
        params_digest: ``Params.digest()`` of the run (the top-level ``params`` stamp repeats it).
        latency: the paired latency pass (both series, the per-round ratios, the estimates and bounds, what was
            timed); ``None`` when nothing was timed.
        wall_s: seconds the stage took.
        cache_hits, cache_misses: set folders (golden, each holdout) of either model whose detections came from the
            detection cache, and those detected (and stored); 0 with the cache off and in older reports.
    """

    decision: Verdict
    reasons: list[Reason]
    candidate: str
    champion: str | None
    sets: dict[str, SetComparison]
    latency_ms_per_image: dict[str, float | None]
    policy: Annotated[dict[str, Any], _AS_JSON]
    params_digest: str = ""
    latency: Annotated[dict[str, Any] | None, _AS_JSON] = None
    wall_s: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
