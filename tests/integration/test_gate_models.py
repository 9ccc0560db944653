"""The gate on a real trained model: real detections (conf 0.001, up to 100 per image) through the whole stage.

A model trained for one epoch scores ~0 on real labels, which would make "equals COCO" trivially true. So the
production holdout carries *pseudo-labels*: the model's own top boxes, on which it scores high by
construction. ``run`` itself checks the bootstrap mAP against faster-coco-eval on every set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks import gate, train, world
from tasks.config import Params
from tasks.contracts.yolo_labels import list_images, load_rgb
from tasks.core.boxes import xyxy_to_xywhn
from tasks.runtimes.detectors import InferenceSettings, load_detector, predict_images
from tasks.targets.scoring import default_model_path
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


def write_pseudo_holdout(weights: Path, source: Path, target: Path, *, imgsz: int, top: int = 3) -> None:
    """A YOLO set at ``target``: the images of ``source`` labeled with the model's own ``top`` boxes."""
    detector = load_detector(weights, InferenceSettings(imgsz=imgsz, conf=0.0, max_det=top))
    (target / "images").mkdir(parents=True)
    (target / "labels").mkdir()
    for path in list_images(source / "images"):
        rgb = load_rgb(path)
        (det,), _ = predict_images(detector, [rgb])
        h, w = rgb.shape[:2]
        sizes = det.boxes_xyxy[:, 2:] - det.boxes_xyxy[:, :2]
        keep = (sizes > 1).all(axis=1)
        boxes = xyxy_to_xywhn(det.boxes_xyxy[keep], width=w, height=h)
        lines = [f"{c} {' '.join(f'{v:.6f}' for v in b)}" for c, b in zip(det.class_id[keep], boxes, strict=True)]
        os.link(path, target / "images" / path.name)
        (target / "labels" / f"{path.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Params, Path]:
    root = tmp_path_factory.mktemp("gate-models")
    # the latency rules judge the paired pass (both models in turns, round by round), not the scoring pass
    params = Params.model_validate(tiny_params_dict(root, gate={"resamples": 200, "max_latency_ms": 10_000.0}))
    world.run(params)
    train.run(params)
    model = default_model_path(params)
    write_pseudo_holdout(
        model, params.base.paths.golden, params.base.paths.holdouts / "cycle-001", imgsz=params.base.imgsz
    )
    return params, model


def test_first_cycle_promotes_the_trained_model(trained):
    params, model = trained
    report = gate.run(params, candidate=model, champion=None)
    assert report.decision == "promote" and [r.code for r in report.reasons] == ["no_champion"]
    production = report.sets["production"]
    assert production.candidate_map50_95 > 0.5, "a model scores high on its own top boxes"


def test_same_model_twice_is_a_tie(trained):
    params, model = trained
    report = gate.run(params, candidate=model, champion=model)
    for name in ("golden", "production"):
        interval = report.sets[name].interval
        assert interval is not None and (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert report.decision == "promote", [r.message for r in report.reasons if not r.passed]
    saved = json.loads((params.base.paths.reports / "gate.json").read_text())
    assert saved["sets"]["production"]["candidate_map50_95"] == saved["sets"]["production"]["champion_map50_95"]
    latency = saved["latency"]
    rounds = params.gate.speed.rounds
    assert len(latency["candidate"]["round_ms"]) == len(latency["champion"]["round_ms"]) == len(latency["ratios"])
    assert len(latency["ratios"]) == rounds and latency["timed"] == "pytorch vs pytorch"
    assert latency["ratio"]["low"] <= latency["ratio"]["estimate"] <= latency["ratio"]["high"]
    assert {r["code"] for r in saved["reasons"] if r["code"].startswith("latency")} == {
        "latency_budget",
        "latency_factor",
    }
