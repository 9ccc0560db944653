"""The gate: the pure decision (``tasks.decisions.gate``), its latency pass and the stage around them.

COCO matching, AP and the bootstrap are tested in ``test_coco.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tasks import gate
from tasks.config import GateParams, Params
from tasks.contracts.deployed import Deployed
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.export import SpeedResult
from tasks.contracts.reports.gate import GateReport, Reason, SetComparison, json_safe
from tasks.core.bootstrap import Interval
from tasks.core.coco import match_coco, score_matches
from tasks.decisions import gate as decisions
from tasks.decisions.gate import GOLDEN, PRODUCTION, GatePolicy, LatencySeries, ModelScores, compare
from tasks.runtimes.detectors import Detections
from tasks.targets import gate_scoring, latency
from tasks.targets.latency import runtime_of
from tasks.targets.timing import RoundTiming
from tests.conftest import tiny_params_dict

# ------------------------------------------------------------------------------------------------- compare

CLASSES = ("a", "b")
PER_CLASS = 100  # images (one object each) per class and set


def hits_matches(rates: tuple[float, ...], offsets: tuple[int, ...] | None = None, classes=CLASSES) -> Any:
    """A set of ``PER_CLASS`` images per class in ``rates``; the model finds a ``rate`` share of them.

    Found objects are exact boxes with distinct scores (AP = (hits + 1) / 101), missed ones get no box;
    which images are found starts at ``offset`` (wrapping), so two models can agree or disagree per image.
    """
    offsets = offsets or (0,) * len(rates)
    images, anns, dets = [], [], []
    for k, (rate, offset) in enumerate(zip(rates, offsets, strict=True)):
        hits = {(offset + i) % PER_CLASS for i in range(round(rate * PER_CLASS))}
        for i in range(PER_CLASS):
            image_id = k * PER_CLASS + i + 1
            images.append({"id": image_id, "width": 100, "height": 100})
            anns.append(
                {"id": image_id, "image_id": image_id, "category_id": k + 1, "bbox": [10, 10, 30, 30], "area": 900}
            )
            if i in hits:
                score = 1.0 - image_id / 1000
                dets.append({"image_id": image_id, "category_id": k + 1, "bbox": [10, 10, 30, 30], "score": score})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    return match_coco({"images": images, "annotations": anns, "categories": categories}, dets)


ROUNDS = 8


@dataclasses.dataclass(frozen=True)
class Spec:
    """A model for the compare table: per-class hit rates on golden / production and its latency.

    ``ms`` is every round's reading of the paired latency pass unless ``rounds_ms`` gives the rounds one by one;
    ``timed=False``: no latency series at all.
    """

    golden: tuple[float, float] = (0.7, 0.7)
    production: tuple[float, float] | None = (0.7, 0.7)
    ms: float = 10.0
    golden_offsets: tuple[int, int] = (0, 0)
    production_offsets: tuple[int, int] = (0, 0)
    rounds_ms: tuple[float, ...] | None = None
    timed: bool = True

    def scores(self, name: str) -> ModelScores:
        sets = {GOLDEN: score_matches(GOLDEN, hits_matches(self.golden, self.golden_offsets))}
        if self.production is not None:
            sets[PRODUCTION] = score_matches(PRODUCTION, hits_matches(self.production, self.production_offsets))
        rounds = self.rounds_ms if self.rounds_ms is not None else (self.ms,) * ROUNDS
        latency = LatencySeries(f"{name}.xml", "openvino_int8", rounds, runs_per_round=5, threads=1)
        return ModelScores(model=name, sets=sets, ms_per_image=self.ms, latency=latency if self.timed else None)


# the same speed read on a noisy host: bursts hit either side in some rounds (ratios 0.33 .. 3.1)
NOISY_CAND = (10.0, 31.0, 9.5, 10.2, 28.0, 10.0, 9.8, 10.1)
NOISY_CHAMP = (10.0, 10.0, 25.0, 10.0, 10.3, 30.0, 9.9, 10.0)
# 2x slower in every round, with the same bursts on top
SLOW_CAND = (20.0, 62.0, 19.0, 20.4, 56.0, 20.0, 19.6, 20.2)


POLICY = GatePolicy.from_config(GateParams(resamples=400), seed=0)
BASE = Spec()


def policy(**changes: Any) -> GatePolicy:
    return dataclasses.replace(POLICY, **changes)


CASES = [
    # --- promote
    pytest.param(Spec(production=(0.8, 0.8)), BASE, POLICY, [], id="promote-clear-production-gain"),
    pytest.param(BASE, BASE, POLICY, [], id="promote-tie-lower-bound-0-reaches-min-gain-0"),
    pytest.param(
        Spec(golden=(0.69, 0.7), production=(0.8, 0.8)), BASE, POLICY, [], id="promote-golden-loss-within-tolerance"
    ),
    pytest.param(
        Spec(production=(0.68, 0.7)), BASE, policy(min_production_gain=-0.05), [], id="promote-allowed-small-loss"
    ),
    pytest.param(Spec(production=(0.8, 0.8), ms=15.0), BASE, POLICY, [], id="promote-latency-at-factor-limit"),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=NOISY_CAND),
        Spec(rounds_ms=NOISY_CHAMP),
        policy(max_latency_ms=12.0),
        [],
        id="promote-latency-noisy-but-equal",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=(14.0, 15.0, 16.0, 14.5, 15.5, 14.0, 16.0, 15.0)),
        BASE,
        POLICY,
        [],
        id="promote-latency-around-factor-not-clearly-above",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=(12.0,)), Spec(rounds_ms=(10.0,)), POLICY, [], id="promote-one-round"
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=(0.0, 10.0, math.nan, 10.0)),
        Spec(rounds_ms=(10.0, 0.0, 10.0, 10.0)),
        POLICY,
        [],
        id="promote-zero-and-nan-rounds-left-out",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), ms=100.0),
        BASE,
        policy(max_latency_factor=None, max_latency_ms=None),
        [],
        id="promote-latency-rules-off",
    ),
    pytest.param(
        Spec(golden=(0.5, 0.9), production=(0.8, 0.8)),
        BASE,
        policy(min_class_boxes=PER_CLASS + 1),
        [],
        id="promote-class-drop-on-too-few-boxes-not-held",
    ),
    pytest.param(
        Spec(golden=(0.5, 0.9), production=(0.8, 0.8)),
        BASE,
        policy(max_class_drop=None),
        [],
        id="promote-class-drop-rule-off",
    ),
    pytest.param(
        Spec(golden=(0.6, 0.6), production=(0.9, 0.9)),
        BASE,
        policy(max_golden_loss=None),
        [],
        id="promote-golden-loss-rule-off",
    ),
    # --- each rule alone
    pytest.param(
        Spec(production=(0.52, 0.52)),
        Spec(production=(0.5, 0.5), production_offsets=(50, 50)),
        POLICY,
        ["production_gain"],
        id="reject-gain-not-significant",
    ),
    pytest.param(Spec(production=(0.65, 0.65)), BASE, POLICY, ["production_gain"], id="reject-production-loss"),
    pytest.param(BASE, BASE, policy(min_production_gain=0.01), ["production_gain"], id="reject-tie-below-min-gain"),
    pytest.param(
        Spec(golden=(0.65, 0.65), production=(0.8, 0.8)), BASE, POLICY, ["golden_loss"], id="reject-golden-loss"
    ),
    pytest.param(
        Spec(production=(0.8, 0.8)),
        Spec(golden_offsets=(30, 30)),
        policy(max_golden_loss_ci=0.02),
        ["golden_loss_ci"],
        id="reject-golden-ci-too-wide-below-zero",
    ),
    pytest.param(
        Spec(golden=(0.5, 0.9), production=(0.8, 0.8)), BASE, POLICY, ["class_drop"], id="reject-class-drop-golden"
    ),
    pytest.param(
        Spec(production=(0.9, 0.5)),
        Spec(production=(0.2, 0.7)),
        POLICY,
        ["class_drop"],
        id="reject-class-drop-production-despite-gain",
    ),
    pytest.param(Spec(production=(0.8, 0.8), ms=15.1), BASE, POLICY, ["latency_factor"], id="reject-latency-factor"),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=SLOW_CAND),
        Spec(rounds_ms=NOISY_CAND),
        POLICY,
        ["latency_factor"],
        id="reject-latency-factor-clearly-slower-despite-noise",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=SLOW_CAND),
        Spec(rounds_ms=NOISY_CAND),
        policy(max_latency_factor=None, max_latency_ms=15.0),
        ["latency_budget"],
        id="reject-latency-budget-clearly-over-despite-noise",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), timed=False),
        BASE,
        policy(max_latency_ms=100.0),
        ["latency_budget", "latency_factor"],
        id="reject-latency-not-measured",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=()),
        Spec(rounds_ms=()),
        POLICY,
        ["latency_factor"],
        id="reject-latency-no-rounds",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), rounds_ms=(0.0, math.nan)),
        Spec(rounds_ms=(10.0, 10.0)),
        POLICY,
        ["latency_factor"],
        id="reject-latency-no-usable-round",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), timed=False),
        Spec(timed=False),
        policy(max_latency_factor=None),
        [],
        id="promote-latency-rules-off-need-no-pass",
    ),
    pytest.param(
        Spec(production=(0.8, 0.8), ms=8.0),
        BASE,
        policy(max_latency_ms=5.0),
        ["latency_budget"],
        id="reject-latency-budget",
    ),
    # --- several at once
    pytest.param(
        Spec(golden=(0.65, 0.65), production=(0.6, 0.6), ms=20.0),
        BASE,
        POLICY,
        ["production_gain", "golden_loss", "latency_factor"],
        id="reject-production-golden-latency",
    ),
    pytest.param(
        Spec(golden=(0.4, 0.4), production=(0.4, 0.4), ms=20.0),
        BASE,
        policy(max_latency_ms=12.0, max_golden_loss_ci=0.0),
        [
            "production_gain",
            "golden_loss",
            "golden_loss_ci",
            "class_drop",
            "class_drop",
            "class_drop",
            "class_drop",
            "latency_budget",
            "latency_factor",
        ],
        id="reject-every-rule",
    ),
    # --- no holdouts: golden only
    pytest.param(Spec(production=None), Spec(production=None), POLICY, [], id="no-holdouts-promote-on-golden-only"),
    pytest.param(
        Spec(golden=(0.65, 0.65), production=None),
        Spec(production=None),
        POLICY,
        ["golden_loss"],
        id="no-holdouts-reject-on-golden-loss",
    ),
]


@pytest.mark.parametrize(("candidate", "champion", "rules", "failing"), CASES)
def test_compare(candidate, champion, rules, failing):
    decision = compare(candidate.scores("cand"), champion.scores("champ"), rules)
    assert [r.code for r in decision.failed] == failing
    assert decision.decision == ("reject" if failing else "promote")
    codes = {r.code for r in decision.reasons}
    assert ("no_holdouts" in codes) == (candidate.production is None)
    assert set(decision.intervals) == ({GOLDEN} if candidate.production is None else {GOLDEN, PRODUCTION})
    for reason in decision.failed:
        assert reason.message and reason.numbers, "a rejection says what it compared"


@pytest.mark.parametrize(
    ("intervals", "rules", "expected"),
    [
        pytest.param({}, POLICY, [("no_holdouts", True)], id="no-production-set-note"),
        pytest.param({PRODUCTION: Interval(0.05, 0.01, 0.09, 0.95, 9)}, POLICY, [("production_gain", True)], id="gain"),
        pytest.param(
            {PRODUCTION: Interval(0.0, 0.0, 0.0, 0.95, 9)}, POLICY, [("production_gain", True)], id="tie-at-minimum"
        ),
        pytest.param(
            {PRODUCTION: Interval(0.05, -0.01, 0.09, 0.95, 9)}, POLICY, [("production_gain", False)], id="not-clear"
        ),
        pytest.param(
            {PRODUCTION: Interval(0.05, math.nan, math.nan, 0.95, 9)},
            POLICY,
            [("production_gain", False)],
            id="no-evidence-fails",
        ),
    ],
)
def test_production_rule_alone(intervals, rules, expected):
    assert [(r.code, r.passed) for r in decisions.production_reasons(intervals, rules)] == expected


@pytest.mark.parametrize(
    ("low", "limit", "expected"),
    [
        pytest.param(-0.01, None, [], id="rule-off"),
        pytest.param(-0.01, 0.02, [("golden_loss_ci", True)], id="within"),
        pytest.param(-0.02, 0.02, [("golden_loss_ci", True)], id="at-limit"),
        pytest.param(-0.03, 0.02, [("golden_loss_ci", False)], id="beyond"),
        pytest.param(math.nan, 0.02, [("golden_loss_ci", False)], id="no-evidence-fails"),
    ],
)
def test_golden_ci_rule_alone(low, limit, expected):
    reasons = decisions.golden_ci_reasons(Interval(0.0, low, 0.01, 0.95, 9), policy(max_golden_loss_ci=limit))
    assert [(r.code, r.passed) for r in reasons] == expected


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        pytest.param(policy(max_latency_factor=None), [], id="rules-off"),
        pytest.param(policy(), [("latency_factor", False)], id="factor-on"),
        pytest.param(policy(max_latency_ms=5.0), [("latency_budget", False), ("latency_factor", False)], id="both"),
    ],
)
def test_latency_rules_without_a_pass_fail(rules, expected):
    reasons = decisions.latency_reasons(None, None, None, rules)
    assert [(r.code, r.passed) for r in reasons] == expected
    assert all("no paired latency pass" in r.message for r in reasons)


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param(Spec(), id="ordinary"),
        pytest.param(Spec(golden=(0.0, 0.0), production=(0.0, 0.0), ms=1e6), id="terrible-and-slow"),
        pytest.param(Spec(production=None), id="no-holdouts-either"),
    ],
)
def test_no_champion_promotes(candidate):
    decision = compare(candidate.scores("cand"), None, policy(max_latency_ms=1.0))
    assert decision.decision == "promote"
    assert [r.code for r in decision.reasons] == ["no_champion"]
    assert decision.intervals == {}


def with_class_ap(scores: ModelScores, set_name: str, cls: str, value: float) -> ModelScores:
    score = scores.sets[set_name]
    changed = dataclasses.replace(score, per_class_ap=score.per_class_ap | {cls: value})
    return dataclasses.replace(scores, sets=scores.sets | {set_name: changed})


@pytest.mark.parametrize("missing", [float("nan"), -1.0], ids=["nan", "minus-one"])
@pytest.mark.parametrize("side", ["candidate", "champion"])
def test_class_without_ap_is_not_compared(missing, side):
    cand, champ = Spec(golden=(0.2, 0.7), production=(0.8, 0.8)).scores("c"), BASE.scores("h")
    rules = policy(max_golden_loss=None)
    assert [r.code for r in compare(cand, champ, rules).failed] == ["class_drop"]
    if side == "candidate":
        cand = with_class_ap(cand, GOLDEN, "a", missing)
    else:
        champ = with_class_ap(champ, GOLDEN, "a", missing)
    decision = compare(cand, champ, rules)
    assert decision.decision == "promote"
    note = next(r for r in decision.reasons if r.code == "class_drop" and "golden" in r.message)
    assert "not compared: ['a']" in note.message


def test_class_with_no_ground_truth_is_skipped():
    classes = ("a", "b", "c")
    base = hits_matches((0.7, 0.7), classes=classes)
    assert base.boxes_per_class()["c"] == 0
    cand = ModelScores("c", {GOLDEN: score_matches(GOLDEN, base)}, 10.0)
    champ = ModelScores("h", {GOLDEN: score_matches(GOLDEN, hits_matches((0.7, 0.7), classes=classes))}, 10.0)
    assert cand.sets[GOLDEN].per_class_ap["c"] == -1.0
    decision = compare(cand, champ, policy(max_latency_factor=None))  # not timed: latency is not this test's
    assert decision.decision == "promote"
    assert any("not compared: ['c']" in r.message for r in decision.reasons)


@pytest.mark.parametrize(
    ("champion", "match"),
    [
        pytest.param(Spec(production=None), "different sets", id="champion-without-production"),
        pytest.param(Spec(golden=(0.7,) * 2), None, id="same-sets-is-fine"),
    ],
)
def test_compare_refuses_models_scored_on_different_sets(champion, match):
    cand = BASE.scores("c")
    if match is None:
        compare(cand, champion.scores("h"), POLICY)
        return
    with pytest.raises(ValueError, match=match):
        compare(cand, champion.scores("h"), POLICY)


def test_compare_refuses_different_ground_truth():
    cand = BASE.scores("c")
    other = ModelScores(
        "h", {GOLDEN: score_matches(GOLDEN, hits_matches((0.7, 0.7, 0.7), classes=("a", "b", "c")))}, 1.0
    )
    cand = ModelScores("c", {GOLDEN: cand.sets[GOLDEN]}, 1.0)
    with pytest.raises(ValueError, match="same ground truth"):
        compare(cand, other, POLICY)


def test_compare_needs_golden():
    scores = BASE.scores("c")
    without = ModelScores("c", {PRODUCTION: scores.sets[PRODUCTION]}, 1.0)
    with pytest.raises(ValueError, match="golden"):
        compare(without, None, POLICY)


def test_compare_is_pure():
    cand, champ = Spec(production=(0.8, 0.8)).scores("c"), BASE.scores("h")
    assert compare(cand, champ, POLICY) == compare(cand, champ, POLICY)


def test_latency_series_of_different_passes_are_refused():
    cand = Spec(production=(0.8, 0.8), rounds_ms=(10.0,) * 8).scores("c")
    with pytest.raises(ValueError, match="one paired pass"):
        compare(cand, Spec(rounds_ms=(10.0,) * 7).scores("h"), POLICY)


def test_latency_reason_names_ratio_bounds_runtimes_and_rounds():
    decision = compare(Spec(production=(0.8, 0.8), rounds_ms=NOISY_CAND).scores("c"), Spec().scores("h"), POLICY)
    reason = next(r for r in decision.reasons if r.code == "latency_factor")
    assert reason.passed
    assert reason.message.startswith("candidate/champion 1.00x, 95% CI [")
    assert "(openvino_int8 vs openvino_int8, 8 rounds of 5 runs, 1 thread(s)): lower bound <= 1.5" in reason.message
    assert decision.latency is not None and len(decision.latency.ratios) == 8
    iv = decision.latency.ratio
    assert iv.low <= iv.estimate <= iv.high and iv.level == POLICY.level


def test_latency_fallback_is_named_in_the_reason():
    cand, champ = Spec(production=(0.8, 0.8)).scores("c"), Spec().scores("h")
    why = "champion: visionloop v1 has no deploy.artifact tag"
    cand = dataclasses.replace(cand, latency=dataclasses.replace(cand.latency, runtime="onnx", fallback=why))
    champ = dataclasses.replace(champ, latency=dataclasses.replace(champ.latency, runtime="onnx", fallback=why))
    reason = next(r for r in compare(cand, champ, POLICY).reasons if r.code == "latency_factor")
    assert "(onnx vs onnx, 8 rounds" in reason.message and f"FP32 ONNX of both timed: {why}" in reason.message


def test_policy_seed_defaults_to_base_seed():
    assert GatePolicy.from_config(GateParams(), seed=7).seed == 7
    assert GatePolicy.from_config(GateParams(seed=3), seed=7).seed == 3


# ------------------------------------------------------------------------------------------------- the stage


def write_yolo_set(root: Path, n: int, *, prefix: str) -> None:
    """``n`` 64x64 images with one box each (class ``i % 2``)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        Image.new("RGB", (64, 64), (i * 3 % 255, 90, 120)).save(root / "images" / f"{prefix}{i:03d}.png")
        (root / "labels" / f"{prefix}{i:03d}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.25\n")


def fake_detect_sets(
    model_path: Path, groups, settings, *, batch: int, desc: str = "", warmup: bool = False, cache=None
):
    """Stands in for inference: ``good*`` finds every object exactly, ``poor*`` shifts its boxes; ms by name."""
    found, offset = [], 0
    for images in groups:
        found.append((fake_detections(model_path, images, offset), 4.0))
        offset += len(images)
    return found


def fake_detections(model_path: Path, images, offset: int) -> list[Detections]:
    shift = 0.0 if model_path.name.startswith("good") else 5.0
    dets = []
    for i, item in enumerate(images, start=offset):
        boxes = []
        for cx, cy, w, h in item.boxes_xywhn:
            x1, y1 = (cx - w / 2) * item.width + shift, (cy - h / 2) * item.height
            boxes.append([x1, y1, x1 + w * item.width, y1 + h * item.height])
        dets.append(
            Detections(
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.full(len(boxes), 0.9 - i * 1e-4, np.float32),
                np.asarray(item.class_id, np.int64),
            )
        )
    return dets


TIMED: list[dict[str, Path]] = []  # what each latency pass of the stage tests timed


def fake_time_rounds(paths, *, settings, images, batch, warmup, runs, batch_runs, rounds):
    """Stands in for the paired timing pass (its own tests use real models): ``good*`` 4 ms, others 5 ms a round."""
    TIMED.append(dict(paths))
    for path in paths.values():
        if path.suffix == ".engine":
            raise ValueError(f"{path}: TensorRT needs CUDA")
    assert batch == 1 and batch_runs == 0 and images.ndim == 4 and runs % rounds == 0
    speed = SpeedResult(1, False, {}, 1, math.nan, 0.0, 0.0, 0.0, runs, warmup, rounds)
    per_round = runs // rounds
    return {
        name: RoundTiming(speed, (4.0 if path.name.startswith("good") else 5.0,) * rounds, (per_round,) * rounds)
        for name, path in paths.items()
    }


@pytest.fixture
def stage_params(tmp_path, monkeypatch) -> Params:
    data = tiny_params_dict(tmp_path)
    data["gate"] = {"resamples": 100, "min_class_boxes": 1}
    params = Params.model_validate(data)
    write_yolo_set(params.base.paths.golden, 20, prefix="g")
    monkeypatch.setattr(gate_scoring, "detect_sets", fake_detect_sets)
    monkeypatch.setattr(latency, "time_rounds", fake_time_rounds)
    TIMED.clear()
    return params


def read_strict_json(path: Path) -> dict[str, Any]:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_first_cycle_promotes_and_reports(stage_params, tmp_path):
    report = gate.run(stage_params, candidate=tmp_path / "good.onnx", champion=None)
    assert report.decision == "promote" and [r.code for r in report.reasons] == ["no_champion"]
    saved = read_strict_json(stage_params.base.paths.reports / "gate.json")
    assert saved["decision"] == "promote" and saved["champion"] is None
    assert saved["sets"]["golden"]["candidate_map50_95"] == pytest.approx(1.0)
    assert saved["sets"]["golden"]["interval"] is None
    assert set(saved["sets"]) == {"golden"}


def test_without_holdouts_decides_on_golden_and_says_so(stage_params, tmp_path):
    report = gate.run(stage_params, candidate=tmp_path / "good.onnx", champion=tmp_path / "poor.onnx")
    assert report.decision == "promote"
    assert "no_holdouts" in [r.code for r in report.reasons]
    assert set(report.sets) == {"golden"}


def test_holdouts_are_united_and_compared(stage_params, tmp_path):
    holdouts = stage_params.base.paths.holdouts
    write_yolo_set(holdouts / "cycle-001", 12, prefix="h1-")
    write_yolo_set(holdouts / "cycle-002", 10, prefix="h2-")
    (holdouts / "not-a-set").mkdir()
    report = gate.run(stage_params, candidate=tmp_path / "poor.onnx", champion=tmp_path / "good.onnx")
    assert report.decision == "reject"
    assert {"production_gain", "golden_loss", "class_drop"} <= {r.code for r in report.reasons if not r.passed}
    production = report.sets["production"]
    assert production.images == 22 and len(production.paths) == 2
    assert production.interval is not None and production.interval.high < 0
    saved = read_strict_json(stage_params.base.paths.reports / "gate.json")
    assert saved["sets"]["production"]["per_class"]["circle"]["champion"] == pytest.approx(1.0)
    assert saved["latency_ms_per_image"] == {"candidate": 4.0, "champion": 4.0}
    assert saved["policy"]["resamples"] == 100
    latency = saved["latency"]
    rounds = stage_params.gate.speed.rounds
    assert latency["candidate"]["round_ms"] == [5.0] * rounds and latency["champion"]["round_ms"] == [4.0] * rounds
    assert latency["ratios"] == [1.25] * rounds and latency["ratio"]["estimate"] == 1.25
    assert latency["rounds"] == rounds and latency["runs_per_round"] == stage_params.gate.speed.runs
    assert latency["timed"] == "onnx vs onnx" and "no selected artifact" in latency["fallback"]
    assert latency["candidate"]["artifact"].endswith("poor.onnx")
    loaded = load_report(stage_params.base.paths.reports, "gate")
    assert loaded.decision == report.decision and loaded.reasons == report.reasons
    assert loaded.sets == report.sets and loaded.latency == json_safe(report.latency)  # tuples: lists


def test_first_cycle_times_nothing(stage_params, tmp_path):
    report = gate.run(stage_params, candidate=tmp_path / "good.onnx", champion=None)
    assert TIMED == [] and report.latency is None


def deployed(path: Path, target: str, fallback: str | None = None) -> Deployed:
    return Deployed(target=target, precision="int8", path=path, fallback=fallback)


def test_deployed_artifacts_of_both_are_timed(stage_params, tmp_path):
    cand_xml, champ_xml = tmp_path / "openvino_int8" / "good.xml", tmp_path / "champ" / "openvino_int8" / "good.xml"
    report = gate.run(
        stage_params,
        candidate=tmp_path / "good.onnx",
        champion=tmp_path / "poor.onnx",
        candidate_deployed=deployed(cand_xml, "openvino_int8"),
        champion_deployed=deployed(champ_xml, "onnx_int8"),
    )
    assert [{"candidate": cand_xml, "champion": champ_xml}] == TIMED  # scored on ONNX, timed as deployed
    reason = next(r for r in report.reasons if r.code == "latency_factor")
    assert reason.passed and "(openvino_int8 vs onnx_int8, " in reason.message and "FP32 ONNX" not in reason.message
    assert report.latency is not None and report.latency["fallback"] is None


@pytest.mark.parametrize(
    ("champion_deployed", "why"),
    [
        pytest.param(None, "the champion has no selected artifact given", id="champion-unknown"),
        pytest.param(
            deployed(Path("v1/model.onnx"), "onnx", fallback="visionloop v1 has no deploy.artifact tag"),
            "champion: visionloop v1 has no deploy.artifact tag",
            id="old-champion-without-selection",
        ),
        pytest.param(deployed(Path("trt/model_int8.engine"), "tensorrt_int8"), "cannot be timed here", id="cannot-run"),
    ],
)
def test_without_both_deployed_artifacts_the_onnx_of_both_is_timed(stage_params, tmp_path, champion_deployed, why):
    cand_xml = tmp_path / "openvino_int8" / "good.xml"
    report = gate.run(
        stage_params,
        candidate=tmp_path / "good.onnx",
        champion=tmp_path / "poor.onnx",
        candidate_deployed=deployed(cand_xml, "openvino_int8"),
        champion_deployed=champion_deployed,
    )
    assert TIMED[-1] == {"candidate": tmp_path / "good.onnx", "champion": tmp_path / "poor.onnx"}
    reason = next(r for r in report.reasons if r.code == "latency_factor")
    assert "(onnx vs onnx, " in reason.message and "FP32 ONNX of both timed: " in reason.message
    assert why in reason.message


@pytest.mark.parametrize(
    ("path", "runtime"),
    [
        ("models/export/model.onnx", "onnx"),
        ("models/export/model_int8.onnx", "onnx"),
        ("models/export/openvino_int8/model.xml", "openvino_int8"),
        ("cache/export/onnx_int8/model_int8.onnx", "onnx_int8"),
        ("somewhere/model.xml", "openvino"),
        ("models/train/best.pt", "pytorch"),
    ],
)
def test_runtime_of(path, runtime):
    assert runtime_of(Path(path)) == runtime


def test_cli(stage_params, tmp_path, capsys):
    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(stage_params.model_dump(mode="json")))
    gate.main(["--params", str(params_file), "--candidate", str(tmp_path / "good.pt")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"decision": "promote", "failed": []}
    cand_xml, champ_xml = tmp_path / "a" / "openvino_int8" / "good.xml", tmp_path / "b" / "openvino" / "good.xml"
    args = ["--params", str(params_file), "--candidate", str(tmp_path / "good.onnx")]
    args += ["--champion", str(tmp_path / "good.onnx")]
    gate.main([*args, "--candidate-deployed", str(cand_xml), "--champion-deployed", str(champ_xml)])
    assert TIMED[-1] == {"candidate": cand_xml, "champion": champ_xml}
    saved = read_strict_json(stage_params.base.paths.reports / "gate.json")
    assert saved["latency"]["timed"] == "openvino_int8 vs openvino"


def test_disagreement_with_coco_stops_the_gate(stage_params, tmp_path, monkeypatch):
    real = gate_scoring.coco_metrics

    def off_by_a_bit(gt, dets):
        result = real(gt, dets)
        return dataclasses.replace(result, stats=result.stats | {"AP": result.stats["AP"] + 1e-4})

    monkeypatch.setattr(gate_scoring, "coco_metrics", off_by_a_bit)
    with pytest.raises(gate_scoring.ScoringError, match="faster-coco-eval"):
        gate.run(stage_params, candidate=tmp_path / "good.onnx", champion=None)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param(["c1", "c2/images", "c0"], ["c0", "c1"], id="complete-only"),
        pytest.param(["c0", ".c1.tmp"], ["c0"], id="hidden-staging-folder"),
        pytest.param(["c0", "c1/images", "c1/labels"], ["c0"], id="empty-holdout-skipped"),
        pytest.param(None, [], id="missing-root"),
    ],
)
def test_find_holdouts(tmp_path, layout, expected):
    """Each name without a slash is a complete one-image set; paths with a slash are bare folders."""
    root = tmp_path / "holdouts"
    if layout is not None:
        root.mkdir()
        for sub in layout:
            if "/" in sub:
                (root / sub).mkdir(parents=True)
            else:
                write_yolo_set(root / sub, 1, prefix="x")
    assert [p.name for p in gate.find_holdouts(root)] == expected


def test_report_with_missing_numbers_is_strict_json_and_reads_back(stage_params):
    """NaN (an interval without evidence, a rule's missing value) is written as null and read back as NaN."""
    nan = math.nan
    report = GateReport(
        decision="reject",
        reasons=[Reason("latency_factor", False, "not measured", {"limit": 1.5, "ratio": nan})],
        candidate="c.onnx",
        champion="h.onnx",
        sets={GOLDEN: SetComparison(3, 4, ["g"], 0.5, 0.6, 0.7, 0.8, Interval(-0.1, nan, nan, 0.95, 10), {"a": {}})},
        latency_ms_per_image={"candidate": 1.0, "champion": None},
        policy={"max_latency_ms": None, "level": 0.95},
        latency={"ratio": {"estimate": nan}, "ratios": []},
    )
    path = write_report(stage_params.base.paths.reports, "gate", report, stage_params)
    saved = read_strict_json(path)
    assert saved["reasons"][0]["numbers"] == {"limit": 1.5, "ratio": None}
    assert saved["sets"][GOLDEN]["interval"]["low"] is None and saved["latency"]["ratio"]["estimate"] is None
    assert saved["params"]["digest"] == stage_params.digest()
    loaded = load_report(stage_params.base.paths.reports, "gate")
    assert math.isnan(loaded.reasons[0].numbers["ratio"]) and math.isnan(loaded.sets[GOLDEN].interval.high)
    assert loaded.sets[GOLDEN].interval.estimate == -0.1 and loaded.policy == report.policy
