"""Soak: N small continuous-learning cycles in a row on a tiny world; does anything grow that the data does not explain?

A tiny world (64 px, one production batch of ``--images`` images per cycle) is rendered under a temp folder and a
first champion bootstrapped (1 epoch). The batches are then held back and one *arrives* before each cycle. A cycle
is the real loop: ``continuous_learning`` (predict the new batch, sample ``--budget`` images, queue them in a real
Label Studio: the run ends waiting for labels) → the annotator simulator answers through Label Studio's API →
``continuous_learning`` continues (validate, merge, train 1 epoch at 64 px, evaluate, export ONNX only, gate,
register, promote or reject, report).

After each cycle it records the wall time, this process's open file descriptors, threads and RSS, and the bytes and
file counts of every store: the prediction log, labels, merged shards + holdouts, samples, MLflow (db + artifacts),
models, reports, Label Studio's data dir, the Prefect database, the detection cache, the rest of the root. Then it
judges each series:

* process series (fds, threads, RSS) must be flat after a warm-up: the Theil-Sen slope over the last 2/3 of the
  cycles must stay below a stated bound (:data:`FLAT_BOUNDS`);
* each store must grow by what the data explains: its growth per unit of its driver (log parts for the prediction
  log, bytes of the sampled images for labels and training data, entries for the detection cache — one per model
  and labeled set scored, and each cycle scores its candidate on every holdout set so far —, one cycle for the
  rest: each cycle adds one version, one report, one cycle's tasks and flow runs) must not rise from the early
  cycles to the late ones by more than :data:`TOLERANCE`. A store that rewrites everything it holds every cycle
  grows its per-cycle cost linearly and is called ``unexplained``.

Also checked: every cycle closed with promote/reject, MLflow versions == cycles + 1, Label Studio tasks == ledger
rows == sampled images, no prediction logged twice for one (model version, image).

    python benchmarks/soak.py [--cycles 30] [--images 12] [--budget 8] [--root DIR] [--out FILE]

Starts its own Label Studio (``make labelstudio-up`` on a free port, data dir under the root) and a temporary Prefect
API (Prefect's test harness). Prints the per-cycle table and the verdicts and writes
``reports/benchmarks/soak.json`` (or ``--out``). ``tests/reliability/test_soak.py`` runs :func:`run_soak` under pytest.
A cycle that fails ends the soak (what ran is still judged); its model, sets and reports are copied to
``failed-cycle-NNN`` beside the loop's root or under ``$VISIONLOOP_SOAK_KEEP``, and the root is kept.
DVC recording is skipped in a temp folder (``tasks.adapters.dvc.not_this_project``), so the DVC cache is not a store
here; ``benchmarks/README.md`` (DVC section) has its per-cycle growth from the demo.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.config import Params, load_params
from tasks.contracts import detection_cache
from tasks.env import PROJECT_ROOT, apply_env
from tasks.io import write_json_atomic

MiB = 1024 * 1024
WARMUP = 3  # cycles left out of every judgement: imports, first JIT/graph builds, SQLite page growth
FLAT_BOUNDS = {"fds": 0.5, "threads": 0.5, "rss_mib": 4.0}  # largest slope per cycle (count or MiB) that is "flat"
TOLERANCE = 0.5  # late/early growth per unit may be up to 1.5x: PNG sizes, SQLite pages and 1-epoch models vary
SLACK_BYTES = 64 * 1024  # a store may change this much in a cycle whose driver did not move
# the prediction log grows by parts, not rows: a part is one append (a batch by one model, or a shadow sample of a few
# rows) and at this size Parquet's per-file footer (~9 KB for 33 columns) outweighs the rows; a part holds at most a
# batch, so rows that grew fatter would still show as bytes per part rising
STORES_BY_DRIVER = {
    "predictions": "log_parts",
    "labels": "sampled_bytes",
    "training_data": "sampled_bytes",
    "detection_cache": "cache_entries",
}  # every other store: "cycles"
# the detection cache holds one file per (model, labeled set) scored: each cycle's candidate is scored on every holdout
# set so far, so its entries per cycle rise with the cycles (bounded by evaluate.cache_max_mb); a file must not grow


# ------------------------------------------------------------------ verdicts (pure)


@dataclass(frozen=True)
class Verdict:
    """How one series behaved: ``word`` is ``flat``/``leak`` (process series) or ``explained``/``unexplained``."""

    series: str
    ok: bool
    word: str
    value: float  # slope per cycle (flat) or late/early ratio of the growth per unit (stores)
    bound: float
    detail: str


def theil_sen(values: Sequence[float]) -> float:
    """Median of the pairwise slopes per step of ``values`` (robust to one odd cycle); 0.0 for fewer than 2."""
    y = np.asarray(values, dtype=np.float64)
    i, j = np.triu_indices(len(y), k=1)
    return float(np.median((y[j] - y[i]) / (j - i))) if len(i) else 0.0


def judge_flat(series: str, values: Sequence[float], *, bound: float, warmup: int = WARMUP) -> Verdict:
    """A process series (one value after each cycle) must be flat after the warm-up.

    The slope is taken over the last 2/3 of the cycles (at least 2, never the ``warmup`` first ones when more
    remain); ``leak`` when it exceeds ``bound`` per cycle.
    """
    n = len(values)
    start = min(max(warmup, n - (2 * n + 2) // 3), max(n - 2, 0))
    slope = theil_sen(values[start:])
    ok = slope <= bound
    detail = f"slope {slope:+.3g}/cycle over cycles {start + 1}..{n} (bound {bound:g})"
    return Verdict(series, ok, "flat" if ok else "leak", slope, bound, detail)


def judge_growth(
    series: str,
    sizes: Sequence[float],
    units: Sequence[float],
    *,
    tolerance: float = TOLERANCE,
    slack: float = SLACK_BYTES,
    warmup: int = WARMUP,
) -> Verdict:
    """A store's size must grow by what its driver explains.

    Args:
        series: the store's name.
        sizes: bytes before the first cycle, then after each cycle (N + 1 values).
        units: the driver (log rows, image bytes, cycles), cumulative, at the same points.
        tolerance: how much the growth per unit may rise from the early cycles to the late ones (0.5: 1.5x).
        slack: bytes a store may change in a cycle whose driver did not move.
        warmup: cycles left out (their per-unit cost is not judged, growth without driver is).

    Returns:
        ``unexplained`` when a cycle grew by more than ``slack`` without its driver moving, or when the median
        growth per unit of the late half of the judged cycles exceeds ``(1 + tolerance)`` times the early half's.
    """
    db, du = np.diff(np.asarray(sizes, dtype=np.float64)), np.diff(np.asarray(units, dtype=np.float64))
    idle = [k + 1 for k in range(len(db)) if du[k] <= 0 and db[k] > slack]
    judged = [k for k in range(min(warmup, max(len(db) - 2, 0)), len(db)) if du[k] > 0]
    per_unit = [db[k] / du[k] for k in judged]
    half = len(per_unit) // 2
    early = float(np.median(per_unit[:half])) if half else float("nan")
    late = float(np.median(per_unit[half:])) if per_unit else float("nan")
    ratio = late / early if half and early > 0 else (1.0 if half and late <= 0 else float("nan"))
    ok = not idle and (np.isnan(ratio) or ratio <= 1 + tolerance)
    detail = f"{early:.4g} -> {late:.4g} bytes/unit (late/early {ratio:.2f}, bound {1 + tolerance:g})"
    if np.isnan(ratio):
        detail = f"too few judged cycles ({len(per_unit)}) for a ratio"
    if idle:
        detail += f"; grew > {slack / 1024:g} KiB with no driver in cycles {idle}"
    return Verdict(series, bool(ok), "explained" if ok else "unexplained", ratio, 1 + tolerance, detail)


def judge(samples: Sequence[Mapping[str, Any]], *, warmup: int = WARMUP) -> list[Verdict]:
    """Every verdict of a soak: ``samples[0]`` is the state before the first cycle, then one per cycle."""
    after = samples[1:]
    verdicts = [
        judge_flat(name, [s["process"][name] for s in after], bound=bound, warmup=warmup)
        for name, bound in FLAT_BOUNDS.items()
    ]
    for store in samples[0]["stores"]:
        driver = STORES_BY_DRIVER.get(store, "cycles")
        sizes = [s["stores"][store]["bytes"] for s in samples]
        units = [s["drivers"][driver] for s in samples]
        verdicts.append(judge_growth(f"{store} ({driver})", sizes, units, warmup=warmup))
    return verdicts


# ------------------------------------------------------------------ measuring


def process_now() -> dict[str, float]:
    """This process's open file descriptors, threads and RSS (after a garbage collection)."""
    gc.collect()
    try:
        import psutil

        me = psutil.Process()
        return {"fds": me.num_fds(), "threads": me.num_threads(), "rss_mib": me.memory_info().rss / MiB}
    except ImportError:  # pragma: no cover, psutil is in requirements.lock; /proc keeps the script usable without it
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": int(status["Threads"]),
            "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        }


def breakdown(paths: Sequence[Path], *, depth: int = 3, top: int = 8) -> dict[str, int]:
    """The ``top`` largest sub-folders (paths cut to ``depth`` parts below each of ``paths``) in bytes."""
    sizes: dict[str, int] = {}
    for path in paths:
        for p in path.rglob("*") if path.is_dir() else []:
            if p.is_file() and not p.is_symlink():
                key = str(Path(path.name, *p.relative_to(path).parts[:depth]))
                sizes[key] = sizes.get(key, 0) + p.stat().st_size
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:top])


def expected_log_pairs(rows: Sequence[Mapping[str, Any]], images: int) -> int:
    """(model version, image) pairs the log should hold: each version that was champion at a cycle's start predicted
    every batch arrived by the last such cycle (``images`` per batch, one batch per cycle), once."""
    arrived: dict[str, int] = {}
    for k, row in enumerate(rows, start=1):
        arrived[row["champion_before"]] = k * images
    return sum(arrived.values())


def folder_size(paths: Sequence[Path], *, exclude: Sequence[Path] = ()) -> dict[str, int]:
    """Bytes and file count of files and folders (missing ones count 0; links are not followed; nothing inside
    ``exclude``)."""
    total = files = 0
    skip = {p.resolve() for p in exclude}
    for path in paths:
        found = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        for p in found:
            if skip and (p.resolve() in skip or _inside(p.resolve(), skip)):
                continue
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
                files += 1
    return {"bytes": total, "files": files}


def prefect_db() -> list[Path]:
    """The Prefect API's SQLite database files (with ``-wal``/``-shm``), when the API is a local SQLite one."""
    from prefect.settings import get_current_settings

    secret = get_current_settings().server.database.connection_url
    url = secret.get_secret_value() if secret is not None else ""
    if "sqlite" not in url or ":///" not in url:
        return []
    db = Path(url.split(":///", 1)[1])
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def store_paths(params: Params, root: Path, label_studio_data: Path | None) -> dict[str, list[Path]]:
    """Each store the loop writes, as the files/folders it lives in."""
    paths = params.base.paths
    mlflow_db = Path(params.registry.tracking_uri.removeprefix("sqlite:///"))
    stores = {
        "predictions": [paths.predictions],
        "labels": [paths.labels],
        "training_data": [paths.merged, paths.holdouts],  # the holdout split of 8 images is too lumpy to judge alone
        "samples": [paths.samples],
        "mlflow": [mlflow_db, Path(params.registry.artifact_root)],
        "models": [paths.models],
        "reports": [paths.reports],
        "label_studio": [label_studio_data] if label_studio_data else [],
        "prefect_db": prefect_db(),
        "detection_cache": [detection_cache.cache_folder(paths.models)],
    }
    return stores


def _inside(path: Path, folders: set[Path]) -> bool:
    return any(f in path.parents for f in folders)


def drivers(params: Params, cycles: int) -> dict[str, float]:
    """What the data says the stores should grow with (cumulative): prediction-log rows and parts, sampled image bytes,
    detection-cache entries (one per model and set scored), cycles."""
    import pyarrow.parquet as pq

    from tasks.contracts.label_tasks import image_path

    parts = sorted(params.base.paths.predictions.rglob("*.parquet"))
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    sampled = 0
    for manifest in params.base.paths.samples.glob("*/manifest.parquet"):
        for uri in pq.read_table(manifest, columns=["image_uri"]).column("image_uri").to_pylist():
            sampled += image_path(uri).stat().st_size
    entries = len(list(detection_cache.cache_folder(params.base.paths.models).glob(f"*{detection_cache.SUFFIX}")))
    return {
        "log_rows": rows,
        "log_parts": len(parts),
        "sampled_bytes": sampled,
        "cache_entries": entries,
        "cycles": cycles,
    }


def sample_now(params: Params, root: Path, label_studio_data: Path | None, cycles: int) -> dict[str, Any]:
    """Process figures, store sizes and drivers at this point."""
    stores = store_paths(params, root, label_studio_data)
    named = [p for paths in stores.values() for p in paths]
    other = folder_size([root], exclude=[*named, root / "incoming", params.base.paths.world])
    return {
        "process": process_now(),
        "stores": {**{name: folder_size(paths) for name, paths in stores.items()}, "other": other},
        "drivers": drivers(params, cycles),
    }


# ------------------------------------------------------------------ the loop


def loop_settings(data: dict[str, Any], *, title: str, budget: int, document_root: Path) -> None:
    """Label and sample settings (in place) for a loop whose labels the simulator gives at once: a Label Studio
    project of its own, half the budget labeled is enough, no waiting, every sampled image new (no daily cap, no
    perceptual-hash dedup)."""
    data["label"].update(project_title=title, document_root=str(document_root))
    data["label"].update(min_labeled=max(1, budget // 2), retries=1, retry_delay_s=0.5, wait_timeout_s=0, poll_s=1)
    data["sample"].update(budget=budget, max_per_day=None, phash_distance=None)


def soak_params(root: Path, *, cycles: int, images: int, budget: int, document_root: Path) -> Path:
    """A tiny world with one production batch per cycle, 1-epoch 64 px training, ONNX export only."""
    from tests.conftest import tiny_params_dict

    data = tiny_params_dict(root, predict={"conf": 0.001, "max_det": 5})
    loop_settings(data, title=f"visionloop-soak-{root.name}", budget=budget, document_root=document_root)
    data["world"]["production"].update(batches=cycles, images_per_batch=images)
    data["merge"].update(holdout_fraction=0.25)
    data["cycle"].update(epochs=1)
    data["export"].update(targets=["onnx"])
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def hold_back_batches(params: Params, incoming: Path) -> list[Path]:
    """Move every production batch out of the production folder; they arrive one per cycle."""
    incoming.mkdir(parents=True, exist_ok=True)
    held = []
    for batch in sorted(p for p in params.base.paths.production.iterdir() if p.is_dir()):
        held.append(incoming / batch.name)
        batch.rename(held[-1])
    return held


def run_cycle(params_file: Path, params: Params, batch: Path, champion: str) -> dict[str, Any]:
    """One cycle: the batch arrives, the loop runs until it waits for labels, the annotator answers, the loop ends."""
    from flows.continuous_learning import continuous_learning
    from tasks import cycle
    from tasks.contracts.sample_manifest import manifest_path
    from tasks.sim import annotator

    start = time.perf_counter()
    batch.rename(params.base.paths.production / batch.name)
    first = continuous_learning(params_path=str(params_file), return_state=True)
    waited = time.perf_counter()
    answered = annotator.run(params)
    annotated = time.perf_counter()
    summary = continuous_learning(params_path=str(params_file))
    end = time.perf_counter()
    name = summary["cycle"] if isinstance(summary, dict) else None
    state = cycle.read_state(params, name) if name else None
    return {
        "batch": batch.name,
        "cycle": name,
        "champion_before": champion,
        "sampled": pq_rows(manifest_path(params.base.paths.samples, name)) if name else 0,
        "first_run": getattr(first, "name", str(first)),
        "answered": answered.answered,
        "outcome": summary.get("outcome") if isinstance(summary, dict) else str(summary),
        "closed": bool(state and state.status == "closed" and state.outcome in {"promote", "reject"}),
        "wall_s": end - start,
        "wait_run_s": waited - start,
        "annotate_s": annotated - waited,
        "train_run_s": end - annotated,
    }


def pq_rows(path: Path) -> int:
    """Rows of a Parquet file (0 when missing)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows if path.is_file() else 0


def keep_evidence(params: Params, cycle: int) -> Path:
    """Copy what a failed cycle worked on (params, export, golden set, holdouts, reports) beside the root."""
    paths = params.base.paths
    keep = os.environ.get("VISIONLOOP_SOAK_KEEP")  # pytest's temp folders are pruned by other sessions' runs
    target = (Path(keep) if keep else paths.reports.parent) / f"failed-cycle-{cycle:03d}"
    for source in (paths.models / "export", paths.golden, paths.holdouts, paths.reports):
        if source.is_dir():
            shutil.copytree(source, target / source.name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pt"))
    for params_file in paths.reports.parent.glob("params*.yaml"):
        shutil.copy2(params_file, target / params_file.name)
    return target


def counts(params: Params) -> dict[str, int]:
    """MLflow versions, Label Studio tasks, ledger rows, sampled images, (model version, image) pairs in the log and
    how many of them sit in more than one part file (logged twice)."""
    import pyarrow.parquet as pq

    from tasks.adapters import labelstudio
    from tasks.adapters import mlflow as registry
    from tasks.contracts.ledger import ledger_path, read_ledger

    ledger = read_ledger(ledger_path(params))
    project_ids = {r["project_id"] for r in ledger.values() if r["project_id"] is not None}
    sdk = labelstudio.connect(params.label)
    tasks = sum(len(list(sdk.tasks.list(project=pid, fields="task_only"))) for pid in project_ids)
    sampled = sum(pq.read_metadata(p).num_rows for p in params.base.paths.samples.glob("*/manifest.parquet"))
    per_part = []  # (model version, image) pairs of each non-shadow part file of the log
    for part in params.base.paths.predictions.rglob("*.parquet"):
        table = pq.read_table(part, columns=["model_version", "image_sha256", "shadow"]).to_pylist()
        per_part.append({(r["model_version"], r["image_sha256"]) for r in table if not r["shadow"]})
    pairs = set().union(*per_part)
    return {
        "mlflow_versions": len(registry.all_versions(params)),
        "label_studio_tasks": tasks,
        "label_studio_projects": len(project_ids),
        "ledger_rows": len(ledger),
        "ledger_labeled": sum(1 for r in ledger.values() if r["status"] == "labeled"),
        "sampled": sampled,
        "log_pairs": len(pairs),
        "log_pairs_in_two_parts": sum(len(p) for p in per_part) - len(pairs),
    }


def run_soak(
    root: Path,
    *,
    cycles: int,
    images: int = 12,
    budget: int = 8,
    document_root: Path | None = None,
    label_studio_data: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Bootstrap a tiny world under ``root`` and run ``cycles`` cycles, sampling after each.

    Needs a Label Studio (``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` in the environment, its local-files document
    root a parent of ``root``) and a Prefect API (a server or the test harness).

    Returns:
        The report: ``cycles`` (one row per cycle), ``samples`` (before the first cycle, then after each),
        ``counts`` at the end, ``verdicts``, wall times.
    """
    from flows.bootstrap import bootstrap
    from tasks.adapters import mlflow as registry

    started = time.perf_counter()
    params_file = soak_params(root, cycles=cycles, images=images, budget=budget, document_root=document_root or root)
    params = load_params(params_file)
    bootstrap(params_path=str(params_file))
    held = hold_back_batches(params, root / "incoming")
    bootstrap_s = time.perf_counter() - started
    samples = [sample_now(params, root, label_studio_data, 0)]
    rows = []
    failure: dict[str, Any] | None = None
    for k, batch in enumerate(held, start=1):
        champion = registry.get_alias(params, "champion").version
        try:
            rows.append(run_cycle(params_file, params, batch, champion))
        except Exception as exc:  # a cycle that fails ends the soak; what ran so far is still judged and reported
            error = f"{type(exc).__name__}: {exc}"
            failure = {"cycle": k, "champion_before": champion, "error": error, "evidence": ""}
            failure["evidence"] = str(keep_evidence(params, k))
            progress(f"cycle {k}/{cycles} failed: {failure['error']} (evidence in {failure['evidence']})")
            break
        samples.append(sample_now(params, root, label_studio_data, k))
        p = samples[-1]["process"]
        progress(
            f"cycle {k}/{cycles}: {rows[-1]['outcome']} in {rows[-1]['wall_s']:.0f} s; "
            f"fds {p['fds']}, threads {p['threads']}, RSS {p['rss_mib']:.0f} MiB"
        )
    verdicts = judge(samples, warmup=min(WARMUP, max(cycles // 3, 1)))
    stores = store_paths(params, root, label_studio_data)
    return {
        "failure": failure,
        "cycles": rows,
        "samples": samples,
        "counts": {
            **counts(params),
            "expected_log_pairs": expected_log_pairs(rows + ([failure] if failure else []), images),
        },
        "largest": {name: breakdown(paths) for name, paths in stores.items() if name in ("mlflow", "models")},
        "verdicts": [asdict(v) for v in verdicts],
        "bootstrap_s": bootstrap_s,
        "wall_s": time.perf_counter() - started,
        "settings": {"cycles": cycles, "images_per_batch": images, "budget": budget, "imgsz": params.base.imgsz},
        "bounds": {"flat": FLAT_BOUNDS, "tolerance": TOLERANCE, "slack_bytes": SLACK_BYTES, "warmup": WARMUP},
    }


# ------------------------------------------------------------------ the script


def print_tables(report: Mapping[str, Any]) -> None:
    """The per-cycle table (process figures, store sizes in KiB) and the verdicts."""
    stores = list(report["samples"][0]["stores"])
    head = f"{'cycle':>5} {'outcome':>8} {'wall s':>7} {'fds':>4} {'thr':>4} {'RSS MiB':>8} " + " ".join(
        f"{s[:12]:>12}" for s in stores
    )
    print(head + "\n" + "-" * len(head))
    for k, sample in enumerate(report["samples"]):
        row = report["cycles"][k - 1] if k else {"outcome": "start", "wall_s": report["bootstrap_s"]}
        p = sample["process"]
        sizes = " ".join(f"{sample['stores'][s]['bytes'] / 1024:>12.0f}" for s in stores)
        process = f"{p['fds']:>4} {p['threads']:>4} {p['rss_mib']:>8.1f}"
        print(f"{k:>5} {row['outcome']:>8} {row['wall_s']:>7.1f} {process} {sizes}")
    print(
        "\nstore sizes in KiB; files at the end: "
        + ", ".join(f"{s} {report['samples'][-1]['stores'][s]['files']}" for s in stores)
    )
    print(f"counts: {report['counts']}")
    for store, parts in report["largest"].items():
        print(f"largest in {store} (MiB): " + ", ".join(f"{k} {v / MiB:.1f}" for k, v in parts.items()))
    print("\nverdicts")
    for v in report["verdicts"]:
        print(f"  {v['series']:<34} {v['word']:<12} {v['detail']}")
    print(f"\nwall {report['wall_s']:.0f} s (bootstrap {report['bootstrap_s']:.0f} s)")
    if report["failure"]:
        print(f"FAILED in cycle {report['failure']['cycle']}: {report['failure']['error']}")
        print(f"evidence: {report['failure']['evidence']}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def label_studio(root: Path) -> Iterator[Path]:
    """A Label Studio of our own (``make labelstudio-up``) with its data dir under ``root``; yields the data dir."""
    port, data, token = _free_port(), root / "label-studio", secrets.token_hex(20)
    settings = [
        f"LABEL_STUDIO_PORT={port}",
        f"LABEL_STUDIO_DATA={data}",
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}",
        f"LABEL_STUDIO_API_KEY={token}",
        "LABEL_STUDIO_START_TIMEOUT=240",
    ]
    make = ["make", "--no-print-directory"]
    up = subprocess.run([*make, "labelstudio-up", *settings], cwd=PROJECT_ROOT, capture_output=True, text=True)
    try:
        if up.returncode != 0:
            raise SystemExit(f"make labelstudio-up failed:\n{up.stdout}\n{up.stderr}")
        os.environ.update(
            LABEL_STUDIO_URL=f"http://127.0.0.1:{port}",
            LABEL_STUDIO_API_KEY=token,
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(root),
        )
        yield data
    finally:
        subprocess.run([*make, "labelstudio-down", f"LABEL_STUDIO_DATA={data}"], cwd=PROJECT_ROOT, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--images", type=int, default=12, help="images per production batch (one batch per cycle)")
    parser.add_argument("--budget", type=int, default=8, help="images sampled and labeled per cycle")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "benchmarks" / "soak.json")
    args = parser.parse_args()
    apply_env()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    root = (args.root or Path(tempfile.mkdtemp(prefix="visionloop-soak-"))).resolve()
    os.environ["VISIONLOOP_DVC_REMOTE"] = str(root / "dvc-remote")  # never the user's shared remote
    report: dict[str, Any] = {}
    try:
        with (
            label_studio(root) as ls_data,
            prefect_test_harness(),
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        ):
            report = run_soak(
                root / "loop",
                cycles=args.cycles,
                images=args.images,
                budget=args.budget,
                document_root=root,
                label_studio_data=ls_data,
            )
    finally:
        if args.root is None and report and not report["failure"]:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    report["host"] = {"cpus": os.cpu_count(), "threads_at_end": threading.active_count()}
    print_tables(report)
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
