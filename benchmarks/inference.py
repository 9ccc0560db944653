"""PyTorch eager vs every exported artifact, side by side on the same images, at 640 px and the project's size.

For each input size the checkpoint is exported with the project's own export stage (YOLO models are fully
convolutional, so the same weights export at any size): every target in ``export.targets`` is built,
re-evaluated on the golden set letterboxed to that size, parity-checked and timed; the PyTorch model is timed
on the same images with the same code. Latency is the network alone (pre/post-processing are shared by all
runtimes): median and p95 at batch 1, throughput at ``--batch``, with ``--threads`` intra-op threads. PyTorch
and every artifact are timed in turns, ``--rounds`` rounds (``tasks.targets.timing.time_artifacts``), so the ratios
compare runs made moments apart; the verdicts are the export stage's own, from its own timing pass.
Prints a table and writes ``<reports>/benchmarks/inference.json``.

    python benchmarks/inference.py [--params params.yaml] [--weights models/train/best.pt] [--sizes 640 160]
        [--threads 2] [--batch 8] [--runs 50] [--keep DIR] [--compressed models/compressed/best.pt]

With a compressed checkpoint (``--compressed``, or the compress stage's when ``reports/compress.json`` says
``compressed``), the export stage builds every target from it too (``compressed_<target>`` rows, held against the
unpruned PyTorch mAP with the compress budget) and its PyTorch model is timed beside the rest
(``pytorch_compressed``), all in the same interleaved pass. Both checkpoints must be ones the project recorded
(:mod:`tasks.contracts.checkpoints`): the benchmark opens nothing else.

At a size larger than the world's images, the sets are *mosaics*: k x k images tiled into one input (labels
moved with them), so objects keep the scale the model was trained at and mAP stays meaningful; the golden
set becomes the evaluation set and the training set the INT8 calibration pool, both at that size.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import numpy as np
from dvc_scale import host

from tasks import compress, export
from tasks.config import Params, load_params
from tasks.contracts.checkpoints import require_trusted, trusted_checkpoints
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.compress import CompressReport
from tasks.contracts.reports.export import ArtifactCheck, SpeedResult
from tasks.contracts.yolo_labels import load_rgb, read_labeled_set
from tasks.core.hashing import file_sha256
from tasks.env import apply_env
from tasks.io import write_json_atomic
from tasks.models.yolo import configure_ultralytics
from tasks.runtimes.detectors import PAD_VALUE
from tasks.targets.scoring import default_model_path, evaluate_set, inference_settings
from tasks.targets.timing import probe_images, speed_settings, time_artifacts

LIBRARY_ROW = "ultralytics_ov_i8"
COMPRESSED_TORCH_ROW = "pytorch_compressed"


def mosaic_set(source: Path, target: Path, *, imgsz: int, classes: int) -> Path:
    """Tile a YOLO set into ``imgsz`` mosaics of k x k images (k = imgsz // image side); return ``target``.

    Returns ``source`` unchanged when its images are not smaller than half of ``imgsz`` (k < 2). Images
    left over after the last full mosaic are dropped.
    """
    items = read_labeled_set(source, num_classes=classes)
    tile = max(items[0].width, items[0].height)
    k = imgsz // tile
    if k < 2:
        return source
    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "labels").mkdir(parents=True, exist_ok=True)
    side = imgsz // k
    for n in range(len(items) // (k * k)):
        canvas = np.full((imgsz, imgsz, 3), PAD_VALUE, np.uint8)
        lines = []
        for j, item in enumerate(items[n * k * k : (n + 1) * k * k]):
            row, col = divmod(j, k)
            canvas[row * side : (row + 1) * side, col * side : (col + 1) * side] = cv2.resize(
                load_rgb(item.path), (side, side), interpolation=cv2.INTER_LINEAR
            )
            for cls, (cx, cy, w, h) in zip(item.class_id, item.boxes_xywhn, strict=True):
                x, y = (col + cx) * side / imgsz, (row + cy) * side / imgsz
                lines.append(f"{cls} {x:.6f} {y:.6f} {w * side / imgsz:.6f} {h * side / imgsz:.6f}")
        cv2.imwrite(str(target / "images" / f"mosaic_{n:04d}.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        (target / "labels" / f"mosaic_{n:04d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return target


def size_params(
    params: Params, *, imgsz: int, root: Path, args: argparse.Namespace, trusted: tuple[str, ...] = ()
) -> Params:
    """``params`` at another input size: mosaic sets, models and reports under ``root``; ``trusted``: the hashes of
    the checkpoints the project recorded that this run opens from its own folders."""
    data = params.model_dump(mode="json")
    data["base"]["imgsz"] = imgsz
    data["train"]["trusted_checkpoints"] = sorted({*data["train"]["trusted_checkpoints"], *trusted})
    data["base"]["paths"].update(models=str(root / "models"), reports=str(root / "reports"))
    for name in dict.fromkeys(["train", *params.evaluate.sets]):
        source = getattr(params.base.paths, name)
        data["base"]["paths"][name] = str(
            mosaic_set(source, root / "sets" / name, imgsz=imgsz, classes=len(params.base.classes))
        )
    data["export"]["speed"].update(
        threads=args.threads, batch=args.batch, runs=args.runs, batch_runs=args.batch_runs, rounds=args.rounds
    )
    return Params.model_validate(data)


def place_compressed(sized: Params, compressed: Path) -> Path:
    """Put ``compressed`` where the export stage finds the compress stage's checkpoint, with the report saying so."""
    local = compress.compressed_path(sized)
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(compressed, local)
    record = CompressReport(status="compressed", weights=str(local), checkpoint_sha256=file_sha256(local))
    write_report(sized.base.paths.reports, "compress", record, sized)
    return local


# long: one size's whole pass: export (both checkpoints), the library reference, the interleaved timing, the rows
def bench_size(
    params: Params,
    weights: Path,
    *,
    imgsz: int,
    root: Path,
    args: argparse.Namespace,
    compressed: Path | None = None,
) -> dict[str, Any]:
    """Export at ``imgsz`` and time PyTorch on the same images; return the rows of that size."""
    shas = tuple(file_sha256(p) for p in (weights, compressed) if p is not None)
    sized = size_params(params, imgsz=imgsz, root=root, args=args, trusted=shas)
    (sized.base.paths.models / "train").mkdir(parents=True, exist_ok=True)
    local = default_model_path(sized)
    if not local.exists():
        shutil.copyfile(weights, local)
    local_compressed = place_compressed(sized, compressed) if compressed is not None else None
    start = time.perf_counter()
    error = None
    try:
        report = export.run(sized, weights=local)
        checks, reference, selected = report.artifacts, report.reference_map50_95, report.selected
        verdicts = report.selection
    except export.ExportCheckError as exc:  # the FP32 export collapsed: report it beside PyTorch
        error = str(exc)
        failed = load_report(sized.base.paths.reports, "export")
        checks, reference, selected, verdicts = [], failed.reference_map50_95, None, failed.selection
    export_s = time.perf_counter() - start
    set_name = sized.evaluate.sets[0]
    library = library_openvino_int8(sized, local, root=root, set_name=set_name) if args.library_reference else None
    cfg = sized.export.speed
    paths = {"pytorch": local, **({LIBRARY_ROW: library["path"]} if library else {})}
    if local_compressed is not None:
        paths[COMPRESSED_TORCH_ROW] = local_compressed
    paths |= {c.target: Path(c.path) for c in checks if c.status == "built"}
    speeds = time_artifacts(
        paths,
        settings=speed_settings(sized),
        images=probe_images(sized),
        batch=cfg.batch,
        warmup=cfg.warmup,
        runs=cfg.runs,
        batch_runs=cfg.batch_runs,
        rounds=cfg.rounds,
    )
    torch_speed = speeds["pytorch"]
    rows = [row("pytorch", "fp32", torch_speed, reference.get(set_name), reference.get(set_name), torch_speed)]
    if library:
        rows.append(
            row(
                LIBRARY_ROW,
                "int8",
                speeds[LIBRARY_ROW],
                library["map50_95"],
                reference.get(set_name),
                torch_speed,
                status="reference: Ultralytics' own OpenVINO INT8 export (not a target)",
                export_s=library["export_s"],
                size_mb=library["size_mb"],
            )
        )
    if local_compressed is not None:
        compressed_map = evaluate_set(
            local_compressed,
            getattr(sized.base.paths, set_name),
            classes=sized.base.classes,
            settings=inference_settings(sized),
            batch=sized.evaluate.batch,
            set_name=set_name,
        ).map50_95
        rows.append(
            row(
                COMPRESSED_TORCH_ROW,
                "fp32",
                speeds[COMPRESSED_TORCH_ROW],
                compressed_map,
                reference.get(set_name),
                torch_speed,
                status="reference: the compressed checkpoint in PyTorch (not a target)",
            )
        )
    for check in checks:
        rows.append(
            row(
                check.target,
                check.precision,
                speeds.get(check.target),
                check.map50_95.get(set_name),
                reference.get(set_name),
                torch_speed,
                status=_note(check, selected),
                reason=verdicts.get(check.target, check.reason),
                size_mb=check.size_mb,
                parity=None if check.parity is None else f"{check.parity.matched}/{check.parity.reference}",
                map50_95_sets=check.map50_95,  # every set the export stage re-checked (the rule holds on each)
            )
        )
    return {
        "imgsz": imgsz,
        "set": set_name,
        "selected": selected,
        "reference_map50_95": reference,  # the unpruned PyTorch model on every set
        "error": error,
        "export_s": round(export_s, 1),
        "torch_speed": asdict(torch_speed),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "rows": rows,
    }


def library_openvino_int8(sized: Params, weights: Path, *, root: Path, set_name: str) -> dict[str, Any]:
    """The model library's own best CPU export, for comparison: Ultralytics' ``export(format="openvino", int8=True)``.

    Same checkpoint, calibrated on the same training set (Ultralytics' NNCF settings; its default also turns
    YOLO26's NMS-free head off), then evaluated with the project's code; timed with the others in
    :func:`bench_size`. Not a deployable target: a reference row only.

    Returns:
        ``path`` (the ``.xml``), ``map50_95`` on ``set_name``, ``export_s`` and ``size_mb``.
    """
    import yaml

    configure_ultralytics()
    from ultralytics import YOLO

    scratch = root / "ultralytics"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.copyfile(weights, scratch / "model.pt")
    data = scratch / "data.yaml"
    sets = sized.base.paths
    data.write_text(
        yaml.safe_dump(
            {
                "train": str(Path(sets.train).resolve() / "images"),
                "val": str(Path(getattr(sets, set_name)).resolve() / "images"),
                "names": dict(enumerate(sized.base.classes)),
            }
        )
    )
    start = time.perf_counter()
    out = Path(
        YOLO(str(scratch / "model.pt")).export(
            format="openvino", int8=True, imgsz=sized.base.imgsz, data=str(data), split="train", verbose=False
        )
    )
    export_s = time.perf_counter() - start
    xml = next(out.glob("*.xml"))
    settings = replace(inference_settings(sized), static_shapes=True)
    evaluation = evaluate_set(
        xml, getattr(sets, set_name), classes=sized.base.classes, settings=settings, batch=1, set_name=set_name
    )
    return {
        "path": xml,
        "map50_95": evaluation.map50_95,
        "export_s": round(export_s, 1),
        "size_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 2),
    }


def _note(check: ArtifactCheck, selected: dict[str, str] | None) -> str:
    if check.status != "built":
        return check.status
    return "SELECTED" if selected and selected["target"] == check.target else ""


def row(
    name: str,
    precision: str,
    speed: SpeedResult | None,
    map50_95: float | None,
    reference: float | None,
    torch_speed: SpeedResult,
    **extra: Any,
) -> dict[str, Any]:
    """One table row: latency, throughput, mAP and ratios to PyTorch."""
    out: dict[str, Any] = {"target": name, "precision": precision, **extra}
    if speed is not None:
        out |= {
            "p50_ms": speed.latency_ms["p50"],
            "p95_ms": speed.latency_ms["p95"],
            "throughput_ips": speed.throughput_ips,
            "batch": speed.batch,
            "threads": speed.threads,
            "peak_rss_mb": speed.peak_rss_mb,
            "speedup_p50": round(torch_speed.latency_ms["p50"] / speed.latency_ms["p50"], 2),
            "speedup_throughput": round(speed.throughput_ips / torch_speed.throughput_ips, 2),
        }
    if map50_95 is not None:
        out["map50_95"] = round(map50_95, 4)
        if reference is not None:
            out["map_drop_pt"] = round(100 * (reference - map50_95), 2)
    return out


def print_table(result: dict[str, Any]) -> None:
    cpu = host()
    print(
        f"\n{result['imgsz']} px, mAP50-95 on {result['set']}, export stage {result['export_s']} s, "
        f"load average {result['load_average']}; {cpu['cpu']} ({', '.join(cpu['isa_flags']) or cpu['isa']}), "
        f"{cpu['cores']} cores"
    )
    header = (
        f"{'target':<15}{'prec':>5}{'p50 ms':>9}{'p95 ms':>9}{'img/s@b':>12}{'x PT p50':>9}{'x PT thr':>9}"
        f"{'mAP':>8}{'drop pt':>8}{'parity':>8}{'MB':>7}{'RSS MB':>8}  note"
    )
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        if "p50_ms" not in r:
            print(f"{r['target']:<15}{r['precision']:>5}  {r.get('reason', '')[:100]}")
            continue
        thr = f"{r['throughput_ips']:.1f}@{r['batch']}"
        print(
            f"{r['target']:<15}{r['precision']:>5}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{thr:>12}"
            f"{r['speedup_p50']:>9.2f}{r['speedup_throughput']:>9.2f}{r.get('map50_95', float('nan')):>8.4f}"
            f"{r.get('map_drop_pt', 0.0):>8.2f}{r.get('parity') or '':>8}{r.get('size_mb', 0.0):>7.2f}"
            f"{r['peak_rss_mb']:>8.1f}  {r.get('status') or r.get('reason', '')[:70]}"
        )
    if result["selected"]:
        print(f"selected: {result['selected']['target']} - {result['selected']['reason']}")
    if result["error"]:
        print(f"export failed: {result['error']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: <models>/train/best.pt)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="input sizes (default: 640 and base.imgsz)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="batch of the throughput run")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 runs")
    parser.add_argument("--batch-runs", type=int, default=10, help="timed batch runs")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in which all runtimes take turns")
    parser.add_argument("--keep", type=Path, default=None, help="keep the exported artifacts in this folder")
    parser.add_argument(
        "--compressed",
        type=Path,
        default=None,
        help="a compressed checkpoint (default: the compress stage's, when reports/compress.json says compressed)",
    )
    parser.add_argument(
        "--no-library-reference",
        dest="library_reference",
        action="store_false",
        help="skip the reference row of Ultralytics' own OpenVINO INT8 export",
    )
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    weights = (args.weights or default_model_path(params)).resolve()
    if not weights.is_file():
        raise SystemExit(f"{weights}: checkpoint not found; train first (python -m tasks.train) or pass --weights")
    compressed = args.compressed or export.compressed_checkpoint(params)
    if compressed is not None and not compressed.is_file():
        raise SystemExit(f"{compressed}: compressed checkpoint not found (python -m tasks.compress)")
    recorded = trusted_checkpoints(params)
    for checkpoint in (weights, compressed):
        if checkpoint is not None:
            require_trusted(checkpoint, recorded)  # what the project recorded, or nothing is opened
    sizes = args.sizes or list(dict.fromkeys([640, params.base.imgsz]))
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        root = args.keep or Path(tmp)
        for imgsz in sizes:
            result = bench_size(params, weights, imgsz=imgsz, root=root / str(imgsz), args=args, compressed=compressed)
            print_table(result)
            results.append(result)
    out = params.base.paths.reports / "benchmarks" / "inference.json"
    report = {
        "weights": str(weights),
        "compressed": None if compressed is None else str(compressed),
        "threads": args.threads,
        "batch": args.batch,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "host": host(),  # the ISA: the artifact fastest on one host may not be on another
        "load_average": os.getloadavg(),
        "sizes": results,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(out, report)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
