"""COCO matching and AP (``tasks.core.coco``) against faster-coco-eval and the oracle, and the bootstrap."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from tasks.core import coco
from tasks.core.bootstrap import bootstrap_map, bootstrap_median, paired_bootstrap
from tasks.core.coco import RECALL_THRESHOLDS, SetMatches, average_precision, match_coco, mean_ap, score_matches
from tasks.core.cocoeval import coco_metrics
from tests.unit.test_coco_oracle import OFFICIAL, ORACLE

# ------------------------------------------------------------------------------------------ synthetic COCO data


def random_coco(
    seed: int,
    *,
    images: int = 40,
    classes: int = 3,
    crowd: float = 0.0,
    score_decimals: int | None = None,
    false_positives: int = 6,
    empty_images: float = 0.2,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth and detections with every COCO subtlety on demand.

    Image ids are unsorted and sparse, category ids non-contiguous; detections are jittered copies of objects
    (some of the wrong class), near-duplicates and free false positives; rounding scores creates ties.
    """
    rng = np.random.default_rng(seed)
    image_ids = rng.permutation(np.arange(images) * 7 + 3)
    cat_ids = [int(c) for c in np.arange(classes) * 5 + 2]
    coco_images = [{"id": int(i), "width": 320, "height": 240} for i in image_ids]
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for img in coco_images:
        n_obj = 0 if rng.random() < empty_images else int(rng.integers(1, 6))
        for _ in range(n_obj):
            x, y = rng.uniform(0, 240, 2)
            w, h = rng.uniform(4, 80, 2)
            cat = int(rng.choice(cat_ids))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < crowd),
                }
            )
            for _ in range(int(rng.integers(0, 4))):
                j = rng.normal(0, rng.choice([1.0, 4.0, 10.0]), 4)
                label = cat if rng.random() < 0.85 else int(rng.choice(cat_ids))
                box = [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]
                dets.append({"image_id": img["id"], "category_id": label, "bbox": box, "score": float(rng.random())})
        for _ in range(int(rng.integers(0, false_positives + 1))):
            x, y = rng.uniform(0, 240, 2)
            w, h = rng.uniform(4, 80, 2)
            cat = int(rng.choice(cat_ids))
            dets.append({"image_id": img["id"], "category_id": cat, "bbox": [x, y, w, h], "score": float(rng.random())})
    if score_decimals is not None:
        for det in dets:
            det["score"] = round(det["score"], score_decimals)
    categories = [{"id": c, "name": f"cat{c}"} for c in cat_ids]
    return {"images": coco_images, "annotations": anns, "categories": categories}, dets


def assert_equals_coco(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> None:
    ours = score_matches("set", match_coco(ground_truth, detections))
    coco = coco_metrics(json.loads(json.dumps(ground_truth)), json.loads(json.dumps(detections)))
    assert ours.map50_95 == pytest.approx(coco.map50_95, abs=1e-6)
    assert ours.map50 == pytest.approx(coco.map50, abs=1e-6)
    assert ours.per_class_ap == pytest.approx(coco.per_class_ap, abs=1e-6)


# ------------------------------------------------------------------------------------ equality with COCO


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="plain"),
        pytest.param({"score_decimals": 1}, id="score-ties"),
        pytest.param({"crowd": 0.3}, id="crowd-ground-truth"),
        pytest.param({"crowd": 0.2, "score_decimals": 2}, id="crowd-and-ties"),
        pytest.param({"images": 6, "false_positives": 150}, id="over-100-detections-per-image-and-class"),
        pytest.param({"empty_images": 1.0}, id="no-ground-truth-at-all"),
        pytest.param({"empty_images": 0.0, "false_positives": 0}, id="every-image-has-objects"),
        pytest.param({"images": 1}, id="one-image"),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_set_map_equals_faster_coco_eval(seed, kwargs):
    gt, dets = random_coco(seed, **kwargs)
    if not gt["annotations"]:
        matches = match_coco(gt, dets)
        assert np.isnan(average_precision(matches)).all(), "no ground truth: AP undefined (COCO's -1)"
        assert score_matches("set", matches).map50_95 == -1.0
        return
    assert_equals_coco(gt, dets)


def test_more_than_100_detections_of_one_class_keep_the_best_100():
    gt, dets = random_coco(3, images=2, classes=1, false_positives=0)
    rng = np.random.default_rng(0)
    extra = [dict(d, score=round(float(s), 2)) for d in dets for s in rng.random(60)]
    assert_equals_coco(gt, dets + extra)


@pytest.mark.parametrize(
    ("detections", "expected"),
    [
        pytest.param([], 0.0, id="empty"),
        pytest.param([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}], 1.0, id="exact"),
        pytest.param([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.9}], 0.0, id="wrong-class"),
        pytest.param(
            [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 10, 10], "score": 0.9}],
            0.0,
            id="unknown-category-dropped",
        ),
        pytest.param([{"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.9}], 0.0, id="no-overlap"),
    ],
)
def test_tiny_cases(detections, expected):
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    score = score_matches("set", match_coco(gt, detections))
    assert score.map50_95 == pytest.approx(expected)
    assert score.per_class_ap["b"] == -1.0


@pytest.mark.parametrize(
    "inverted",
    [
        pytest.param([30, 10, -20, 20], id="negative-width"),
        pytest.param([10, 30, 10, -20], id="negative-height"),
    ],
)
def test_a_detection_of_negative_area_is_ignored_as_coco_does(inverted):
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400}],
        "categories": [{"id": 1, "name": "a"}],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": inverted, "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.5},
    ]
    assert_equals_coco(gt, dets)
    assert score_matches("set", match_coco(gt, dets)).map50_95 == pytest.approx(1.0)


def test_detection_on_an_unknown_image_is_an_error():
    gt, _ = random_coco(0, images=2)
    with pytest.raises(ValueError, match="image ids"):
        match_coco(
            gt, [{"image_id": 999_999, "category_id": gt["categories"][0]["id"], "bbox": [0, 0, 1, 1], "score": 1}]
        )


@pytest.fixture(scope="module")
def oracle() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not ORACLE.is_dir():
        pytest.fail(f"oracle folder {ORACLE} missing: the shared/ folder must sit beside the checkout")
    gt = json.loads((ORACLE / "instances_val2014_100.json").read_text())
    dets = json.loads((ORACLE / "instances_val2014_fakebbox100_results.json").read_text())
    return gt, dets


def test_oracle_has_crowd_ground_truth(oracle):
    gt, dets = oracle
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert match_coco(gt, dets).ignored.any(), "some detections must land on crowd regions and be ignored"


def test_reproduces_official_pycocotools_on_the_oracle(oracle):
    gt, dets = oracle
    score = score_matches("oracle", match_coco(gt, dets))
    assert score.map50_95 == pytest.approx(OFFICIAL["AP"], abs=1e-6)
    assert score.map50 == pytest.approx(OFFICIAL["AP50"], abs=1e-6)
    coco = coco_metrics(json.loads(json.dumps(gt)), json.loads(json.dumps(dets)))
    assert score.per_class_ap == pytest.approx(coco.per_class_ap, abs=1e-6)


# ------------------------------------------------------------------------------------------ accumulation


@pytest.mark.parametrize(
    "recall",
    [
        pytest.param(np.zeros(0), id="empty"),
        pytest.param(RECALL_THRESHOLDS.copy(), id="exactly-on-thresholds"),
        pytest.param(np.array([0.0, 1.0, 0.29, 0.57, 0.58, 1 / 3, 2 / 3]), id="edges"),
        pytest.param(np.concatenate([np.arange(n + 1) / n for n in range(1, 300)]), id="every-k-over-n"),
        pytest.param(np.random.default_rng(0).random((50, 40)), id="random-2d"),
    ],
)
def test_recall_thresholds_reached_is_searchsorted(recall):
    expected = np.searchsorted(RECALL_THRESHOLDS, recall, side="right")
    np.testing.assert_array_equal(coco._recall_thresholds_reached(recall), expected)


def duplicate_images(gt: dict[str, Any], dets: list[dict[str, Any]], counts: np.ndarray) -> tuple[dict, list]:
    """The resample as real data: image ``i`` (ascending id) copied ``counts[i]`` times under new ids."""
    ids = sorted(img["id"] for img in gt["images"])
    new_images, new_anns, new_dets = [], [], []
    for index, image_id in enumerate(ids):
        for copy in range(int(counts[index])):
            new_id = image_id * 1000 + copy
            new_images.append({"id": new_id, "width": 320, "height": 240})
            for ann in gt["annotations"]:
                if ann["image_id"] == image_id:
                    new_anns.append(dict(ann, id=len(new_anns) + 1, image_id=new_id))
            new_dets.extend(dict(d, image_id=new_id) for d in dets if d["image_id"] == image_id)
    return {"images": new_images, "annotations": new_anns, "categories": gt["categories"]}, new_dets


@pytest.mark.parametrize("crowd", [0.0, 0.3], ids=["no-crowd", "crowd"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weighted_resample_equals_coco_on_the_duplicated_images(seed, crowd):
    """A resample's mAP equals COCO's on a dataset where the drawn images really are repeated.

    Scores are distinct so the order of equal scores (the only documented difference) cannot matter.
    """
    gt, dets = random_coco(seed, images=25, crowd=crowd)
    matches = match_coco(gt, dets)
    counts = np.bincount(np.random.default_rng(seed).integers(0, 25, 25), minlength=25)
    ours = mean_ap(average_precision(matches, counts[None, :]))[0]
    dup_gt, dup_dets = duplicate_images(gt, dets, counts)
    assert ours == pytest.approx(coco_metrics(dup_gt, dup_dets).map50_95, abs=1e-9)


def test_weights_of_wrong_shape_are_refused():
    gt, dets = random_coco(0, images=5)
    with pytest.raises(ValueError, match="weights must be"):
        average_precision(match_coco(gt, dets), np.ones((2, 4), np.int64))


@pytest.fixture(scope="module")
def two_models() -> tuple[SetMatches, SetMatches]:
    gt, good = random_coco(7, images=60)
    rng = np.random.default_rng(1)
    worse = [dict(d, bbox=[v + rng.normal(0, 3) for v in d["bbox"]]) for d in good]
    return match_coco(gt, good), match_coco(gt, worse)


def test_identical_models_have_a_zero_interval(two_models):
    good, _ = two_models
    interval = paired_bootstrap(good, good, resamples=200, seed=0, level=0.95)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_bootstrap_is_seeded_and_brackets_the_difference(two_models):
    good, worse = two_models
    a = paired_bootstrap(good, worse, resamples=300, seed=5, level=0.9)
    assert a == paired_bootstrap(good, worse, resamples=300, seed=5, level=0.9)
    assert a != paired_bootstrap(good, worse, resamples=300, seed=6, level=0.9)
    full = score_matches("s", good).map50_95 - score_matches("s", worse).map50_95
    assert a.estimate == pytest.approx(full, abs=1e-12)
    assert a.low < a.estimate < a.high and a.low > 0, "jittered boxes are clearly worse"
    wider = paired_bootstrap(good, worse, resamples=300, seed=5, level=0.99)
    assert wider.low <= a.low and wider.high >= a.high


def test_bootstrap_is_antisymmetric(two_models):
    good, worse = two_models
    a = paired_bootstrap(good, worse, resamples=200, seed=3, level=0.95)
    b = paired_bootstrap(worse, good, resamples=200, seed=3, level=0.95)
    assert (b.estimate, b.low, b.high) == pytest.approx((-a.estimate, -a.high, -a.low), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"resamples": 0}, "resamples", id="no-resamples"),
        pytest.param({"level": 1.0}, "level", id="level-1"),
        pytest.param({"level": 0.0}, "level", id="level-0"),
    ],
)
def test_bootstrap_refuses_bad_settings(two_models, kwargs, match):
    good, worse = two_models
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(good, worse, **({"resamples": 10, "seed": 0, "level": 0.95} | kwargs))


def test_one_model_interval_brackets_its_map_and_matches_the_paired_draws(two_models):
    good, worse = two_models
    a = bootstrap_map(good, resamples=300, seed=5, level=0.9)
    assert a == bootstrap_map(good, resamples=300, seed=5, level=0.9)
    assert a.estimate == pytest.approx(score_matches("s", good).map50_95, abs=1e-12)
    assert a.low < a.estimate < a.high
    # the same seed draws the same images as the paired bootstrap: the difference of the two models' resampled
    # intervals is not the paired one, but their estimates subtract exactly
    b = bootstrap_map(worse, resamples=300, seed=5, level=0.9)
    assert a.estimate - b.estimate == pytest.approx(
        paired_bootstrap(good, worse, resamples=300, seed=5, level=0.9).estimate
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"resamples": 0}, "resamples", id="no-resamples"),
        pytest.param({"level": 1.0}, "level", id="level-1"),
    ],
)
def test_one_model_bootstrap_refuses_bad_settings(two_models, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_map(two_models[0], **({"resamples": 10, "seed": 0, "level": 0.95} | kwargs))


def test_one_model_bootstrap_refuses_an_empty_set():
    empty = match_coco({"images": [], "annotations": [], "categories": [{"id": 0, "name": "a"}]}, [])
    with pytest.raises(ValueError, match="empty set"):
        bootstrap_map(empty, resamples=10, seed=0, level=0.95)


def test_bootstrap_refuses_different_ground_truth(two_models):
    good, _ = two_models
    gt, dets = random_coco(8, images=60)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(good, match_coco(gt, dets), resamples=10, seed=0, level=0.95)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], (math.nan, math.nan, math.nan), id="empty"),
        pytest.param([2.0], (2.0, 2.0, 2.0), id="one"),
        pytest.param([1.0, 1.0, 1.0], (1.0, 1.0, 1.0), id="constant"),
    ],
)
def test_bootstrap_median_degenerate_cases(values, expected):
    iv = bootstrap_median(values, resamples=50, seed=0, level=0.9)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx(expected, nan_ok=True)


def test_bootstrap_median_brackets_and_is_seeded():
    values = [1.0, 1.1, 0.9, 3.0, 1.05, 0.95, 0.3, 1.0]
    iv = bootstrap_median(values, resamples=400, seed=1, level=0.95)
    assert iv.low <= iv.estimate == 1.0 <= iv.high and iv.low > 0.3 and iv.high < 3.0
    assert bootstrap_median(values, resamples=400, seed=1, level=0.95) == iv
