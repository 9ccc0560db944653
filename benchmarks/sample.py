"""How fast the sample stage selects from a large prediction log, and how much memory it needs.

Builds a synthetic prediction log of ``--rows`` rows (default 10 M: one champion batch a day for ``--days`` days, a
challenger re-predicting the last two; vectorised numpy/pyarrow, written with ``prediction_log.append`` one part per
(batch, model version); not timed), then, each in a fresh subprocess so the RSS high-water mark is honest:

* sampling: ``tasks.sample.run`` with every strategy on and the near-duplicate step off
  (``sample.phash_distance: null``): reading, scoring, disagreement, nomination, metadata, manifest and report;
* phash: the perceptual hash of ``--budget`` real production-sized PNGs, the per-selected-image cost the sampling
  timing leaves out.

Prints a table (rows, wall s, CPU s, rows/s, peak MB; medians of ``--repeat`` runs, peak = max) and the sampling
phases, and writes ``reports/benchmarks/sample.json`` (with the load average: the machine may be shared).

    python benchmarks/sample.py [--params params.yaml] [--rows 10000000] [--repeat 3] [--log DIR]
"""

from __future__ import annotations

import argparse
import binascii
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.config import load_params
from tasks.contracts import prediction_log
from tasks.contracts.reports import load_report
from tasks.io import write_json_atomic

START = dt.date(2026, 11, 2)
MODEL = "visionloop-detector"
TS = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


def hex_digests(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` random 64-character lowercase hex strings (stand-ins for image SHA-256s)."""
    raw = rng.integers(0, 256, size=n * 32, dtype=np.uint8).tobytes()
    return pa.array(np.frombuffer(binascii.hexlify(raw), dtype="S64")).cast(pa.string())


def batch_table(
    rng: np.random.Generator, *, batch: str, date: dt.date, sha: pa.Array, n_det: np.ndarray, classes: list[str]
) -> pa.Table:
    """One batch's champion rows (version 3), built column-wise (no per-image Python).

    Args:
        rng: random source.
        batch: batch name (also the image folder in the URIs).
        date: batch date.
        sha: (I,) image SHA-256 strings.
        n_det: (I,) boxes per image (0 gives the image's single null row).
        classes: class names; the last one is rare, so class_balanced has something to find.

    Returns:
        A table with :data:`tasks.contracts.prediction_log.SCHEMA`.
    """
    n_images = len(n_det)
    rows_per_image = np.maximum(n_det, 1)
    image_of_row = np.repeat(np.arange(n_images), rows_per_image)
    n_rows = len(image_of_row)
    null = ~np.repeat(n_det > 0, rows_per_image)
    take = pa.array(image_of_row)
    ids = pc.utf8_lpad(pc.cast(pa.array(np.arange(n_images)), pa.string()), 7, "0")
    uri = pc.binary_join_element_wise(f"file:///data/world/production/{batch}/images/", ids, ".png", "")
    class_p = np.ones(len(classes))
    class_p[-1] = 0.05
    class_id = rng.choice(len(classes), size=n_rows, p=class_p / class_p.sum()).astype(np.int16)
    confidence = (0.25 + 0.75 * rng.beta(2.0, 1.2, size=n_rows)).astype(np.float32)
    x1n = rng.random(n_rows, dtype=np.float32) * 0.8
    y1n = rng.random(n_rows, dtype=np.float32) * 0.8
    x2n = x1n + 0.05 + rng.random(n_rows, dtype=np.float32) * 0.15
    y2n = y1n + 0.05 + rng.random(n_rows, dtype=np.float32) * 0.15
    width, height = 640, 480

    def box(values: np.ndarray) -> pa.Array:
        return pa.array(values, type=pa.float32(), mask=null)

    columns: dict[str, Any] = {
        "image_id": ids.take(take),
        "image_uri": uri.take(take),
        "image_sha256": sha.take(take),
        "batch": pa.repeat(pa.scalar(batch), n_rows),
        "date": pa.repeat(pa.scalar(date, pa.date32()), n_rows),
        "ts": pa.repeat(pa.scalar(TS, pa.timestamp("us", tz="UTC")), n_rows),
        "model_name": pa.repeat(pa.scalar(MODEL), n_rows),
        "model_version": pa.repeat(pa.scalar("3"), n_rows),
        "model_alias": pa.repeat(pa.scalar("champion"), n_rows),
        "class_id": pa.array(class_id, type=pa.int16(), mask=null),
        "class_name": pa.array(classes).take(pa.array(class_id.astype(np.int64), mask=null)),
        "confidence": box(confidence),
        "x1": box(x1n * width),
        "y1": box(y1n * height),
        "x2": box(x2n * width),
        "y2": box(y2n * height),
        "x1n": box(x1n),
        "y1n": box(y1n),
        "x2n": box(x2n),
        "y2n": box(y2n),
        "image_width": pa.repeat(pa.scalar(width, pa.int32()), n_rows),
        "image_height": pa.repeat(pa.scalar(height, pa.int32()), n_rows),
        "latency_ms": pa.array(np.full(n_rows, 30.0, dtype=np.float32)),
        "n_detections": pa.array(np.repeat(n_det, rows_per_image).astype(np.int16)),
    }
    return prediction_log.upgrade(pa.table(columns))


def challenger_of(rng: np.random.Generator, champion: pa.Table, *, flip: float, jitter: float) -> pa.Table:
    """The champion's rows as a challenger (version 4) saw them: corners jittered, a share ``flip`` of classes redrawn.

    Returns:
        A table with :data:`tasks.contracts.prediction_log.SCHEMA` and the champion's row layout.
    """
    n_rows = champion.num_rows
    null = champion["class_id"].is_null().to_numpy(zero_copy_only=False)
    class_id = champion["class_id"].fill_null(0).to_numpy().astype(np.int16)
    redraw = rng.random(n_rows) < flip
    class_id[redraw] = rng.integers(0, int(class_id.max()) + 1, size=int(redraw.sum()), dtype=np.int16)
    table = champion
    for name in ("x1n", "y1n", "x2n", "y2n"):
        values = table[name].fill_null(0).to_numpy() + rng.normal(0, jitter, n_rows).astype(np.float32)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, mask=null))
    table = table.set_column(table.schema.get_field_index("class_id"), "class_id", pa.array(class_id, mask=null))
    for name, value in (("model_version", "4"), ("model_alias", "challenger")):
        table = table.set_column(table.schema.get_field_index(name), name, pa.repeat(pa.scalar(value), n_rows))
    return table


def build_log(root: Path, *, rows: int, days: int, classes: list[str], seed: int = 0) -> dict[str, int]:
    """Write a synthetic prediction log of about ``rows`` rows: one champion batch a day, a challenger on the last two.

    The challenger (version 4, alias ``challenger``) re-predicts the last two days' images: corners jittered, 10 % of
    classes redrawn, so disagreement has real matching to do. Boxes per image ~ Poisson(4); an image without boxes
    gets its null row.

    Returns:
        ``{"rows": ..., "images": ..., "parts": ...}`` as written.
    """
    rng = np.random.default_rng(seed)
    rows_per_image = 4.0 + np.exp(-4.0)  # E[max(Poisson(4), 1)]
    images_per_day = int(rows / rows_per_image / (days + 2))  # the challenger adds two days' rows
    written = {"rows": 0, "images": 0, "parts": 0}
    for day in range(days):
        date = START + dt.timedelta(days=day)
        batch = date.isoformat()
        champion = batch_table(
            rng,
            batch=batch,
            date=date,
            sha=hex_digests(rng, images_per_day),
            n_det=rng.poisson(4.0, size=images_per_day),
            classes=classes,
        )
        tables = [("3", champion)]
        if day >= days - 2:
            tables.append(("4", challenger_of(rng, champion, flip=0.1, jitter=0.01)))
        for version, table in tables:
            prediction_log.append(root, table, part=f"batch={batch}__model={MODEL}-v{version}")
            written["rows"] += table.num_rows
            written["parts"] += 1
        written["images"] += images_per_day
    return written


def write_params(
    path: Path, *, source: Path, root: Path, log: Path, days: int, budget: int, phash: bool
) -> Path:  # fmt: skip
    """``source`` with every path under ``root`` (the log at ``log``), every strategy on, the window = the log."""
    import yaml

    data = yaml.safe_load(source.read_text())
    data["base"]["paths"] = {key: str(root / value) for key, value in data["base"]["paths"].items()}
    data["base"]["paths"]["predictions"] = str(log)
    data["sample"].update(
        budget=budget,
        max_per_day=max(1, budget // 4),
        window_days=days,
        phash_distance=6 if phash else None,
        drift_batches=[(START + dt.timedelta(days=days // 2)).isoformat()],
    )
    for config in data["sample"]["strategies"].values():
        config["budget"] = max(1, budget // 5)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def peak_mb() -> float:
    """This process's RSS high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_sql(params_path: Path) -> dict[str, Any]:
    """One timed ``tasks.sample.run`` (imports and the params load not timed)."""
    from tasks import sample

    params = load_params(params_path)
    before = peak_mb()
    cpu, start = time.process_time(), time.perf_counter()
    result = sample.run(params, cycle="bench")
    wall = time.perf_counter() - start
    report = load_report(params.base.paths.reports, "sample")
    return {
        "wall_s": wall,
        "cpu_s": time.process_time() - cpu,
        "peak_mb": peak_mb(),
        "import_peak_mb": before,
        "selected": result.selected,
        "phases": report.timings_s,
    }


def child_phash(images: Path) -> dict[str, Any]:
    """Perceptual hashes of every PNG in ``images`` (the near-duplicate step's cost per selected image)."""
    from tasks import sample

    paths = sorted(images.glob("*.png"))
    sample.phash_uri(paths[0].as_uri())  # the first call imports imagehash/scipy: not the per-image cost
    cpu, start = time.process_time(), time.perf_counter()
    hashes = [sample.phash_uri(p.as_uri()) for p in paths]
    wall = time.perf_counter() - start
    assert all(h is not None for h in hashes)
    return {"wall_s": wall, "cpu_s": time.process_time() - cpu, "peak_mb": peak_mb(), "images": len(paths)}


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_pngs(folder: Path, n: int, size: int = 160) -> None:
    """``n`` distinct production-sized PNGs (what the phash step reads)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="where reports/benchmarks/ goes (base.paths.reports)")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--log", type=Path, default=None, help="reuse (or create) the synthetic log in this folder")
    parser.add_argument("--child", choices=["sql", "phash"], help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_sql(args.target) if args.child == "sql" else child_phash(args.target)
        print(json.dumps(result))
        return
    classes = list(load_params(args.params).base.classes)
    with tempfile.TemporaryDirectory(prefix="sample-bench-") as tmp:
        root = Path(tmp)
        log = args.log or root / "predictions"
        if not any(log.glob("date=*/*.parquet")):
            start = time.perf_counter()
            built = build_log(log, rows=args.rows, days=args.days, classes=classes)
            print(f"built {built} in {time.perf_counter() - start:.1f} s (not timed)")
        rows = sum(pq_rows(p) for p in log.glob("date=*/*.parquet"))
        params_path = write_params(
            root / "params.yaml",
            source=Path(args.params),
            root=root,
            log=log,
            days=args.days,
            budget=args.budget,
            phash=False,
        )
        sql = [run_child("--child", "sql", "--target", str(params_path)) for _ in range(args.repeat)]
        write_pngs(root / "pngs", args.budget)
        phash = [run_child("--child", "phash", "--target", str(root / "pngs")) for _ in range(args.repeat)]
    rows_out = [
        _row("sampling (all strategies, no phash)", rows, sql),
        _row(f"phash of {args.budget} selected images", args.budget, phash),
    ]
    load = os.getloadavg()
    print(f"\n{rows:,} log rows, {args.repeat} fresh processes each, {os.cpu_count()} cores, load {load[0]:.1f}")
    print(f"{'step':<38}{'rows':>12}{'wall s':>9}{'cpu s':>8}{'rows/s':>14}{'peak MB':>9}")
    for r in rows_out:
        print(f"{r['step']:<38}{r['rows']:>12,}{r['wall_s']:>9.2f}{r['cpu_s']:>8.2f}{r['rows_per_s']:>14,.0f}"
              f"{r['peak_mb']:>9.0f}")  # fmt: skip
    phases = {k: statistics.median(run["phases"][k]["wall"] for run in sql) for k in sql[0]["phases"]}
    print("sampling phases (median wall s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    out = load_params(args.params).base.paths.reports / "benchmarks" / "sample.json"
    write_json_atomic(
        out,
        {
            "rows": rows,
            "budget": args.budget,
            "cores": os.cpu_count(),
            "load_average": load,
            "table": rows_out,
            "sampling_phases_wall_s": phases,
            "runs": {"sql": sql, "phash": phash},
            "goal": {"wall_s": 2.0, "peak_mb": 2048},
        },
    )
    print(f"wrote {out}")


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _row(step: str, rows: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = statistics.median(r["wall_s"] for r in runs)
    return {
        "step": step,
        "rows": rows,
        "wall_s": round(wall, 3),
        "wall_min_s": round(min(r["wall_s"] for r in runs), 3),
        "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
        "rows_per_s": rows / wall,
        "peak_mb": round(max(r["peak_mb"] for r in runs), 1),
    }


if __name__ == "__main__":
    main()
