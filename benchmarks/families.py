"""YOLO vs RF-DETR on the same world: accuracy, training time per epoch, and the selected artifact's CPU latency.

One world is rendered once (the project's own ``world`` settings unless ``--images`` shrinks it); each family then
runs the project's own stages on it — ``merge`` (the historical sets), ``train`` from scratch for ``--epochs``,
``evaluate``, ``export`` (every target in ``export.targets``, re-checked and selected by the export stage) — in
its own folder and MLflow store. Both models are scored on the golden set and on the most drifted production
batch with its oracle labels; the selected artifacts of both (and each family's FP32 ONNX) are then timed in one
interleaved pass (``tasks.targets.timing.time_artifacts``: turns, rounds) at batch 1 with ``base.threads``.
Prints a table and writes ``<out>`` (JSON).

    python benchmarks/families.py [--params params.yaml [--params overlay.yaml]] [--families yolo rfdetr]
        [--epochs 10] [--images 300]
        [--root DIR] [--out reports/benchmarks/families.json] [--rounds 5] [--runs 20]

Costs on 2 CPU cores (RF-DETR Nano at 160 px dominates): see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks import evaluate, export, merge, train, world
from tasks.config import Params, load_params
from tasks.contracts.yolo_labels import list_images
from tasks.env import PROJECT_ROOT, apply_env
from tasks.io import write_json_atomic
from tasks.targets.scoring import evaluate_set, inference_settings
from tasks.targets.timing import probe_images, speed_settings, time_artifacts

log = logging.getLogger("benchmarks.families")

MODELS: dict[str, dict[str, Any]] = {
    "yolo": {"model": "yolo26n.yaml"},
    "rfdetr": {"model": "rfdetr-nano", "rfdetr": {"size": "nano"}},
}


def family_params(base: dict[str, Any], root: Path, world_root: Path, family: str, epochs: int) -> Params:
    """``base`` (a params.yaml's content) for one family: its own models, reports and MLflow store under
    ``root/<family>``, the shared world under ``world_root``."""
    data = yaml.safe_load(yaml.safe_dump(base))
    own = root / family
    paths = {key: str(world_root / value) for key, value in data["base"]["paths"].items()}
    for key in ("models", "reports", "merged", "holdouts"):
        if key in paths:
            paths[key] = str(own / data["base"]["paths"][key])
    data["base"]["paths"] = paths
    data["registry"].update(tracking_uri=f"sqlite:///{own / 'mlflow.db'}", artifact_root=str(own / "mlartifacts"))
    data["promote"].update(audit_log=str(own / "audit.jsonl"))
    data["train"].update(family=family, epochs=epochs, weights=None, **MODELS[family])
    data["cycle"].update(warm_start=False)
    return Params.model_validate(data)


def oracle_set(params: Params, out: Path) -> Path:
    """The last (most drifted) production batch with its oracle labels, as one YOLO set of links under ``out``."""
    batches = sorted(p for p in params.base.paths.production.iterdir() if (p / "images").is_dir())
    last = batches[-1]
    labels = params.base.paths.oracle / last.name / "labels"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for image in list_images(last / "images"):
        for src, dst in ((image, out / "images" / image.name), (labels / f"{image.stem}.txt", out / "labels")):
            target = dst if dst.suffix else dst / src.name
            if src.exists() and not target.exists():
                target.symlink_to(src.resolve())
    return out


def run_family(params: Params, production: Path) -> dict[str, Any]:
    """merge → train → evaluate → export with the project's stages; the numbers the table shows."""
    merge.run(params, cycle=None)
    trained = train.run(params)
    evaluated = evaluate.run(params)
    exported = export.run(params)
    selected = exported.deployed()
    onnx = exported.check("onnx")
    chosen = exported.check(selected.target) if selected else None
    settings = inference_settings(params)
    scored = evaluate_set(
        Path(selected.path) if selected else Path(onnx.path if onnx else ""),
        production,
        classes=params.base.classes,
        settings=settings,
        batch=params.evaluate.batch,
        set_name="production",
    )
    return {
        "family": params.train.family,
        "model": params.train.model,
        "epochs": trained.epochs,
        "train_s": trained.wall_s,
        "s_per_epoch": round(trained.wall_s / max(trained.epochs, 1), 1),
        "golden_map50_95_pt": evaluated.sets["golden"].map50_95 if "golden" in evaluated.sets else None,
        "selected": selected.target if selected else "onnx (nothing selected)",
        "selected_path": str(selected.path) if selected else (onnx.path if onnx else None),
        "selected_golden_map50_95": chosen.map50_95.get("golden") if chosen else None,
        "production_map50_95": scored.map50_95,
        "onnx_path": onnx.path if onnx else None,
        "targets": {
            c.target: {"status": c.status, "deployable": c.deployable, "reason": c.reason} for c in exported.artifacts
        },
    }


def time_selected(params: Params, rows: list[dict[str, Any]], *, rounds: int, runs: int) -> dict[str, Any]:
    """Every family's selected artifact and FP32 ONNX, timed in turns in one pass (batch 1)."""
    artifacts = {}
    for row in rows:
        artifacts[f"{row['family']}:selected"] = Path(row["selected_path"])
        if row["onnx_path"] and row["onnx_path"] != row["selected_path"]:
            artifacts[f"{row['family']}:onnx"] = Path(row["onnx_path"])
    timed = time_artifacts(
        artifacts,
        settings=speed_settings(params),
        images=probe_images(params),
        batch=1,
        warmup=5,
        runs=runs,
        batch_runs=2,
        rounds=rounds,
    )
    return {name: {"p50_ms": r.latency_ms["p50"], "p95_ms": r.latency_ms["p95"]} for name, r in timed.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python benchmarks/families.py", description=__doc__)
    parser.add_argument("--params", type=Path, action="append", default=None, help="params file(s), later wins")
    parser.add_argument("--families", nargs="+", default=["yolo", "rfdetr"], choices=sorted(MODELS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images", type=int, default=None, help="training images (default: the world's)")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "benchmarks" / "families.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base = load_params(args.params or [PROJECT_ROOT / "params.yaml"]).model_dump(mode="json")
    if args.images:
        base["world"].update(train_images=args.images)
    root = args.root or Path(tempfile.mkdtemp(prefix="visionloop-families-"))
    world_root = root / "world"
    first = family_params(base, root, world_root, args.families[0], args.epochs)
    start = time.perf_counter()
    world.run(first)
    production = oracle_set(first, root / "production-oracle")
    rows = [run_family(family_params(base, root, world_root, f, args.epochs), production) for f in args.families]
    timing = time_selected(first, rows, rounds=args.rounds, runs=args.runs)
    result = {"root": str(root), "wall_s": round(time.perf_counter() - start, 1), "families": rows, "timing": timing}
    write_json_atomic(args.out, result)
    print(f"{'family':<8} {'s/epoch':>8} {'golden (pt)':>11} {'selected':<16} {'golden':>7} {'production':>10}")
    for row in rows:
        golden = row["selected_golden_map50_95"]
        print(
            f"{row['family']:<8} {row['s_per_epoch']:>8} {row['golden_map50_95_pt'] or 0:>11.4f} "
            f"{row['selected']:<16} {golden if golden is not None else float('nan'):>7.4f} "
            f"{row['production_map50_95']:>10.4f}"
        )
    for name, value in timing.items():
        print(f"  {name:<20} {value}")
    print(f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
