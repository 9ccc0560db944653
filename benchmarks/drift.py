"""How much each drift scenario hurts a model: mAP50-95 on golden vs on each scenario's images.

Renders, for every scenario in ``world.scenarios`` (and the configured production combination), a fresh
labeled set at severity 1 from the same world, evaluates the model on it with the project's evaluate code,
prints a table and writes ``reports/benchmarks/drift.json``.

    python benchmarks/drift.py [--params params.yaml] [--model models/export/model.onnx] [--images 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.config import load_params
from tasks.env import apply_env
from tasks.io import write_json_atomic
from tasks.sim.drift import effective_settings
from tasks.sim.sets import render_set, set_seed
from tasks.targets.scoring import evaluate_set, inference_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: <models>/export/model.onnx)")
    parser.add_argument("--images", type=int, default=200, help="images per scenario")
    parser.add_argument("--severity", type=float, default=1.0)
    args = parser.parse_args()
    apply_env()
    params = load_params(args.params)
    world = params.world
    model = args.model or params.base.paths.models / "export" / "model.onnx"
    settings = inference_settings(params)
    cases = {name: [name] for name in world.scenarios}
    if world.production.scenario:
        cases["+".join(world.production.scenario)] = list(world.production.scenario)
    rows = []
    start = time.perf_counter()
    golden = evaluate_set(
        model,
        params.base.paths.golden,
        classes=params.base.classes,
        settings=settings,
        batch=params.evaluate.batch,
        set_name="golden",
    )
    rows.append(
        {
            "set": "golden (source)",
            "images": golden.images,
            "map50_95": golden.map50_95,
            "map50": golden.map50,
            "drop_pt": 0.0,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        # the actual production batches, scored against the oracle's ground truth
        production, oracle = params.base.paths.production, params.base.paths.oracle
        for batch in sorted(p.name for p in production.iterdir()) if production.is_dir() else []:
            view = Path(tmp) / f"batch-{batch}"
            view.mkdir()
            (view / "images").symlink_to((production / batch / "images").resolve(), target_is_directory=True)
            (view / "labels").symlink_to((oracle / batch / "labels").resolve(), target_is_directory=True)
            result = evaluate_set(
                model, view, classes=params.base.classes, settings=settings, batch=params.evaluate.batch, set_name=batch
            )
            rows.append(
                {
                    "set": f"production {batch}",
                    "images": result.images,
                    "map50_95": result.map50_95,
                    "map50": result.map50,
                    "drop_pt": 100 * (golden.map50_95 - result.map50_95),
                }
            )
        for case, names in cases.items():
            root = Path(tmp) / case
            render_set(
                effective_settings(world.source, world.scenarios, names, args.severity),
                n=args.images,
                classes=params.base.classes,
                image_size=(world.image_size[0], world.image_size[1]),
                seed=set_seed(params.base.seed, f"drift-benchmark-{case}"),
                prefix=case,
                images_dir=root / "images",
                labels_dir=root / "labels",
            )
            result = evaluate_set(
                model, root, classes=params.base.classes, settings=settings, batch=params.evaluate.batch, set_name=case
            )
            rows.append(
                {
                    "set": case,
                    "images": result.images,
                    "map50_95": result.map50_95,
                    "map50": result.map50,
                    "drop_pt": 100 * (golden.map50_95 - result.map50_95),
                }
            )
    print(f"\nmodel {model}  (severity {args.severity}, {args.images} images per scenario)")
    print(f"{'set':<22}{'images':>8}{'mAP50-95':>10}{'mAP50':>8}{'drop (pt)':>11}")
    for row in rows:
        print(f"{row['set']:<22}{row['images']:>8}{row['map50_95']:>10.4f}{row['map50']:>8.4f}{row['drop_pt']:>11.1f}")
    out = params.base.paths.reports / "benchmarks" / "drift.json"
    write_json_atomic(
        out,
        {"model": str(model), "severity": args.severity, "rows": rows, "wall_s": round(time.perf_counter() - start, 1)},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
