"""The pruning curve: speed against mAP for several pruning strengths, with distillation on and off.

For each point (a ``compress.macs_reduction`` target x fine-tune epochs x distillation on/off) the project's own
compress stage prunes and fine-tunes a copy of the trained checkpoint (``<models>/train/best.pt``; nothing of the
project is overwritten: models, reports and the MLflow store of a point live in its own folder), then
``benchmarks/inference.py`` exports both checkpoints at every size with the export stage, re-checks them and times
PyTorch, Ultralytics' own INT8 OpenVINO export of the unpruned weights (the reference) and every artifact in one
interleaved pass. Per point and size the table gives the fastest compressed INT8 artifact, its speed-up over the
reference, its mAP50-95 loss against the unpruned PyTorch model on every set the export stage re-checked, whether
it meets the rule that governs (``compress.max_total_map_drop`` on every set) and the fine-tune's minutes.
Writes ``<reports>/benchmarks/compress_curve.json`` and ``compress_curve.png`` (speed-up vs mAP loss per size).

    python benchmarks/compress_curve.py [--params params.yaml] [--macs 0.2 0.4 0.6] [--epochs 10]
        [--distill on off] [--fine-tune-args JSON] [--sizes 640 160] [--targets onnx openvino_int8] [--runs 30]
        [--rounds 3] [--quick]

``--quick``: one point (MACs -20 %, one epoch, distillation on) at the project's size only, few timed runs: the
script's whole path in a few minutes (``tests/integration/test_compress.py`` runs it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import inference
from dvc_scale import host

from tasks import compress
from tasks.config import Params, load_params
from tasks.contracts.checkpoints import require_trusted, trusted_checkpoints
from tasks.contracts.train_files import dataset_views
from tasks.core.hashing import file_sha256
from tasks.core.plots import png_bytes, pyplot
from tasks.env import apply_env
from tasks.io import write_bytes_atomic, write_json_atomic
from tasks.models import family
from tasks.models.base import TrainData
from tasks.targets.scoring import default_model_path, evaluate_set, inference_settings

REFERENCE = inference.LIBRARY_ROW


def points(
    macs: list[float], epochs: list[int], distill: list[str], fine_tune_args: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every (MACs target, epochs, distillation) combination, weakest pruning first; each with the fine-tune's
    own trainer arguments (``compress.fine_tune_args``)."""
    return [
        {"macs_reduction": m, "epochs": e, "distill": d == "on", "fine_tune_args": dict(fine_tune_args or {})}
        for m, e, d in itertools.product(sorted(macs), epochs, distill)
    ]


def production_set(params: Params) -> Path | None:
    """The newest labeled production holdout (``<holdouts>/<cycle>`` with images and labels), or None."""
    found = sorted(
        p for p in params.base.paths.holdouts.glob("*") if (p / "images").is_dir() and (p / "labels").is_dir()
    )
    return found[-1] if found else None


def point_params(
    params: Params,
    weights: Path,
    *,
    root: Path,
    point: dict[str, Any],
    targets: list[str] | None = None,
    production: Path | None = None,
) -> Path:
    """A params file for one point: compress on with its settings, models/reports/MLflow under ``root``, the
    trained checkpoint copied there (and trusted by its recorded hash), ``export.targets`` replaced by ``targets``
    when given, and a labeled ``production`` set re-checked beside ``evaluate.sets``; return the file's path.

    The export stage re-checks the sets ``evaluate.sets`` names, which are ``base.paths`` entries: in the point's
    own params (never the project's) ``base.paths.production`` is that labeled set (compress and export never
    read production batches)."""
    data = params.model_dump(mode="json")
    data["compress"].update(enabled=True, ratio=None, **point)
    if targets:
        data["export"]["targets"] = targets
    if production is not None:
        data["base"]["paths"]["production"] = str(production.resolve())
        data["evaluate"]["sets"] = list(dict.fromkeys([*data["evaluate"]["sets"], "production"]))
    data["base"]["paths"].update(models=str(root / "models"), reports=str(root / "reports"))
    data["registry"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    data["train"]["trusted_checkpoints"] = sorted({*data["train"]["trusted_checkpoints"], file_sha256(weights)})
    local = default_model_path(Params.model_validate(data))
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, local)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# long: one fine-tune of the unpruned network and its scoring, the point's params rewritten to trust the result
def control(
    params: Params, weights: Path, *, root: Path, recipe: dict[str, Any], production: Path | None
) -> dict[str, Any]:
    """The unpruned checkpoint fine-tuned with a recipe's ``epochs`` and ``fine_tune_args`` (no pruning, no
    distillation) and scored in PyTorch at ``base.imgsz`` on every set the points re-check, beside the checkpoint
    itself: what the extra training alone buys, so a point's loss against the unpruned model can be read apart
    from it (a short-trained checkpoint gains from any further epochs)."""
    point = {**recipe, "distill": False}
    path = point_params(params, weights, root=root, point=point, production=production)
    sized = load_params(path)
    model = family(sized)
    parent = default_model_path(sized)
    train, val = dataset_views(sized, root / "dataset")
    start = time.perf_counter()
    fitted = model.fine_tune(
        sized,
        module=model.prunable(parent, sized).module,
        teacher=None,
        data=TrainData(train=train, val=val, classes=tuple(sized.base.classes)),
        out_dir=root / "control",
        on_epoch=lambda epoch, metrics: None,
    )
    minutes = round((time.perf_counter() - start) / 60, 2)
    data = yaml.safe_load(path.read_text())  # the control's own params trust what it trained, nothing else does
    data["train"]["trusted_checkpoints"].append(file_sha256(fitted.checkpoint))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sized = load_params(path)
    family(sized)
    settings = inference_settings(sized)
    scores: dict[str, Any] = {}
    for name in sized.evaluate.sets:
        root_set = getattr(sized.base.paths, name)
        both = [
            evaluate_set(
                m, root_set, classes=sized.base.classes, settings=settings, batch=sized.evaluate.batch, set_name=name
            ).map50_95
            for m in (parent, Path(fitted.checkpoint))
        ]
        scores[name] = {"unpruned": round(both[0], 4), "control": round(both[1], 4)}
        scores[name]["gain_pt"] = round(100 * (both[1] - both[0]), 2)
    return {**recipe, "imgsz": sized.base.imgsz, "fine_tune_min": minutes, "sets": scores}


def size_summary(size: dict[str, Any], *, max_drop: float) -> dict[str, Any]:
    """One size of an inference report: the fastest compressed INT8 artifact against the reference, its mAP loss on
    every set against the unpruned PyTorch model, and whether the total rule holds."""
    rows = {r["target"]: r for r in size["rows"]}
    reference = size.get("reference_map50_95") or {}
    int8 = [
        r for r in size["rows"] if r["target"].startswith("compressed_") and r["precision"] == "int8" and "p50_ms" in r
    ]
    out: dict[str, Any] = {"imgsz": size["imgsz"], "reference_ms": rows.get(REFERENCE, {}).get("p50_ms")}
    torch_row = rows.get(inference.COMPRESSED_TORCH_ROW, {})
    out["pytorch_compressed_ms"] = torch_row.get("p50_ms")
    out["pytorch_ms"] = rows.get("pytorch", {}).get("p50_ms")
    if not int8:
        return out | {"artifact": None, "why": "no compressed INT8 artifact was built"}
    best = min(int8, key=lambda r: r["p50_ms"])
    drops = {
        name: round(100 * (reference[name] - value), 2)
        for name, value in (best.get("map50_95_sets") or {}).items()
        if reference.get(name) is not None
    }
    speedup = out["reference_ms"] / best["p50_ms"] if out["reference_ms"] else None
    return out | {
        "artifact": best["target"],
        "ms": best["p50_ms"],
        "speedup_vs_reference": None if speedup is None else round(speedup, 2),
        "speedup_vs_pytorch": best.get("speedup_p50"),
        "map_drop_pt": drops,
        "within_total": bool(drops) and max(drops.values()) <= 100 * max_drop + 1e-9,
        "export_verdict": best.get("reason") or best.get("status", ""),
    }


# long: one point's whole path: params, compress, the inference benchmark, the summary
def run_point(
    params: Params, weights: Path, *, root: Path, point: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Compress with the point's settings, then time and re-check both checkpoints at every size."""
    path = point_params(params, weights, root=root, point=point, targets=args.targets, production=args.production)
    sized = load_params(path)
    start = time.perf_counter()
    report = compress.run(sized)
    out: dict[str, Any] = {
        **point,
        "status": report.status,
        "reason": report.reason,
        "ratio": report.ratio,
        "macs_before": report.macs_before,
        "macs_after": report.macs_after,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "fine_tune_min": round(report.fine_tune_s / 60, 2),
        "compress_min": round((time.perf_counter() - start) / 60, 2),
    }
    if report.macs_before and report.macs_after:
        out["macs_reduction_found"] = round(1 - report.macs_after / report.macs_before, 3)
    if report.status != "compressed":
        return out
    bench_args = ["--params", str(path), "--weights", str(default_model_path(sized))]
    bench_args += ["--compressed", report.weights, "--sizes", *map(str, args.sizes), "--threads", str(args.threads)]
    bench_args += ["--runs", str(args.runs), "--batch-runs", str(args.batch_runs), "--rounds", str(args.rounds)]
    bench_args += ["--batch", str(args.batch), *([] if args.library_reference else ["--no-library-reference"])]
    bench = inference.main(bench_args)
    max_drop = sized.compress.max_total_map_drop
    return out | {"sizes": [size_summary(s, max_drop=max_drop) for s in bench["sizes"]], "max_total_drop": max_drop}


def curves(done: list[dict[str, Any]]) -> dict[tuple[int, bool, str], list[dict[str, Any]]]:
    """The points of each (epochs, distillation, fine-tune arguments) line, weakest pruning first."""
    lines: dict[tuple[int, bool, str], list[dict[str, Any]]] = {}
    for p in sorted(done, key=lambda p: p["macs_reduction"]):
        tuned = ", ".join(f"{k} {v}" for k, v in sorted((p.get("fine_tune_args") or {}).items()))
        lines.setdefault((p["epochs"], p["distill"], tuned), []).append(p)
    return lines


def plot(result: dict[str, Any]) -> bytes | None:
    """Per size: speed-up over the reference (x) against the worst set's mAP loss (y), a point per pruning
    strength, one line per (epochs, distillation); the total rule drawn across. PNG bytes; None without points."""
    done = [p for p in result["points"] if p.get("sizes")]
    if not done:
        return None
    plt = pyplot()
    sizes = [s["imgsz"] for s in done[0]["sizes"]]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), squeeze=False)
    for ax, (k, imgsz) in zip(axes[0], enumerate(sizes), strict=True):
        # against the reference when it was timed (the goal), else against PyTorch eager
        referenced = any(p["sizes"][k].get("speedup_vs_reference") for p in done)
        key = "speedup_vs_reference" if referenced else "speedup_vs_pytorch"
        for (epochs, distill, tuned), group in curves(done).items():
            xs = [p["sizes"][k].get(key) or float("nan") for p in group]
            ys = [max((p["sizes"][k].get("map_drop_pt") or {"-": float("nan")}).values()) for p in group]
            label = f"{epochs} epochs, {'distilled' if distill else 'plain'}{', ' + tuned if tuned else ''}"
            ax.plot(xs, ys, marker="o", label=label)
            for p, x, y in zip(group, xs, ys, strict=True):
                if math.isfinite(x) and math.isfinite(y):
                    ax.annotate(f"-{round(100 * p['macs_reduction'])}%", (x, y), fontsize=7)
        ax.axhline(100 * done[0]["max_total_drop"], color="grey", linestyle="--", linewidth=1, label="0.5 pt rule")
        if referenced:
            ax.axvline(1.5, color="grey", linestyle=":", linewidth=1, label="1.5x goal")
        against = "Ultralytics INT8 OpenVINO" if referenced else "PyTorch eager (no reference timed)"
        ax.set_xlabel(f"speed-up over {against} (p50, batch 1)")
        ax.set_ylabel("mAP50-95 loss, worst set (pt)")
        ax.set_title(f"{imgsz} px, {result['host']['cpu']} ({', '.join(result['host']['isa_flags'])})", fontsize=9)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def print_table(result: dict[str, Any]) -> None:
    h = result["host"]
    print(f"\npruning curve: {h['cpu']} ({', '.join(h['isa_flags']) or h['isa']}), {h['cores']} cores")
    print(
        f"{'MACs':>6}{'found':>7}{'ratio':>7}{'ep':>4}{'distil':>7}{'FT min':>7}{'px':>5}{'ref ms':>8}{'ms':>8}"
        f"{'x ref':>7}{'loss pt (per set)':>30}  verdict"
    )
    for p in result["points"]:
        head = (
            f"{-100 * p['macs_reduction']:>5.0f}%{p.get('macs_reduction_found', float('nan')) * -100:>6.0f}%"
            f"{p['ratio'] or float('nan'):>7.3f}{p['epochs']:>4}{'on' if p['distill'] else 'off':>7}"
            f"{p['fine_tune_min']:>7.1f}"
        )
        if not p.get("sizes"):
            print(f"{head}  {p['status']}: {p['reason']}")
        for s in p.get("sizes", []):
            loss = ", ".join(f"{k} {v:.1f}" for k, v in (s.get("map_drop_pt") or {}).items())
            verdict = "within 0.5 pt" if s.get("within_total") else "over the total"
            ms, x = s.get("ms") or float("nan"), s.get("speedup_vs_reference") or float("nan")
            ref = s.get("reference_ms") or float("nan")
            print(f"{head}{s['imgsz']:>5}{ref:>8.2f}{ms:>8.2f}{x:>7.2f}{loss:>30}  {verdict}")
    for c in result.get("controls", []):
        tuned = json.dumps(c["fine_tune_args"]) if c["fine_tune_args"] else "the train stage's arguments"
        sets = ", ".join(
            f"{k} {v['unpruned']:.4f} -> {v['control']:.4f} ({v['gain_pt']:+.1f} pt)" for k, v in c["sets"].items()
        )
        print(f"control (unpruned, {c['epochs']} epochs, {tuned}, {c['imgsz']} px PyTorch): {sets}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--weights", type=Path, default=None, help="trained checkpoint (default: <models>/train/best.pt)"
    )
    parser.add_argument("--macs", type=float, nargs="+", default=[0.2, 0.4, 0.6], help="MACs reductions to reach")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10], help="fine-tune epochs")
    parser.add_argument("--distill", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="input sizes (default: 640 and base.imgsz)")
    parser.add_argument(
        "--targets", nargs="+", default=None, help="export targets of the points (default: export.targets)"
    )
    parser.add_argument(
        "--fine-tune-args",
        type=json.loads,
        default={},
        help="compress.fine_tune_args of every point, as JSON (e.g. '{\"warmup_epochs\": 0}')",
    )
    parser.add_argument(
        "--production",
        type=Path,
        default=None,
        help="a labeled production set (images/, labels/) re-checked beside evaluate.sets "
        "(default: the newest <holdouts>/<cycle>; none: golden and evaluate.sets only)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="per recipe (epochs, fine-tune arguments) also fine-tune the unpruned checkpoint alike and score it",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch-runs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="keep every point's folder here")
    parser.add_argument("--no-library-reference", dest="library_reference", action="store_false")
    parser.add_argument("--quick", action="store_true", help="one point, one epoch, the project's size, few runs")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    if args.quick:
        args.macs, args.epochs, args.distill, args.sizes = [0.2], [1], ["on"], [params.base.imgsz]
        args.runs, args.batch_runs, args.rounds, args.batch = 3, 2, 1, 2
    args.sizes = args.sizes or list(dict.fromkeys([640, params.base.imgsz]))
    args.production = args.production or production_set(params)
    weights = (args.weights or default_model_path(params)).resolve()
    if not weights.is_file():
        raise SystemExit(f"{weights}: checkpoint not found; train first (python -m tasks.train) or pass --weights")
    require_trusted(weights, trusted_checkpoints(params))  # what the project recorded, or nothing is opened
    result: dict[str, Any] = {"weights": str(weights), "host": host(), "sizes": args.sizes, "points": []}
    production = str(args.production.resolve()) if args.production else ""
    result["sets"] = {"evaluate": params.evaluate.sets, "production": production}
    out = params.base.paths.reports / "benchmarks" / "compress_curve.json"
    start = time.perf_counter()
    work = Path(args.keep or (params.base.paths.reports / "benchmarks" / "compress_curve.work"))
    shutil.rmtree(work, ignore_errors=True)
    try:
        for n, point in enumerate(points(args.macs, args.epochs, args.distill, args.fine_tune_args)):
            print(f"point {n + 1}: {json.dumps(point)}", flush=True)
            result["points"].append(run_point(params, weights, root=work / f"point{n}", point=point, args=args))
            write_json_atomic(out, result)  # a long curve keeps the points it has
        if args.control:
            recipes = {
                json.dumps({"epochs": p["epochs"], "fine_tune_args": p["fine_tune_args"]}) for p in result["points"]
            }
            result["controls"] = []
            for n, recipe in enumerate(sorted(recipes)):
                print(f"control {n + 1}: the unpruned checkpoint fine-tuned with {recipe}", flush=True)
                one = control(
                    params, weights, root=work / f"control{n}", recipe=json.loads(recipe), production=args.production
                )
                result["controls"].append(one)
                write_json_atomic(out, result)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result["wall_min"] = round((time.perf_counter() - start) / 60, 1)
    print_table(result)
    write_json_atomic(out, result)
    png = plot(result)
    if png is not None:
        write_bytes_atomic(out.with_suffix(".png"), png)
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
