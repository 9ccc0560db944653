"""How long the gate takes: candidate and champion on golden + production, 1000 paired-bootstrap resamples.

Without models it scores synthetic COCO ground truth and detections (``--images`` per set, ``--dets`` per
image: jittered copies of each object plus false positives, the champion a little worse than the candidate);
with ``--candidate``/``--champion`` it runs both artifacts on the configured golden set and production holdouts.
Inference is timed apart from matching + bootstrap. It also shows that the bootstrap code's mAP50-95 on the
full set equals faster-coco-eval's. Prints a table and writes ``reports/benchmarks/gate.json``.

    python benchmarks/gate.py [--params params.yaml] [--images 2000] [--dets 100] [--resamples 1000]
    python benchmarks/gate.py --candidate models/train/best.pt --champion models/export/model.onnx
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.config import load_params
from tasks.core.coco import SetScore, match_coco, score_matches
from tasks.core.cocoeval import coco_metrics
from tasks.decisions.gate import GOLDEN, PRODUCTION, GatePolicy, ModelScores, compare
from tasks.env import apply_env
from tasks.gate import gate_sets
from tasks.io import write_json_atomic
from tasks.targets.gate_scoring import read_set_union, score_detections
from tasks.targets.scoring import detect_set, inference_settings


def synthetic_set(
    rng: np.random.Generator, *, images: int, dets: int, classes: int, quality: dict[str, float]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """COCO ground truth of ``images`` 640x480 images and detections of two models of the given quality.

    Args:
        rng: random source.
        images: image count.
        dets: detections per image and model (about: jittered object copies, the rest false positives).
        classes: category count.
        quality: model name -> box jitter in pixels (smaller is better).

    Returns:
        The ground truth and, per model, its COCO result list.
    """
    n_obj = rng.integers(1, 6, size=images)
    image_of = np.repeat(np.arange(images), n_obj)
    xy = rng.uniform(0, 480, size=(image_of.size, 2))
    wh = rng.uniform(16, 160, size=(image_of.size, 2))
    cls = rng.integers(0, classes, size=image_of.size)
    gt = {
        "images": [{"id": i + 1, "width": 640, "height": 480} for i in range(images)],
        "annotations": [
            {
                "id": j + 1,
                "image_id": int(image_of[j]) + 1,
                "category_id": int(cls[j]) + 1,
                "bbox": [float(xy[j, 0]), float(xy[j, 1]), float(wh[j, 0]), float(wh[j, 1])],
                "area": float(wh[j, 0] * wh[j, 1]),
                "iscrowd": 0,
            }
            for j in range(image_of.size)
        ],
        "categories": [{"id": k + 1, "name": f"class{k}"} for k in range(classes)],
    }
    results = {}
    for name, jitter in quality.items():
        copies = rng.integers(1, 4, size=image_of.size)  # a true box and near-duplicates
        src = np.repeat(np.arange(image_of.size), copies)
        box = np.c_[xy[src], wh[src]] + rng.normal(0, jitter, size=(src.size, 4)) * np.r_[1, 1, 0.5, 0.5]
        box[:, 2:] = np.maximum(box[:, 2:], 2)
        score = np.clip(rng.beta(5, 2, size=src.size) - 0.2 * (rng.random(src.size) < 0.3), 0.001, 1)
        label = np.where(rng.random(src.size) < 0.95, cls[src], rng.integers(0, classes, size=src.size))
        det_image = image_of[src]
        n_fp = np.maximum(dets - np.bincount(det_image, minlength=images), 0)
        fp_image = np.repeat(np.arange(images), n_fp)
        fp_box = np.c_[rng.uniform(0, 480, (fp_image.size, 2)), rng.uniform(8, 160, (fp_image.size, 2))]
        all_image = np.r_[det_image, fp_image] + 1
        all_box = np.r_[box, fp_box]
        all_score = np.r_[score, rng.beta(1, 6, size=fp_image.size)].round(4)  # rounded: ties happen
        all_label = np.r_[label, rng.integers(0, classes, size=fp_image.size)] + 1
        boxes = all_box.tolist()
        results[name] = [
            {"image_id": int(i), "category_id": int(c), "bbox": b, "score": float(s)}
            for i, c, b, s in zip(all_image, all_label, boxes, all_score, strict=True)
        ]
    return gt, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--candidate", type=Path, default=None, help="candidate artifact (default: synthetic)")
    parser.add_argument("--champion", type=Path, default=None, help="champion artifact (with --candidate)")
    parser.add_argument("--images", type=int, default=2000, help="synthetic images per set")
    parser.add_argument("--dets", type=int, default=100, help="synthetic detections per image and model")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--resamples", type=int, default=None, help="default: gate.resamples")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/gate.json"))
    args = parser.parse_args()
    if (args.candidate is None) != (args.champion is None):
        parser.error("give both --candidate and --champion, or neither (synthetic)")
    apply_env()
    params = load_params(args.params)
    policy = GatePolicy.from_config(params.gate, seed=params.base.seed)
    if args.resamples:
        policy = dataclasses.replace(policy, resamples=args.resamples)
    phases: dict[str, float] = {}
    checks: list[tuple[str, str, float, float]] = []
    scores: dict[str, dict[str, SetScore]] = {"candidate": {}, "champion": {}}
    ms: dict[str, float] = {"candidate": 0.0, "champion": 0.0}

    if args.candidate is None:
        rng = np.random.default_rng(params.base.seed)
        quality = {"candidate": 3.0, "champion": 5.0}
        start = time.perf_counter()
        data = {
            name: synthetic_set(rng, images=args.images, dets=args.dets, classes=args.classes, quality=quality)
            for name in (GOLDEN, PRODUCTION)
        }
        phases["synthetic detections (stands in for inference)"] = time.perf_counter() - start
        start = time.perf_counter()
        for set_name, (gt, results) in data.items():
            for model, dets in results.items():
                scores[model][set_name] = score_matches(set_name, match_coco(gt, dets))
        phases["match (COCO rules, per image, both models x sets)"] = time.perf_counter() - start
        start = time.perf_counter()
        for set_name, (gt, results) in data.items():
            for model, dets in results.items():
                checks.append((model, set_name, scores[model][set_name].map50_95, coco_metrics(gt, dets).map50_95))
        phases["faster-coco-eval on the full sets (the check)"] = time.perf_counter() - start
        n_images = sum(len(gt["images"]) for gt, _ in data.values())
        n_dets = sum(len(d) for _, results in data.values() for d in results.values())
    else:
        sets = gate_sets(params)
        images = {name: read_set_union(paths, params.base.classes) for name, paths in sets.items()}
        everything = [item for items in images.values() for item in items]
        n_images, n_dets = len(everything), 0
        for model, path in (("candidate", args.candidate), ("champion", args.champion)):
            start = time.perf_counter()
            detections, ms[model] = detect_set(
                path, everything, inference_settings(params), batch=params.evaluate.batch, warmup=True
            )
            phases[f"inference {model} ({path.name})"] = time.perf_counter() - start
            n_dets += sum(len(d) for d in detections)
            start = time.perf_counter()
            offset = 0
            for set_name, items in images.items():
                # score_detections matches and checks against faster-coco-eval in one go
                score = score_detections(
                    set_name, items, detections[offset : offset + len(items)], classes=params.base.classes
                )
                offset += len(items)
                scores[model][set_name] = score
                if score.coco_map50_95 is None:
                    raise SystemExit(f"{model} {set_name}: scored without the COCO check, nothing to compare")
                checks.append((model, set_name, score.map50_95, score.coco_map50_95))
            phases[f"match + faster-coco-eval check {model}"] = time.perf_counter() - start

    candidate = ModelScores("candidate", scores["candidate"], ms["candidate"])
    champion = ModelScores("champion", scores["champion"], ms["champion"])
    start = time.perf_counter()
    decision = compare(candidate, champion, policy)
    phases[f"paired bootstrap x{policy.resamples} + decision (both sets)"] = time.perf_counter() - start
    matching = sum(v for k, v in phases.items() if k.startswith(("match", "paired")))
    total = sum(phases.values())

    width = max(len(k) for k in phases) + 2
    print(f"\n{'phase':<{width}}{'seconds':>10}")
    for name, seconds in phases.items():
        print(f"{name:<{width}}{seconds:>10.2f}")
    print(f"{'matching + bootstrap':<{width}}{matching:>10.2f}")
    print(f"{'total':<{width}}{total:>10.2f}")
    print(f"\n{n_images} images in all, {n_dets} detections in all, {policy.resamples} resamples\n")
    print(f"{'model':<11}{'set':<12}{'bootstrap mAP':>16}{'COCO AP':>16}{'diff':>12}")
    for model, set_name, ours, coco in checks:
        print(f"{model:<11}{set_name:<12}{ours:>16.12f}{coco:>16.12f}{ours - coco:>12.1e}")
    for name, iv in decision.intervals.items():
        print(f"{name}: diff {iv.estimate:+.4f}  {iv.level:.0%} CI [{iv.low:+.4f}, {iv.high:+.4f}]")
    print(f"decision: {decision.decision} ({', '.join(r.code for r in decision.failed) or 'all rules passed'})")

    write_json_atomic(
        args.out,
        {
            "mode": "synthetic" if args.candidate is None else "models",
            "images": n_images,
            "detections": n_dets,
            "resamples": policy.resamples,
            "phases_s": {k: round(v, 3) for k, v in phases.items()},
            "matching_and_bootstrap_s": round(matching, 3),
            "total_s": round(total, 3),
            "map_check": [
                {"model": m, "set": s, "bootstrap_map50_95": o, "coco_map50_95": c, "diff": o - c}
                for m, s, o, c in checks
            ],
            "intervals": {k: v.__dict__ for k, v in decision.intervals.items()},
            "decision": decision.decision,
        },
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
