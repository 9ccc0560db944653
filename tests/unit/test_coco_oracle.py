"""Our mAP code must reproduce the official pycocotools numbers on the shared COCO oracle."""

import json
from pathlib import Path

import pytest

from tasks.core.cocoeval import STAT_NAMES, coco_metrics

ROOT = Path(__file__).resolve().parents[2]
# shared/ sits beside the checkout (CI, developers) or inside it
ORACLE = next(
    (p / "oracles" / "coco_val2014_100" for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()),
    ROOT.parent / "shared" / "oracles" / "coco_val2014_100",
)
# cocoapi results/val2014_fake_eval_res.txt, as quoted in the oracle's README.
OFFICIAL = {
    "AP": 0.5045806987249628,
    "AP50": 0.6969727247299577,
    "AP75": 0.5729816669904824,
    "APs": 0.5856257209410443,
    "APm": 0.5193996948036719,
    "APl": 0.5013978986347466,
    "AR1": 0.38681277964578054,
    "AR10": 0.5936795762842003,
    "AR100": 0.595352982877607,
    "ARs": 0.6398109626113442,
    "ARm": 0.5664205978994309,
    "ARl": 0.5642905982905982,
}


@pytest.fixture(scope="module")
def oracle_result():
    if not ORACLE.is_dir():
        pytest.fail(f"oracle folder {ORACLE} missing: the shared/ folder must sit beside the checkout")
    gt = json.loads((ORACLE / "instances_val2014_100.json").read_text())
    dets = json.loads((ORACLE / "instances_val2014_fakebbox100_results.json").read_text())
    return coco_metrics(gt, dets)


@pytest.mark.parametrize("stat", STAT_NAMES)
def test_reproduces_official_pycocotools(oracle_result, stat):
    assert oracle_result.stats[stat] == pytest.approx(OFFICIAL[stat], abs=1e-6)


def test_per_class_ap_averages_to_map(oracle_result):
    present = [v for v in oracle_result.per_class_ap.values() if v > -1]
    assert sum(present) / len(present) == pytest.approx(oracle_result.stats["AP"], abs=1e-9)


def test_no_detections_scores_zero():
    gt = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    result = coco_metrics(gt, [])
    assert result.map50_95 == 0.0
    assert result.per_class_ap == {"a": 0.0, "b": -1.0}
