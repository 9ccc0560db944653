"""How well the monitor notices drift and a bad promotion, and what one window of statistics costs.

Three parts, one table each, all written to ``reports/benchmarks/monitor.json``:

* compute: a synthetic window of ``--rows`` box rows (default 1 M, built column-wise as the log holds them:
  1-5 boxes per image, 5 % without) against a 1000-image baseline. Timed: the statistics path only, i.e.
  :func:`tasks.contracts.monitor_frames.frames` on the window's Arrow table (rows -> image and box frames) plus
  :func:`tasks.decisions.monitoring.compare` (13 signals, tests, PSI, latency, advice); the median of
  ``--repeat`` runs. Reading Parquet and any human (HTML) report are not timed.
* detection: the model (``--model``, default ``<models>/export/model.onnx``) predicts, with predict's thresholds
  (``predict.conf/iou/max_det``) and the log's input statistics, its baseline (``monitor.baseline.sets``, as the
  monitor stage computes it) and streams rendered by :func:`tasks.sim.stream.render_stream`: for every scenario of
  ``world.scenarios`` and every ``--severities`` value, ``--clean`` source-domain windows then ``--drifted``
  windows at that severity (``--images`` images each); and one no-drift stream of ``--nodrift`` windows. The
  drifted streams share their seed with the no-drift stream, so their clean windows are its first windows (same
  scenes, predicted once). Each window is judged by ``compare`` with ``monitor.drift`` and the trigger
  (``decide_trigger``, k = ``monitor.trigger.confirm_windows``, no cool-down) is asked after every window.
  Reported: windows of drift until the trigger fires (goal: <= k + 1 at severity >= 0.5), the signals that drifted,
  and false alarms on the no-drift stream (goal: 0 over >= 20 windows).
* rollback: the same no-drift windows predicted by a deliberately worse model too (``--worse``; by default the
  project's own train and export stages train one from scratch for ``--worse-epochs`` epochs into a temporary
  folder: the same architecture and data, stopped early, an honest "worse candidate"). For a promotion before each
  window, :func:`tasks.decisions.watch.watch_window` pairs the promoted and the previous model on the next
  ``monitor.watch.windows`` windows and :func:`~tasks.decisions.watch.decide_watch` decides; "worse promoted,
  previous = good" must roll back within the watch, "good promoted, previous = worse" never.

    python benchmarks/monitor.py [--params params.yaml] [--model PATH] [--worse PATH] [--images 150]
        [--severities 0.5 1.0] [--nodrift 20] [--rows 1000000] [--only compute]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.config import Params, load_params
from tasks.contracts import prediction_log
from tasks.contracts.batch_sources import read_sources, sources_path
from tasks.contracts.monitor_frames import STATS, Frames, frames
from tasks.contracts.reports.monitor import Window
from tasks.contracts.yolo_labels import list_images
from tasks.decisions.monitoring import compare, decide_trigger, decide_watch, watch_window
from tasks.env import apply_env
from tasks.io import write_json_atomic
from tasks.runtimes.detectors import Detector, load_detector
from tasks.sim.stream import render_stream
from tasks.targets.log_rows import image_records
from tasks.targets.scoring import predict_settings

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "visionloop-detector"
NOW = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


# ------------------------------------------------------------------ compute time


def synthetic_window(rows: int, *, seed: int, batch: str = "2026-11-02", images: int | None = None) -> pa.Table:
    """A log table of about ``rows`` box rows (v2 schema), built column-wise: 1-5 boxes per image, 5 % empty."""
    rng = np.random.default_rng(seed)
    n_images = images or max(int(rows / 2.9), 1)  # 1-5 boxes, 5 % empty: ~2.9 rows per image
    counts = rng.integers(1, 6, n_images)
    counts[rng.random(n_images) < 0.05] = 0
    per_image = np.maximum(counts, 1)
    n = int(per_image.sum())
    image = np.repeat(np.arange(n_images), per_image)
    mask = ~np.repeat(counts > 0, per_image)
    ids = pa.array([f"{batch}_{i:07d}" for i in range(n_images)], pa.string())
    take = pa.array(image, pa.int64())
    side = rng.uniform(15, 50, n).astype(np.float32)
    x1 = rng.uniform(0, 100, n).astype(np.float32)
    y1 = rng.uniform(0, 100, n).astype(np.float32)

    def boxed(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        return pa.array(values, arrow_type, mask=mask)

    def constant(value: Any, arrow_type: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, arrow_type), n)

    columns: dict[str, pa.Array] = {
        "image_id": ids.take(take),
        "image_uri": ids.take(take),
        "image_sha256": constant("0" * 64, pa.string()),
        "batch": constant(batch, pa.string()),
        "date": constant(dt.date.fromisoformat(batch[:10]), pa.date32()),
        "ts": constant(NOW, pa.timestamp("us", tz="UTC")),
        "model_name": constant(MODEL_NAME, pa.string()),
        "model_version": constant("1", pa.string()),
        "model_alias": constant("champion", pa.string()),
        "class_id": boxed(rng.integers(0, 6, n).astype(np.int16), pa.int16()),
        "class_name": constant(None, pa.string()),
        "confidence": boxed(rng.uniform(0.25, 1.0, n).astype(np.float32), pa.float32()),
        "x1": boxed(x1, pa.float32()),
        "y1": boxed(y1, pa.float32()),
        "x2": boxed(x1 + side, pa.float32()),
        "y2": boxed(y1 + side, pa.float32()),
        **{f"{c}n": constant(None, pa.float32()) for c in ("x1", "y1", "x2", "y2")},
        "image_width": constant(160, pa.int32()),
        "image_height": constant(160, pa.int32()),
        "latency_ms": pa.array(rng.uniform(1, 4, n_images).astype(np.float32)[image], pa.float32()),
        "n_detections": pa.array(counts.astype(np.int16)[image], pa.int16()),
        "source": constant("default", pa.string()),
        "error": constant(None, pa.string()),
        **{name: pa.array(rng.normal(110, 20, n_images).astype(np.float32)[image]) for name in STATS},
        "shadow": constant(False, pa.bool_()),
    }
    return prediction_log.upgrade(pa.table(columns))  # v2 columns; the v3 ones as upgrade fills them


def time_compute(params: Params, *, rows: int, repeat: int) -> dict[str, Any]:
    """Median seconds of frames() and compare() on a ``rows``-row window (baseline frames built once, untimed)."""
    rules = params.monitor.drift
    window = synthetic_window(rows, seed=1)
    baseline = frames(synthetic_window(0, seed=2, batch="2026-10-01", images=1000), imgsz=160, low_confidence=0.5)
    frames_s, compare_s = [], []
    result: Window | None = None
    for _ in range(repeat):
        start = time.perf_counter()
        fr = frames(window, imgsz=params.base.imgsz, low_confidence=rules.low_confidence)
        middle = time.perf_counter()
        result = compare(baseline, fr, rules, key="2026-11-02", date="2026-11-02")
        frames_s.append(middle - start)
        compare_s.append(time.perf_counter() - middle)
    assert result is not None
    return {
        "rows": window.num_rows,
        "images": result.images,
        "boxes": result.boxes,
        "signals": len(result.signals),
        "frames_s": statistics.median(frames_s),
        "compare_s": statistics.median(compare_s),
        "total_s": statistics.median(a + b for a, b in zip(frames_s, compare_s, strict=True)),
        "repeat": repeat,
        "timed": "statistics only: frames() on the Arrow table + compare(); no Parquet read, no HTML report",
    }


# ------------------------------------------------------------------ predicting folders into log rows


def predict_folder(
    detector: Detector, params: Params, images: Sequence[Path], *, batch: str, date: dt.date, version: str
) -> pa.Table:
    """Log rows of ``images`` as batch prediction writes them (boxes, latency, input statistics)."""
    sources = read_sources(sources_path(images[0].parent.parent)) if images else {}
    records = image_records(detector, images, batch_size=params.predict.batch_size, source=sources, desc=batch)
    return prediction_log.rows_to_table(
        records,
        batch=batch,
        date=date,
        model_name=MODEL_NAME,
        model_version=version,
        model_alias="champion",
        class_names=list(params.base.classes),
        ts=NOW,
    )


def baseline_frames(detector: Detector, params: Params, *, version: str) -> Frames:
    """The model on its own validation images (``monitor.baseline``), as the monitor stage computes it."""
    folders = {"val": params.base.paths.val, "golden": params.base.paths.golden, "train": params.base.paths.train}
    tables = [
        predict_folder(
            detector,
            params,
            list_images(folders[name] / "images")[: params.monitor.baseline.max_images],
            batch=f"baseline/{name}",
            date=dt.date(2026, 1, 1),
            version=version,
        )
        for name in params.monitor.baseline.sets
    ]
    return as_frames(pa.concat_tables(tables), params)


def as_frames(table: pa.Table, params: Params) -> Frames:
    return frames(table, imgsz=params.base.imgsz, low_confidence=params.monitor.drift.low_confidence)


# ------------------------------------------------------------------ detection delay and false alarms


def predict_stream(
    detectors: dict[str, Detector], params: Params, out: Path, **stream: Any
) -> list[tuple[str, float, dict[str, Frames]]]:
    """Render a stream and predict each batch with every model: ``(batch, severity, {model: frames})``."""
    rendered = render_stream(params, out=out, **stream)
    result = []
    for batch in rendered:
        images = list_images(batch.images)
        by_model = {
            name: as_frames(
                predict_folder(detector, params, images, batch=batch.name, date=batch.date, version=name), params
            )
            for name, detector in detectors.items()
        }
        result.append((batch.name, batch.severity, by_model))
    return result


def judge_stream(baseline: Frames, windows: list[tuple[str, Frames]], params: Params) -> list[Window]:
    rules = params.monitor.drift
    return [compare(baseline, fr, rules, key=key, date=key[:10]) for key, fr in windows]


def first_fire(judged: list[Window], params: Params) -> int | None:
    """Index of the first window after which the trigger fires (no cool-down, no open cycle), or ``None``."""
    for i in range(len(judged)):
        decision = decide_trigger(
            judged[: i + 1], rules=params.monitor.trigger, now=NOW, last_trigger_at=None, cycle_open=None
        )
        if decision.fire:
            return i
    return None


def alarms(judged: list[Window], params: Params) -> int:
    """Trigger firings over a stream when each firing starts a cool-down-free cycle that flags its batches."""
    fired, done = 0, set[str]()
    for i in range(len(judged)):
        decision = decide_trigger(
            judged[: i + 1],
            rules=params.monitor.trigger,
            now=NOW,
            last_trigger_at=None,
            cycle_open=None,
            triggered_batches=done,
        )
        if decision.fire:
            fired += 1
            done |= set(decision.batches)
    return fired


def closest(judged: list[Window]) -> dict[str, dict[str, float]]:
    """Per signal, over windows without drift: the largest effect and the smallest p-value (how near the rules)."""
    out: dict[str, dict[str, float]] = {}
    for window in judged:
        for s in window.signals:
            if s.available and s.effect is not None and s.p_value is not None:
                seen = out.setdefault(s.name, {"max_effect": 0.0, "min_p": 1.0})
                seen["max_effect"] = max(seen["max_effect"], s.effect)
                seen["min_p"] = min(seen["min_p"], s.p_value)
    return out


def drifted_names(window: Window) -> list[str]:
    return [s.name for s in window.signals if s.drifted]


# long: one scenario loop that renders, predicts, judges and tabulates; pieces above do the work
def detection(
    params: Params, detector: Detector, baseline: Frames, nodrift: list[tuple[str, float, dict[str, Frames]]], args
) -> list[dict[str, Any]]:
    """Windows until the trigger fires, per scenario and severity (clean windows: the no-drift stream's first)."""
    k = params.monitor.trigger.confirm_windows
    clean = [(key, fr["good"]) for key, _, fr in nodrift[: args.clean]]
    start = params.world.production.start_date + dt.timedelta(days=args.clean)
    rows = []
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        for scenario in params.world.scenarios:
            for severity in args.severities:
                drifted = predict_stream(
                    {"good": detector},
                    params,
                    Path(tmp) / f"{scenario}-{severity}",
                    scenario=[scenario],
                    batches=args.drifted,
                    images_per_batch=args.images,
                    drift_start=0,
                    severity=severity,
                    seed_salt="monitor",
                    start_date=start,
                )
                judged = judge_stream(baseline, clean + [(key, fr["good"]) for key, _, fr in drifted], params)
                fire = first_fire(judged, params)
                delay = None if fire is None or fire < args.clean else fire - args.clean + 1
                row = {
                    "scenario": scenario,
                    "severity": severity,
                    "windows": len(judged),
                    "drift_from": args.clean,
                    "fired_at": fire,
                    "delay": delay,
                    "early_alarm": fire is not None and fire < args.clean,
                    "goal_met": delay is not None and delay <= k + 1,
                    "drifted_windows": [w.drifted for w in judged],
                    "signals": sorted({name for w in judged[args.clean :] for name in drifted_names(w)}),
                    "advice": sorted({a for w in judged for a in w.advice}),
                }
                rows.append(row)
                print(
                    f"  {scenario} @ {severity}: fired at window {fire} (delay {delay}); {row['signals']}", flush=True
                )
    return rows


# ------------------------------------------------------------------ rollback


def rollback(params: Params, nodrift: list[tuple[str, float, dict[str, Frames]]]) -> list[dict[str, Any]]:
    """Promotions before each window: does the watch roll back the worse model, and never the better one?"""
    rules = params.monitor.watch
    span = rules.windows
    rows = []
    for new, previous, must in (("worse", "good", True), ("good", "worse", False)):
        per_window = [watch_window(fr[new], fr[previous], rules, key=key) for key, _, fr in nodrift]
        rolled: list[int | None] = []
        for p in range(len(per_window) - span + 1):
            when = None
            for m in range(1, span + 1):
                watch = decide_watch(
                    per_window[p : p + m],
                    rules,
                    new_version=new,
                    previous_version=previous,
                    promoted_at=NOW.isoformat(),
                    windows_since=m,
                )
                if watch.regressed:
                    when = m
                    break
            rolled.append(when)
        caught = [m for m in rolled if m is not None]
        numbers = [w.numbers for w in per_window]
        rows.append(
            {
                "promoted": new,
                "previous": previous,
                "should_roll_back": must,
                "promotions": len(rolled),
                "rolled_back": len(caught),
                "mean_windows_to_rollback": float(np.mean(caught)) if caught else None,
                "windows_regressed": sum(w.regressed for w in per_window),
                "windows": len(per_window),
                "goal_met": len(caught) == len(rolled) if must else not caught,
                "mean_confidence_drop": _mean(n.get("confidence_drop") for n in numbers),
                "mean_empty_rise": _mean(n.get("empty_rise") for n in numbers),
                "mean_detections_drop": _mean(n.get("detections_drop") for n in numbers),
            }
        )
    return rows


def _mean(values: Any) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def train_worse(params_files: list[str], epochs: int, folder: Path) -> Path:
    """Train a model from scratch for ``epochs`` epochs with the project's stages into ``folder``; its ONNX path."""
    folder.mkdir(parents=True, exist_ok=True)
    overlay = folder / "worse.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "base": {"paths": {"models": str(folder / "models"), "reports": str(folder / "reports")}},
                "registry": {
                    "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
                    "artifact_root": str(folder / "mlartifacts"),
                },
                "merge": {"enabled": False},
                "train": {"epochs": epochs, "weights": None},
                "export": {"targets": ["onnx"]},
            }
        )
    )
    args = [arg for path in [*params_files, str(overlay)] for arg in ("--params", path)]
    for stage in ("train", "export"):
        print(f"worse model: {stage} ({epochs} epochs) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", f"tasks.{stage}", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"},  # never the user's store
        )
    return folder / "models" / "export" / "model.onnx"


# ------------------------------------------------------------------ main


def isa() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "other"


def print_tables(report: dict[str, Any], k: int) -> None:
    c = report["compute"]
    print(
        f"\ncompute ({isa()}, {os.cpu_count()} CPUs): {c['rows']:,} box rows, {c['images']:,} images, "
        f"{c['signals']} signals"
    )
    print(f"  frames {c['frames_s']:.3f} s + compare {c['compare_s']:.3f} s = {c['total_s']:.3f} s  ({c['timed']})")
    if report.get("detection"):
        print(f"\ndetection (k = {k}; goal: delay <= {k + 1} windows)")
        print(f"{'scenario':<12}{'severity':>9}{'delay':>7}{'goal':>6}  signals")
        for row in report["detection"]:
            delay = "early" if row["early_alarm"] else ("-" if row["delay"] is None else str(row["delay"]))
            goal = "yes" if row["goal_met"] else "NO"
            print(f"{row['scenario']:<12}{row['severity']:>9.2f}{delay:>7}{goal:>6}  {', '.join(row['signals'])}")
        fa = report["false_alarms"]
        print(
            f"\nno drift: {fa['alarms']} alarm(s) over {fa['windows']} windows "
            f"({fa['windows_drifted']} window(s) drifted: {fa['signals'] or 'none'})"
        )
        near = sorted(fa["closest"].items(), key=lambda item: -item[1]["max_effect"])[:3]
        print(
            "  nearest to the rules: "
            + "; ".join(f"{name} effect {v['max_effect']:.3f} (min p {v['min_p']:.2g})" for name, v in near)
        )
    if report.get("rollback"):
        print(f"\nrollback (watch over {report['watch_windows']} windows after each promotion)")
        print(
            f"{'promoted':<10}{'previous':<10}{'rolled back':>13}{'mean windows':>14}{'windows regr.':>15}{'goal':>6}"
        )
        for row in report["rollback"]:
            mean = "-" if row["mean_windows_to_rollback"] is None else f"{row['mean_windows_to_rollback']:.2f}"
            print(
                f"{row['promoted']:<10}{row['previous']:<10}{row['rolled_back']:>6}/{row['promotions']:<6}{mean:>14}"
                f"{row['windows_regressed']:>8}/{row['windows']:<6}{'yes' if row['goal_met'] else 'NO':>6}"
            )


# long: argument parsing and the three parts in order; each part is a function above
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", action="append", help="params file (repeat for overlays; default params.yaml)")
    parser.add_argument("--model", type=Path, default=None, help="artifact (default: <models>/export/model.onnx)")
    parser.add_argument("--worse", type=Path, default=None, help="a worse artifact (default: train one, see above)")
    parser.add_argument("--worse-epochs", type=int, default=12)
    parser.add_argument("--images", type=int, default=150, help="images per window")
    parser.add_argument("--clean", type=int, default=3, help="source-domain windows before the drift")
    parser.add_argument("--drifted", type=int, default=4, help="drifted windows per stream")
    parser.add_argument("--severities", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--nodrift", type=int, default=20, help="windows of the no-drift stream")
    parser.add_argument("--rows", type=int, default=1_000_000, help="box rows of the compute-time window")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["compute", "detection"], default=None, help="skip the later parts")
    args = parser.parse_args()
    apply_env()
    params_files = args.params or ["params.yaml"]
    params = load_params(params_files)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "host": {"isa": isa(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "rules": params.monitor.drift.model_dump(),
        "trigger_k": params.monitor.trigger.confirm_windows,
        "watch_windows": params.monitor.watch.windows,
        "compute": time_compute(params, rows=args.rows, repeat=args.repeat),
    }
    if args.only != "compute":
        model = args.model or params.base.paths.models / "export" / "model.onnx"
        settings = predict_settings(params)
        detectors = {"good": load_detector(model, settings)}
        report["model"] = str(model)
        with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
            if args.only is None:
                worse = args.worse or train_worse(params_files, args.worse_epochs, Path(tmp) / "worse")
                detectors["worse"] = load_detector(worse, settings)
                report["worse"] = str(args.worse) if args.worse else f"trained {args.worse_epochs} epochs from scratch"
            print("baseline and no-drift stream ...", flush=True)
            baseline = baseline_frames(detectors["good"], params, version="good")
            nodrift = predict_stream(
                detectors,
                params,
                Path(tmp) / "nodrift",
                scenario=[],
                batches=max(args.nodrift, args.clean),
                images_per_batch=args.images,
                drift_start=None,
                severity=0.0,
                seed_salt="monitor",
            )
        judged = judge_stream(baseline, [(key, fr["good"]) for key, _, fr in nodrift], params)
        report["baseline_images"] = baseline.images.height
        report["false_alarms"] = {
            "windows": len(judged),
            "alarms": alarms(judged, params),
            "windows_drifted": sum(w.drifted for w in judged),
            "signals": sorted({name for w in judged for name in drifted_names(w)}),
            "closest": closest(judged),
        }
        report["detection"] = detection(params, detectors["good"], baseline, nodrift, args)
        if args.only is None:
            report["rollback"] = rollback(params, nodrift)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    print_tables(report, params.monitor.trigger.confirm_windows)
    out = params.base.paths.reports / "benchmarks" / "monitor.json"
    write_json_atomic(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
