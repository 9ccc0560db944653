"""The sample stage: strategy scores, exclusions, budgets and caps, determinism, bad inputs.

Prediction logs are synthesised in ``tmp_path`` with ``prediction_log.rows_to_table`` + ``append``; images are tiny
PNGs (an 8x8 random grid blown up to 64x64: perceptual hashes >= 20 bits apart, ±2 noise moves them <= 2 bits).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tasks import sample
from tasks.config import ConfigError, Params, SampleParams, load_params
from tasks.contracts import prediction_log as plog
from tasks.contracts import prediction_rows, sample_manifest
from tasks.contracts.prediction_log import ImageDetections, PredictionLogError
from tasks.contracts.reports import load_report
from tasks.core import phash
from tasks.decisions import sampling
from tests.conftest import tiny_params_dict

CLASSES = ["circle", "square", "triangle"]
DAY1, DAY2, DAY3 = dt.date(2026, 11, 2), dt.date(2026, 11, 3), dt.date(2026, 11, 4)
TS = dt.datetime(2026, 11, 5, 12, tzinfo=dt.UTC)
FAR = (60.0, 60.0, 63.0, 63.0)  # a box far from BOX: IoU 0
BOX = (8.0, 8.0, 40.0, 40.0)

Box = tuple[int, float, tuple[float, float, float, float]]  # class, confidence, xyxy pixels of a 64x64 image


def write_image(path: Path, seed: int, *, noise: int = 0) -> Path:
    """A 64x64 PNG that is its own picture per ``seed``; ``noise`` makes a near-duplicate of it."""
    grid = np.random.default_rng(seed).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(grid).resize((64, 64), Image.NEAREST)).astype(np.int16)
    if noise:
        pixels += np.random.default_rng(seed + 1000).integers(-noise, noise + 1, pixels.shape, dtype=np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def detections(path: Path, boxes: Sequence[Box]) -> ImageDetections:
    return ImageDetections(
        image_id=path.stem,
        image_uri=path.resolve().as_uri(),
        image_sha256=plog.sha256_file(path),
        width=64,
        height=64,
        latency_ms=5.0,
        boxes_xyxy=np.array([b[2] for b in boxes], dtype=np.float64).reshape(-1, 4),
        confidence=np.array([b[1] for b in boxes], dtype=np.float64),
        class_id=np.array([b[0] for b in boxes], dtype=np.int64),
    )


def table_of(
    records: Sequence[ImageDetections],
    *,
    date: dt.date = DAY1,
    batch: str | None = None,
    version: str = "3",
    alias: str | None = "champion",
    ts: dt.datetime = TS,
) -> pa.Table:
    return plog.rows_to_table(
        records,
        batch=batch or date.isoformat(),
        date=date,
        model_name="visionloop-detector",
        model_version=version,
        model_alias=alias,
        class_names=CLASSES,
        ts=ts,
    )


class World:
    """A tmp_path project: images, a prediction log, params with chosen strategies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.params_dict = tiny_params_dict(root)
        self.paths = Params.model_validate(self.params_dict).base.paths
        self.seeds = 0
        self.parts = 0

    def image(self, name: str, *, like: Path | None = None, noise: int = 0) -> Path:
        """A new distinct image, or a near-duplicate of ``like``."""
        if like is not None:
            seed = int(like.stem.rsplit("_", 1)[-1])
            return write_image(self.root / "images" / f"{name}_{seed}.png", seed, noise=noise)
        self.seeds += 1
        return write_image(self.root / "images" / f"{name}_{self.seeds}.png", self.seeds)

    def log(self, items: Sequence[tuple[Path, Sequence[Box]]], **kwargs: Any) -> list[ImageDetections]:
        records = [detections(path, boxes) for path, boxes in items]
        table = table_of(records, **kwargs)
        self.parts += 1  # one file per call: a later call never replaces an earlier one
        plog.append(self.paths.predictions, table, part=f"part{self.parts:03d}")
        return records

    def params(self, strategies: dict[str, dict[str, Any]], **section: Any) -> Params:
        data = json.loads(json.dumps(self.params_dict))
        data["sample"].update({"max_per_day": None, "window_days": 7, "budget": 50, **section})
        data["sample"]["strategies"] = {name: strategies.get(name) for name in sampling.STRATEGIES}
        return Params.model_validate(data)

    def manifest(self, cycle: str = "c1") -> pa.Table:
        return pq.read_table(self.paths.samples / cycle / "manifest.parquet")

    def report(self) -> dict[str, Any]:
        return json.loads((self.paths.reports / "sample.json").read_text())


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def only(name: str, **config: Any) -> dict[str, dict[str, Any]]:
    return {name: {"weight": 1.0, "budget": 10, **config}}


def sha(path: Path) -> str:
    return plog.sha256_file(path)


def picked(world: World, cycle: str = "c1") -> set[str]:
    return set(world.manifest(cycle)["image_sha256"].to_pylist())


def rows_of(items: Sequence[Sequence[Box]], *, boxes: bool = False) -> prediction_rows.ImageRows:
    """ImageRows of images named img0, img1, ... with the given boxes (hashes of the names, no files)."""
    records = [
        ImageDetections(
            image_id=f"img{i}",
            image_uri=f"file:///img{i}.png",
            image_sha256=hashlib.sha256(f"img{i}".encode()).hexdigest(),
            width=64,
            height=64,
            latency_ms=1.0,
            boxes_xyxy=np.array([b[2] for b in item], dtype=np.float64).reshape(-1, 4),
            confidence=np.array([b[1] for b in item], dtype=np.float64),
            class_id=np.array([b[0] for b in item], dtype=np.int64),
        )
        for i, item in enumerate(items)
    ]
    return prediction_rows.image_rows(table_of(records), boxes=boxes)


def scores(frame: Any) -> list[float | None]:
    return [None if s is None else round(s, 4) for s in frame["score"].to_list()]


# Strategy scores (pure functions) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([[(0, 0.3, BOX)]], [0.5], id="one-box-in-band"),
        pytest.param([[(0, 0.3, BOX), (1, 0.45, FAR)]], [0.6667], id="two-boxes-in-band-score-higher"),
        pytest.param([[(0, 0.9, BOX)], [(0, 0.5, BOX)]], [None, None], id="above-band-and-high-edge-excluded"),
        pytest.param([[(0, 0.1, BOX)]], [0.5], id="low-edge-included"),
        pytest.param([[]], [None], id="no-detections"),
    ],
)
def test_low_confidence_counts_boxes_in_band(items, expected):
    assert scores(sampling.score_low_confidence(rows_of(items), band=(0.1, 0.5))) == expected


@pytest.mark.parametrize(
    ("items", "min_score", "expected"),
    [
        pytest.param([], 0.0, [], id="empty"),
        pytest.param([[(0, 0.5, BOX)]], 0.8, [1.0], id="coin-flip-is-one-bit"),
        pytest.param([[(0, 0.5, BOX), (1, 0.99, FAR)]], 0.0, [0.5404], id="mean-over-boxes"),
        pytest.param([[(0, 0.99, BOX)]], 0.8, [None], id="confident-below-min"),
        pytest.param([[]], 0.0, [None], id="no-detections"),
    ],
)
def test_entropy_is_mean_binary_entropy(items, min_score, expected):
    assert scores(sampling.score_entropy(rows_of(items), min_score=min_score)) == expected


@pytest.mark.parametrize(
    ("items", "threshold", "expected"),
    [
        pytest.param([], 0.5, [], id="empty"),
        pytest.param([[(0, 0.55, BOX), (1, 0.95, FAR)]], 0.5, [0.9], id="nearest-box-counts"),
        pytest.param([[(0, 0.95, BOX)]], 0.5, [None], id="far-from-threshold"),
        pytest.param([[(0, 0.3, BOX)]], 0.25, [0.9333], id="other-threshold"),
        pytest.param([[]], 0.5, [None], id="no-detections"),
    ],
)
def test_margin_is_distance_to_threshold(items, threshold, expected):
    assert scores(sampling.score_margin(rows_of(items), threshold=threshold, min_score=0.8)) == expected


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param(
            [[(0, 0.9, BOX)], [(0, 0.9, BOX), (0, 0.9, FAR)], [(0, 0.9, BOX), (2, 0.9, FAR)], [(1, 0.9, BOX)]],
            [None, None, 1.0, 1.0],
            id="rare-classes-score-one-common-below-min",
        ),
        pytest.param([[(0, 0.9, BOX)], [(1, 0.9, BOX)]], [1.0, 1.0], id="balanced-all-one"),
        pytest.param([[]], [None], id="no-detections"),
    ],
)
def test_class_balanced_favours_rare_classes(items, expected):
    assert scores(sampling.score_class_balanced(rows_of(items), min_score=0.5)) == expected


def test_random_and_drift_draws_are_seeded_and_respect_rate():
    rows = rows_of([[(0, 0.9, BOX)] for _ in range(400)])
    every = sampling.score_random(rows, rate=1.0, seed=7, cycle="c1")["score"]
    assert every.null_count() == 0
    none = sampling.score_random(rows, rate=0.0, seed=7, cycle="c1")["score"]
    assert none.null_count() == 400
    some = sampling.score_random(rows, rate=0.25, seed=7, cycle="c1")["score"]
    assert 60 < 400 - some.null_count() < 140
    again = sampling.score_random(rows, rate=0.25, seed=7, cycle="c1")["score"]
    assert some.to_list() == again.to_list()
    other_seed = sampling.score_random(rows, rate=0.25, seed=8, cycle="c1")["score"]
    other_cycle = sampling.score_random(rows, rate=0.25, seed=7, cycle="c2")["score"]
    assert some.is_null().to_list() != other_seed.is_null().to_list()
    assert some.is_null().to_list() != other_cycle.is_null().to_list()
    drift = sampling.score_drift(rows, flagged=["elsewhere"], rate=1.0, seed=7, cycle="c1")["score"]
    assert drift.null_count() == 400  # no image of rows is in a flagged batch


@pytest.mark.parametrize(
    ("champion", "other", "expected"),
    [
        pytest.param([], [], [], id="empty"),
        pytest.param([[(0, 0.9, BOX)]], [[(0, 0.8, BOX)]], [None], id="agree"),
        pytest.param([[(0, 0.9, BOX)]], [[(1, 0.9, BOX)]], [1.0], id="class-flip"),
        pytest.param([[(0, 0.9, BOX)]], [[(0, 0.9, FAR)]], [1.0], id="moved-box-is-unmatched"),
        pytest.param([[(0, 0.9, BOX)]], [[(0, 0.9, BOX), (1, 0.9, FAR)]], [0.5], id="extra-box-on-other-side"),
        pytest.param([[(0, 0.9, BOX), (1, 0.9, FAR)]], [[(0, 0.9, BOX)]], [0.5], id="box-missing-on-other-side"),
        pytest.param([[(0, 0.9, BOX), (0, 0.9, BOX)]], [[(0, 0.9, BOX)]], [0.5], id="duplicate-box-not-one-to-one"),
        pytest.param([[]], [[(0, 0.9, BOX)]], [1.0], id="champion-saw-nothing"),
        pytest.param([[]], [[]], [None], id="both-saw-nothing"),
        pytest.param([[(0, 0.9, BOX)], [(0, 0.9, BOX)]], [[(1, 0.9, BOX)]], [1.0, None], id="image-only-champion-has"),
    ],
)
def test_disagreement_finds_flips_and_unmatched_boxes(champion, other, expected):
    found = sampling.score_disagreement(
        rows_of(champion, boxes=True), rows_of(other, boxes=True), iou=0.5, min_score=0.1
    )
    assert scores(found) == expected


def test_image_rows_keep_each_images_rows_together():
    rows = rows_of([[(0, 0.9, BOX), (1, 0.4, FAR)], [], [(2, 0.3, BOX)]])
    assert rows.starts.tolist() == [0, 2, 3]
    assert np.isnan(rows.confidence[2]) and rows.class_id.tolist() == [0, 1, -1, 2]
    assert len(rows) == 3 and len(set(rows.sha_prefix.tolist())) == 3


# Selection (pure: nominate + select with an injected hash) -------------------------------------------------------

H0 = np.zeros(8, np.uint8)
H0_NEAR = np.array([0, 0, 0, 0, 0, 0, 0, 3], np.uint8)  # 2 bits from H0
H_FAR = np.full(8, 255, np.uint8)


NEAR, DUP = "near_duplicate", "day_cap"


@pytest.mark.parametrize(
    ("section", "hashes", "ledger", "taken", "rejected"),
    [
        pytest.param({"phash_distance": None}, {}, [], [0, 1, 2, 3], {}, id="no-checks-best-first"),
        pytest.param({"budget": 2, "phash_distance": None}, {}, [], [0, 1], {}, id="cycle-budget"),
        pytest.param({"max_per_day": 1, "phash_distance": None}, {}, [], [0], {1: DUP, 2: DUP, 3: DUP}, id="day-cap"),
        pytest.param({}, {0: H0, 1: H0_NEAR, 2: H_FAR, 3: None}, [], [0, 2], {1: NEAR, 3: "unreadable_image"},
                     id="duplicate-among-picks-and-unreadable"),
        pytest.param({}, {0: H0_NEAR, 1: H_FAR, 2: H_FAR, 3: H0}, [H0], [1], {0: NEAR, 2: NEAR, 3: NEAR},
                     id="duplicate-of-ledger"),
        pytest.param({"phash_distance": 1}, {0: H0, 1: H0_NEAR, 2: H_FAR, 3: H_FAR}, [], [0, 1, 2], {3: NEAR},
                     id="distance-threshold"),
    ],
)  # fmt: skip
def test_select_fills_the_budget_with_caps_and_duplicate_checks(section, hashes, ledger, taken, rejected):
    rows = rows_of([[(0, 0.3, BOX)]] * 5)
    params = SampleParams.model_validate(
        {"budget": 10, "max_per_day": None, **section, "strategies": {"low_confidence": {"budget": 4}}}
    )
    scores = {"low_confidence": np.array([0.9, 0.8, 0.7, 0.6, np.nan])}  # image 4: not a candidate
    strategies = sampling.enabled_strategies(params)
    pool = sampling.nominate(scores, strategies=strategies, eligible=np.ones(5, bool), order=np.zeros(5))
    shas = rows.images["image_sha256"].to_list()
    meta = {sha: {"image_uri": f"u{i}", "date": DAY1, "batch": "b"} for i, sha in enumerate(shas)}
    selected, why = sampling.select(
        pool,
        meta,
        rows=rows,
        params=params,
        ledger_phash=np.array(ledger, np.uint8).reshape(-1, 8),
        phash=lambda uri: hashes.get(int(uri[1:])),
    )
    assert [shas.index(r["image_sha256"]) for r in selected] == taken
    assert [r["rank"] for r in selected] == list(range(1, len(taken) + 1))
    assert {shas.index(sha): reason for sha, reason in why.items()} == rejected
    checked = params.phash_distance is not None
    assert [r["phash"] for r in selected] == [phash.to_hex(hashes[i]) if checked else None for i in taken]


@pytest.mark.parametrize(
    ("budget", "budgets", "selected", "expected"),
    [
        pytest.param(2, (1, 1), ["random", "entropy"], None, id="filled"),
        pytest.param(3, (1, 1), ["random", "entropy"], "budgets add up to 2 (all full)", id="budgets-too-small"),
        pytest.param(2, (2, 2), ["random"], "too few eligible candidates for random 1/2, entropy 0/2", id="short"),
        pytest.param(1, (1, 1), [], "too few eligible candidates for random 0/1, entropy 0/1", id="empty"),
    ],
)
def test_shortfall_names_the_strategies_that_fell_short(budget, budgets, selected, expected):
    strategies = dict.fromkeys(sampling.STRATEGIES) | {
        "random": {"budget": budgets[0]},
        "entropy": {"budget": budgets[1]},
    }
    params = SampleParams.model_validate({"budget": budget, "strategies": strategies})
    reason = sampling.shortfall(params, [{"strategy": s} for s in selected])
    assert reason == expected if expected is None else expected in (reason or "")


def test_manifest_round_trip_keeps_rank_order_and_drops_repeats(tmp_path):
    row = {
        "image_sha256": "a" * 64,
        "image_id": "i1",
        "image_uri": "file:///i1.png",
        "batch": "b",
        "date": DAY1,
        "strategy": "random",
        "score": 0.5,
        "rank": 1,
        "model_name": "m",
        "model_version": "3",
        "phash": "00000000000000ff",
        "strategies": ["random"],
    }
    path = sample_manifest.write_manifest(tmp_path / "c1" / "manifest.parquet", [row, row | {"rank": 2}])
    assert pq.read_table(path).schema.equals(sample_manifest.SCHEMA)
    (read,) = sample_manifest.read_manifest(path)
    assert read == sample_manifest.SampleRow(**{k: v for k, v in row.items() if k != "strategies"})
    empty = sample_manifest.write_manifest(tmp_path / "c2" / "manifest.parquet", [])
    assert sample_manifest.read_manifest(empty) == []
    with pytest.raises(sample_manifest.SampleManifestError, match="run the sample stage"):
        sample_manifest.read_manifest(tmp_path / "c3" / "manifest.parquet")


# The stage: what each strategy picks ----------------------------------------------------------------------------


@pytest.fixture
def shown(world: World) -> dict[str, Path]:
    """One image per strategy, each a candidate of that strategy only (random at rate 1 takes them all)."""
    images = {name: world.image(name) for name in ("common", "low", "entropic", "rare", "flipped", "drifted")}
    world.log(
        [
            (images["common"], [(0, 0.95, BOX), (0, 0.97, FAR)]),
            (images["low"], [(0, 0.3, BOX), (0, 0.97, FAR)]),
            (images["entropic"], [(0, 0.55, BOX)]),
            (images["rare"], [(2, 0.97, BOX)]),
            (images["flipped"], [(0, 0.96, BOX)]),
        ],
        date=DAY1,
    )
    world.log([(images["flipped"], [(1, 0.96, BOX)])], date=DAY1, version="4", alias="challenger")
    world.log([(images["drifted"], [(0, 0.96, BOX)])], date=DAY2, batch="2026-11-03-night")
    return images


@pytest.mark.parametrize(
    ("strategy", "config", "expected"),
    [
        pytest.param("low_confidence", {"band": [0.1, 0.5]}, {"low"}, id="low_confidence"),
        pytest.param("entropy", {"min_score": 0.9}, {"entropic"}, id="entropy"),
        pytest.param("margin", {"threshold": 0.5, "min_score": 0.8}, {"entropic"}, id="margin"),
        pytest.param("class_balanced", {"min_score": 0.5}, {"rare"}, id="class_balanced"),
        pytest.param("disagreement", {"iou": 0.5, "min_score": 0.1}, {"flipped"}, id="disagreement"),
        pytest.param("drift", {"rate": 1.0}, {"drifted"}, id="drift"),
        pytest.param(
            "random", {"rate": 1.0}, {"common", "low", "entropic", "rare", "flipped", "drifted"}, id="random-all"
        ),
        pytest.param("random", {"rate": 0.0}, set(), id="random-none"),
    ],
)
def test_each_strategy_picks_what_it_should(world, shown, strategy, config, expected):
    result = sample.run(world.params(only(strategy, **config), drift_batches=["2026-11-03-night"]), cycle="c1")
    assert picked(world) == {sha(shown[name]) for name in expected}
    assert result.by_strategy[strategy].selected == len(expected)
    assert set(world.manifest()["strategy"].to_pylist()) <= {strategy}


def test_confidence_strategies_read_only_the_newest_champion(world):
    old, new = world.image("old"), world.image("new")
    # version 2 was champion before: its low-confidence rows are stale; version 4 shadows under another alias
    world.log([(old, [(0, 0.3, BOX)]), (new, [(0, 0.9, BOX)])], version="2", ts=TS - dt.timedelta(days=3))
    world.log([(old, [(0, 0.9, BOX)]), (new, [(0, 0.3, BOX)])], version="3")
    world.log([(old, [(0, 0.3, BOX)]), (new, [(0, 0.3, BOX)])], version="4", alias="challenger")
    result = sample.run(world.params(only("low_confidence")), cycle="c1")
    assert picked(world) == {sha(new)}
    assert result.champion == "visionloop-detector/3"
    assert set(world.manifest()["model_version"].to_pylist()) == {"3"}


def test_file_holding_several_models_is_read_by_scan(world):
    a, b = world.image("a"), world.image("b")
    champion = table_of([detections(a, [(0, 0.3, BOX)]), detections(b, [(0, 0.9, BOX)])])
    challenger = table_of([detections(a, [(0, 0.3, BOX)]), detections(b, [(1, 0.9, BOX)])], version="4", alias=None)
    plog.append(world.paths.predictions, pa.concat_tables([champion, challenger]), part="mixed")
    strategies = only("low_confidence") | only("disagreement", min_score=0.1)
    sample.run(world.params(strategies), cycle="c1")
    manifest = world.manifest().to_pylist()
    assert {(r["image_sha256"], r["strategy"]) for r in manifest} == {
        (sha(a), "low_confidence"),
        (sha(b), "disagreement"),
    }


def test_disagreement_aliases_limit_the_other_rows(world):
    shadow, retired = world.image("shadow"), world.image("retired")
    world.log([(shadow, [(0, 0.9, BOX)]), (retired, [(0, 0.9, BOX)])])
    world.log([(shadow, [(1, 0.9, BOX)])], version="4", alias="challenger")
    world.log([(retired, [(1, 0.9, BOX)])], version="2", alias="previous")
    sample.run(world.params(only("disagreement", min_score=0.1, aliases=["challenger"])), cycle="c1")
    assert picked(world) == {sha(shadow)}
    sample.run(world.params(only("disagreement", min_score=0.1)), cycle="c2")
    assert picked(world, "c2") == {sha(shadow), sha(retired)}


def test_picture_logged_in_two_batches_is_selected_once_at_its_first_date(world):
    twice = world.image("twice")
    world.log([(twice, [(0, 0.3, BOX)])], date=DAY2)
    world.log([(twice, [(0, 0.3, BOX)])], date=DAY1)
    result = sample.run(world.params(only("low_confidence")), cycle="c1")
    assert result.selected == 1
    assert world.manifest().to_pylist()[0]["date"] == DAY1


def test_hash_that_is_not_hex_is_named(world):
    table = table_of([detections(world.image("a"), [(0, 0.3, BOX)])])
    bad = table.set_column(table.schema.get_field_index("image_sha256"), "image_sha256", pa.array(["Z" * 64]))
    plog.append(world.paths.predictions, bad, part="bad")
    with pytest.raises(PredictionLogError, match=r"'ZZZZ.*not 64 lowercase hex digits"):
        sample.run(world.params(only("low_confidence")), cycle="c1")


# Budgets, weights, caps ------------------------------------------------------------------------------------------


def many(world: World, n: int, boxes: Sequence[Box], *, date: dt.date = DAY1, prefix: str = "img") -> list[Path]:
    paths = [world.image(f"{prefix}{date.day}") for _ in range(n)]
    world.log([(p, boxes) for p in paths], date=date)
    return paths


@pytest.mark.parametrize(
    ("section", "strategy_budget", "expected"),
    [
        pytest.param({"budget": 50}, 3, 3, id="strategy-budget"),
        pytest.param({"budget": 2}, 10, 2, id="cycle-budget"),
        pytest.param({"budget": 50, "max_per_day": 2}, 10, 4, id="day-cap-two-days"),
        pytest.param({"budget": 0}, 10, 0, id="zero-budget"),
        pytest.param({"budget": 50}, 0, 0, id="strategy-off"),
    ],
)
def test_budgets_and_caps_are_honoured(world, section, strategy_budget, expected):
    many(world, 5, [(0, 0.3, BOX)], date=DAY1)
    many(world, 5, [(0, 0.3, BOX)], date=DAY2)
    result = sample.run(world.params(only("low_confidence", budget=strategy_budget), **section), cycle="c1")
    assert result.selected == world.manifest().num_rows == expected
    if "max_per_day" in section:
        assert result.per_day == {DAY1.isoformat(): 2, DAY2.isoformat(): 2}
        assert result.excluded["day_cap"] == 6
    if expected < section["budget"]:
        assert result.reason


def test_budget_zero_and_all_off_give_a_reason(world):
    many(world, 2, [(0, 0.3, BOX)])
    assert sample.run(world.params(only("low_confidence"), budget=0), cycle="c1").reason == "sample.budget is 0"
    assert "every strategy is off" in (sample.run(world.params({}), cycle="c1").reason or "")
    assert world.manifest().num_rows == 0 and world.manifest().schema.equals(sample_manifest.SCHEMA)


def test_image_of_several_strategies_goes_to_the_best_weighted_one(world):
    both = world.image("both")  # low confidence and high entropy
    only_low = world.image("only_low")
    world.log([(both, [(0, 0.5 - 1e-3, BOX)]), (only_low, [(0, 0.2, BOX)])])
    strategies = only("low_confidence", weight=1.0) | only("entropy", weight=3.0, min_score=0.9)
    sample.run(world.params(strategies), cycle="c1")
    rows = {r["image_sha256"]: r for r in world.manifest().to_pylist()}
    assert rows[sha(both)]["strategy"] == "entropy"  # 3 x 1.0 > 1 x 0.5
    assert rows[sha(both)]["strategies"] == ["low_confidence", "entropy"]
    assert rows[sha(both)]["rank"] == 1
    assert rows[sha(only_low)]["strategy"] == "low_confidence"
    # weights flipped: the same image goes to low_confidence, and entropy's budget is spent on nothing else
    strategies = only("low_confidence", weight=3.0) | only("entropy", weight=1.0, min_score=0.9)
    result = sample.run(world.params(strategies), cycle="c2")
    assert {r["strategy"] for r in world.manifest("c2").to_pylist()} == {"low_confidence"}
    assert result.by_strategy["entropy"].candidates == 1


def test_full_strategy_budget_passes_image_to_next_strategy(world):
    a, b = world.image("a"), world.image("b")
    world.log([(a, [(0, 0.5 - 1e-3, BOX)]), (b, [(0, 0.5 - 2e-3, BOX)])])
    strategies = only("entropy", weight=3.0, budget=1, min_score=0.9) | only("low_confidence", weight=1.0)
    sample.run(world.params(strategies), cycle="c1")
    assert sorted(world.manifest()["strategy"].to_pylist()) == ["entropy", "low_confidence"]


# Exclusions ------------------------------------------------------------------------------------------------------


def write_ledger(world: World, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    path = world.paths.labels / "ledger.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


LEDGER = pa.schema([("image_sha256", pa.string()), ("status", pa.string()), ("phash", pa.string())])


def test_ledger_hashes_are_excluded(world):
    labeled, fresh = world.image("labeled"), world.image("fresh")
    world.log([(labeled, [(0, 0.3, BOX)]), (fresh, [(0, 0.3, BOX)])])
    write_ledger(world, [{"image_sha256": sha(labeled), "status": "labeled", "phash": None}], LEDGER)
    result = sample.run(world.params(only("low_confidence")), cycle="c1")
    assert picked(world) == {sha(fresh)}
    assert result.excluded["ledger"] == 1
    assert world.report()["excluded"]["ledger"] == 1


def test_near_duplicates_are_dropped_among_picks_and_against_ledger(world):
    first = world.image("first")
    copy = world.image("copy", like=first, noise=2)  # other bytes (other SHA-256), same picture
    queued = world.image("queued")
    queued_copy = world.image("queued_copy", like=queued, noise=2)
    distinct = world.image("distinct")
    world.log([(first, [(0, 0.2, BOX), (1, 0.2, FAR)]), (copy, [(0, 0.3, BOX)]), (queued_copy, [(0, 0.3, BOX)])])
    world.log([(distinct, [(0, 0.3, BOX)])], date=DAY2)
    import imagehash

    with Image.open(queued) as image:
        queued_hash = str(imagehash.phash(image))
    write_ledger(world, [{"image_sha256": sha(queued), "status": "queued", "phash": queued_hash}], LEDGER)
    result = sample.run(world.params(only("low_confidence"), phash_distance=6), cycle="c1")
    assert sha(copy) != sha(first)
    assert picked(world) == {sha(first), sha(distinct)}  # first (two boxes in band) ranks above its copy
    assert result.excluded["near_duplicate"] == 2
    assert all(len(h) == 16 for h in world.manifest()["phash"].to_pylist())
    sample.run(world.params(only("low_confidence"), phash_distance=None), cycle="c2")
    assert len(picked(world, "c2")) == 4 and world.manifest("c2")["phash"].null_count == 4


def test_unreadable_image_is_skipped_with_a_reason(world):
    gone, there = world.image("gone"), world.image("there")
    world.log([(gone, [(0, 0.2, BOX)]), (there, [(0, 0.3, BOX)])])
    gone.unlink()
    result = sample.run(world.params(only("low_confidence")), cycle="c1")
    assert picked(world) == {sha(there)} and result.excluded["unreadable_image"] == 1


def test_drift_reads_flagged_batches_from_monitor_report(world):
    calm = many(world, 3, [(0, 0.9, BOX)], date=DAY1)
    flagged = many(world, 3, [(0, 0.9, BOX)], date=DAY2)
    world.paths.reports.mkdir(parents=True, exist_ok=True)
    (world.paths.reports / "monitor.json").write_text(json.dumps({"flagged_batches": [DAY2.isoformat()]}))
    sample.run(world.params(only("drift", rate=1.0)), cycle="c1")
    assert picked(world) == {sha(p) for p in flagged} and not picked(world) & {sha(p) for p in calm}


def test_window_keeps_the_newest_dates(world):
    many(world, 2, [(0, 0.3, BOX)], date=DAY1)
    newer = many(world, 2, [(0, 0.3, BOX)], date=DAY2) + many(world, 1, [(0, 0.3, BOX)], date=DAY3)
    result = sample.run(world.params(only("low_confidence"), window_days=2), cycle="c1")
    assert picked(world) == {sha(p) for p in newer}
    assert result.window == [DAY2.isoformat(), DAY3.isoformat()]


# Determinism ------------------------------------------------------------------------------------------------------


def test_same_seed_same_manifest_other_seed_other_random_picks(world):
    many(world, 60, [(0, 0.9, BOX)])
    strategies = only("random", rate=0.5, budget=10)
    sample.run(world.params(strategies, phash_distance=None), cycle="c1")
    first = world.manifest().to_pylist()
    sample.run(world.params(strategies, phash_distance=None), cycle="c1")
    assert world.manifest().to_pylist() == first
    world.params_dict["base"]["seed"] += 1
    sample.run(world.params(strategies, phash_distance=None), cycle="c1")
    assert [r["image_sha256"] for r in world.manifest().to_pylist()] != [r["image_sha256"] for r in first]


def test_small_row_groups_and_parallel_reads_give_the_same_manifest(world, monkeypatch):
    # Logs are written in row groups of prediction_log.ROW_GROUP_ROWS; the manifest lookup must find each image's id
    # and URI by position whatever the grouping, and threaded per-file reads must keep the files' order.
    for day in (DAY1, DAY2, DAY3):
        many(world, 7, [(0, 0.3, BOX), (1, 0.2, BOX)], date=day, prefix=f"d{day.day}")
    strategies = {**only("low_confidence", budget=12), **only("random", rate=0.5, budget=6)}
    sample.run(world.params(strategies, phash_distance=None), cycle="c1")
    expected = world.manifest().to_pylist()
    assert len(expected) == 18
    monkeypatch.setattr(plog, "ROW_GROUP_ROWS", 3)
    small = World(world.root / "small")
    for day in (DAY1, DAY2, DAY3):
        many(small, 7, [(0, 0.3, BOX), (1, 0.2, BOX)], date=day, prefix=f"d{day.day}")
    files = sorted(small.paths.predictions.rglob("*.parquet"))
    assert all(pq.ParquetFile(f).metadata.num_row_groups == 5 for f in files)  # 14 rows in groups of 3
    sample.run(small.params(strategies, phash_distance=None), cycle="c1")
    assert [r["image_sha256"] for r in small.manifest().to_pylist()] == [r["image_sha256"] for r in expected]


def test_map_files_keeps_order_and_raises_the_first_error():
    assert prediction_rows.map_files(lambda i: i * i, range(9)) == [i * i for i in range(9)]

    def read(i: int) -> int:
        if i == 5:
            raise ValueError("file 5 is broken")
        return i

    with pytest.raises(ValueError, match="file 5 is broken"):
        prediction_rows.map_files(read, range(9))


# Bad input and outputs -------------------------------------------------------------------------------------------


def test_empty_log_selects_nothing_with_a_reason(world):
    result = sample.run(world.params(only("low_confidence")), cycle="c1")
    assert result.selected == 0 and "has no files" in (result.reason or "")
    assert world.manifest().num_rows == 0
    assert world.report()["reason"] == result.reason


def test_no_rows_under_the_alias_is_a_reason(world):
    many(world, 2, [(0, 0.3, BOX)])
    result = sample.run(world.params(only("low_confidence"), alias="production"), cycle="c1")
    assert result.selected == 0 and "alias 'production'" in (result.reason or "")


def test_unknown_strategy_name_is_a_config_error_naming_the_key(tmp_path):
    data = tiny_params_dict(tmp_path)
    data["sample"]["strategies"]["uncertainty"] = {"weight": 1.0}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"sample\.strategies\.uncertainty"):
        load_params(path)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        pytest.param({"band": [0.5, 0.1]}, "low_confidence", id="band-reversed"),
        pytest.param({"rate": 1.5}, "random", id="rate-above-one"),
        pytest.param({"budget": -1}, "entropy", id="negative-budget"),
    ],
)
def test_bad_strategy_values_name_their_key(tmp_path, change, key):
    data = tiny_params_dict(tmp_path)
    data["sample"]["strategies"][key] = {**(data["sample"]["strategies"][key] or {}), **change}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"sample\.strategies\.{key}"):
        load_params(path)


def test_wrong_schema_file_is_named(world):
    many(world, 2, [(0, 0.3, BOX)])
    bad = world.paths.predictions / f"date={DAY2.isoformat()}" / "bad.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_sha256": ["x"], "confidence": [0.5]}), bad)
    with pytest.raises(PredictionLogError, match=r"(?s)bad\.parquet: does not match.*missing column image_id"):
        sample.run(world.params(only("low_confidence")), cycle="c1")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param("{not json", "not readable JSON", id="not-json"),
        pytest.param('{"flagged_batches": "2026-11-02"}', "must be a list", id="not-a-list"),
    ],
)
def test_bad_monitor_report_is_named(world, content, match):
    many(world, 1, [(0, 0.3, BOX)])
    world.paths.reports.mkdir(parents=True, exist_ok=True)
    (world.paths.reports / "monitor.json").write_text(content)
    with pytest.raises(sample.SampleError, match=rf"monitor\.json.*{match}"):
        sample.run(world.params(only("drift")), cycle="c1")


def test_ledger_without_its_columns_is_named(world):
    many(world, 1, [(0, 0.3, BOX)])
    write_ledger(world, [{"sha": "x"}])
    with pytest.raises(sample.SampleError, match=r"ledger\.parquet.*image_sha256"):
        sample.run(world.params(only("low_confidence")), cycle="c1")


@pytest.mark.parametrize("cycle", ["", "../up", ".hidden", "a/b"], ids=["empty", "parent", "hidden", "slash"])
def test_unsafe_cycle_name_is_refused(world, cycle):
    with pytest.raises(sample.SampleError, match="cycle"):
        sample.run(world.params(only("low_confidence")), cycle=cycle)


def test_manifest_and_report_contract(world):
    paths = many(world, 3, [(0, 0.3, BOX)])
    result = sample.run(world.params(only("low_confidence", budget=2)), cycle="c1")
    manifest = world.manifest()
    assert manifest.schema.equals(sample_manifest.SCHEMA)
    assert manifest["rank"].to_pylist() == [1, 2]
    row = manifest.to_pylist()[0]
    assert row["image_sha256"] in {sha(p) for p in paths} and row["date"] == DAY1 and row["batch"] == "2026-11-02"
    assert row["image_uri"].startswith("file://") and row["model_name"] == "visionloop-detector"
    assert not [p for p in (world.paths.samples / "c1").iterdir() if p.name != "manifest.parquet"]  # no temp files
    report = world.report()
    assert report["selected"] == 2 and report["by_strategy"]["low_confidence"]["candidates"] == 3
    assert report["config"]["strategies"]["low_confidence"]["budget"] == 2
    assert "digest" in report["params"]  # the params stamp every report carries
    assert load_report(world.paths.reports, "sample") == result
    assert set(report["excluded"]) == set(sampling.EXCLUSIONS)
    assert result.manifest == str(world.paths.samples / "c1" / "manifest.parquet")


def test_cli_runs_the_stage(world, capsys):
    many(world, 2, [(0, 0.3, BOX)])
    path = world.root / "params.yaml"
    data = world.params(only("low_confidence")).model_dump(mode="json")
    path.write_text(yaml.safe_dump(data))
    sample.main(["--params", str(path), "--cycle", "c9"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["selected"] == 2
    assert world.manifest("c9").num_rows == 2


@pytest.mark.parametrize(("band", "warned"), [((0.1, 0.5), True), ((0.25, 0.5), False)])
def test_band_below_the_logs_confidence_floor_is_named(world, caplog, band, warned):
    params = world.params(only("low_confidence", band=list(band)))
    params = params.model_copy(update={"predict": params.predict.model_copy(update={"conf": 0.25})})
    with caplog.at_level("WARNING", logger="tasks.sample"):
        sample.run(params, cycle="c1")
    found = [r.getMessage() for r in caplog.records if "low_confidence.band" in r.getMessage()]
    if warned:
        assert found == [
            "sample.strategies.low_confidence.band starts at 0.1, below predict.conf 0.25: the prediction log "
            "holds no weaker boxes, so the band in effect is [0.25, 0.5)"
        ]
    else:
        assert not found
