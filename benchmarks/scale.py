"""Predict at scale from S3: the single-process path vs 1 and 2 Dask workers over the same production images.

The images are production images rendered by the world stage at the project's image size (``world.image_size``,
``base.imgsz``): ``--distinct`` of them, rendered once into a cache folder with a tiny world (the train, val and
golden sets a 1-epoch champion is trained on, exported with the project's CPU targets, registered in the cache's
MLflow store and aliased ``champion``). ``--cache DIR`` keeps that folder between runs (default:
``~/.cache/visionloop/bench-scale``; ``--fresh`` renders and trains again). Image ``i`` of the ``--images`` put
on S3 is distinct image ``i mod distinct`` with a PNG ``tEXt`` chunk naming ``i``
(``dvc_scale.png_variant``: same pixels, its own bytes and content hash), in batches of
``--batch-images`` under ``s3://<bucket>/prod/<batch>/images/`` on a moto_server (tests/s3_server.py) started for
the run; they are uploaded once per server start.

Runs, each predicting every batch into a prediction log of its own (local: the log on S3 is measured elsewhere):

- ``single t=2`` / ``single t=1``: the single-process path (:func:`tasks.predict.run`'s plan → shards → combine,
  one shard, the model opened once), inference sessions with 2 / 1 intra-op threads;
- ``dask w=1`` / ``dask w=2``: the fanned-out path of ``flows/fanout.py`` (plan, shards mapped as Prefect tasks on a
  prefect-dask LocalCluster of 1 / 2 worker processes × 1 task thread, 1 inference thread each, combine) with
  ``--shards-per-worker`` shards per worker, inside a flow on Prefect's temporary test server.

Per run: images/s, per core (cores = inference threads × processes), and where the time went, from the stage's own
counters (:class:`tasks.contracts.predict_plan.ShardResult`): the plan (S3 listing of the batches and their images +
opening the model; the listing alone is timed once beside it), reads (S3 GETs + PNG decode, 8 read threads per
shard), inference, the log write (combine), and for Dask the cluster start (timed on its own) and scheduling
(= the map's wall − the start − the shards' own seconds / workers). moto_server serves every GET from the same two
cores: its CPU seconds per run are recorded. Beyond 2 workers the throughput is a MODEL, not a measurement: the
per-image and per-shard costs of the 1-worker run, the serial plan and combine, workers × shards.

    python benchmarks/scale.py [--images 100000] [--distinct 2000] [--batch-images 1000] [--quick] [--cache DIR]

Prints a table and writes ``reports/benchmarks/scale.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dvc_scale import host, moto_pid, png_variant  # beside this script (sys.path[0] when run)

from tasks.adapters import image_store, s3
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params, load_params
from tasks.contracts.predict_plan import ShardResult
from tasks.env import apply_env
from tasks.io import write_json_atomic

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path.home() / ".cache" / "visionloop" / "bench-scale"
GOAL = 0.10  # issue 14: the sharded run within 10 % of the single-process per-core throughput
EXPORT_TARGETS = ["onnx", "openvino", "openvino_int8"]  # the project's CPU targets (no TensorRT; onnx_int8 refused)
PREFIX = "prod"
RUNS = [("single", 2, 1), ("single", 1, 1), ("dask", 1, 1), ("dask", 1, 2)]  # (path, threads, processes)
MODEL_WORKERS = (1, 2, 4, 8, 16)


# ------------------------------------------------------------------ the cached world and champion


def cache_params(cache: Path, project: Params, *, distinct: int) -> dict[str, Any]:
    """A tiny world at the project's image size: ``distinct`` production images in 2 batches, 1-epoch training."""
    from tests.conftest import tiny_params_dict  # a test helper: the tiny world every soak and test uses

    data = tiny_params_dict(cache)
    data["base"]["imgsz"] = project.base.imgsz
    data["world"]["image_size"] = list(project.world.image_size)
    data["world"]["production"].update(batches=2, images_per_batch=-(-distinct // 2))
    data["export"]["targets"] = EXPORT_TARGETS
    data["predict"]["shadow"] = {"alias": "challenger", "share": 0.0}
    return data


def prepare_cache(cache: Path, project: Params, *, distinct: int, fresh: bool) -> dict[str, Any]:
    """Render the world and register a 1-epoch champion under ``cache`` (or find them there); what it holds."""
    from tasks import evaluate, export, merge, registry, train, world

    cache = cache.expanduser().resolve()  # the cached params hold its paths: absolute, so any working dir reuses it
    wanted = {"imgsz": project.base.imgsz, "image_size": list(project.world.image_size), "distinct": distinct}
    ready = cache / "ready.json"
    if not fresh and ready.is_file():
        found = json.loads(ready.read_text())
        absolute = Path(str(found.get("params", {}).get("base", {}).get("paths", {}).get("world", ""))).is_absolute()
        if {k: found.get(k) for k in wanted} == wanted and absolute:
            print(f"cache {cache}: reused (champion v{found['version']}, {found['target']})", flush=True)
            return dict(found)
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    data = cache_params(cache, project, distinct=distinct)
    (cache / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    params = Params.model_validate(data)
    started = time.perf_counter()
    world.run(params)
    render_s = time.perf_counter() - started
    merge.run(params, cycle=None)
    train.run(params)
    evaluate.run(params)
    exported = export.run(params)
    version = registry.run(params)
    mlflow_adapter.set_alias(params, "champion", version.version)
    info = wanted | {
        "params": data,
        "version": version.version,
        "target": (exported.selected or {}).get("target"),
        "render_s": round(render_s, 1),
        "bootstrap_s": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(ready, info)
    print(f"cache {cache}: world + champion v{version.version} ({info['target']}) in {info['bootstrap_s']} s")
    return info


def production_pngs(data: dict[str, Any]) -> list[bytes]:
    """The cached world's production images (PNG bytes), batch by batch, name order."""
    root = Path(data["base"]["paths"]["production"])
    return [p.read_bytes() for p in sorted(root.glob("*/images/*.png"))]


# ------------------------------------------------------------------ S3


@contextmanager
def s3_stack(work: Path) -> Iterator[tuple[str, int | None]]:
    """A moto_server with a bucket; this process's (and its children's) client environment points at it."""
    s3_server = importlib.import_module("tests.s3_server").s3_server  # a test fixture: not type-checked
    with s3_server(work / "moto") as server:
        saved = dict(os.environ)
        os.environ.update(server.env)
        try:
            bucket = importlib.import_module("tests.s3_server").unique_bucket("scale")
            s3.ensure_bucket(s3.connect(), bucket)
            yield f"s3://{bucket}/{PREFIX}", moto_pid(server.endpoint_url)
        finally:
            os.environ.clear()
            os.environ.update(saved)


def batch_names(images: int, batch_images: int) -> list[str]:
    return [f"2026-12-01-s{k:04d}" for k in range(-(-images // batch_images))]


def upload(location: str, pngs: Sequence[bytes], *, images: int, batch_images: int) -> float:
    """Put ``images`` production images under ``location`` (8 PUTs in flight); the seconds it took."""
    where = s3.parse_uri(location)
    conn = image_store.connection()
    names = batch_names(images, batch_images)

    def put(i: int) -> None:
        png = pngs[i % len(pngs)] if i < len(pngs) else png_variant(pngs[i % len(pngs)], i)
        s3.put_bytes(conn, where.bucket, where.key(f"{names[i // batch_images]}/images/img_{i:07d}.png"), png)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, range(images)))
    return time.perf_counter() - started


def listing_seconds(location: str) -> tuple[float, int]:
    """One listing as the plan does it: the batches, then each batch's images; (seconds, images found)."""
    started = time.perf_counter()
    found = sum(len(image_store.list_batch_images(location, b)) for b in image_store.list_batches(location))
    return time.perf_counter() - started, found


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine spent busy so far (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def decode_ms(pngs: Sequence[bytes], n: int = 200) -> float:
    """Milliseconds to decode one image alone (the read step's decode, hash and statistics), mean of ``n``."""
    from tasks.targets.chunk_inference import decode_image

    started = time.perf_counter()
    for i in range(n):
        decode_image(pngs[i % len(pngs)], path="x.png", image_id="x", uri="x.png", source="default")
    return 1000 * (time.perf_counter() - started) / n


# ------------------------------------------------------------------ the runs


def run_params(cached: dict[str, Any], location: str, out: Path, *, threads: int, workers: int, shards: int) -> Params:
    data = json.loads(json.dumps(cached["params"]))
    data["base"]["paths"].update(predictions=str(out / "predictions"), reports=str(out / "reports"))
    data["base"]["storage"] = {"production": location, "predictions": None}
    data["base"]["threads"] = threads
    data["base"]["dask"] = {"address": None, "workers": workers, "threads": threads, "timeout_s": 10}
    data["predict"]["shards"] = shards
    return Params.model_validate(data)


def single_process(params: Params) -> tuple[dict[str, float], list[ShardResult], Any]:
    """:func:`tasks.predict.run`, step by step with a timer on each (the same calls in the same order)."""
    from tasks import predict

    started = time.perf_counter()
    planned, detector, shadow = predict._plan(params, batches=None, alias=None)  # what run() calls: sessions kept
    plan_s = time.perf_counter() - started
    results = [predict.run_shard(params, planned, s, opened=(detector, shadow)) for s in planned.shards]
    map_s = time.perf_counter() - started - plan_s
    report = predict.combine(params, planned, results)
    combine_s = time.perf_counter() - started - plan_s - map_s
    return {"plan_s": plan_s, "map_s": map_s, "combine_s": combine_s, "start_s": 0.0}, results, report


def fanned_out(params: Params) -> tuple[dict[str, float], list[ShardResult], Any]:
    """``flows/fanout.predict``'s three steps inside a flow, timed; the cluster start timed on its own first."""
    from prefect import flow

    from flows import fanout, stages

    @flow(name="bench-scale")
    def fan(params: Params) -> tuple[dict[str, float], list[ShardResult], Any]:
        started = time.perf_counter()
        with fanout.started_runner(params):
            pass
        start_s = time.perf_counter() - started
        started = time.perf_counter()
        plan = stages.predict_plan(params, threads=params.base.dask.threads)
        plan_s = time.perf_counter() - started
        results = fanout.map_shards(params, stages.predict_shard, plan, plan.shards)
        map_s = time.perf_counter() - started - plan_s
        report = stages.predict_combine(params, plan, results)
        combine_s = time.perf_counter() - started - plan_s - map_s
        return {"plan_s": plan_s, "map_s": map_s, "combine_s": combine_s, "start_s": start_s}, results, report

    return fan(params)


def measure(
    kind: str, params: Params, *, processes: int, moto: int | None, listing_s: float, decode_ms_: float
) -> dict[str, Any]:
    """One run; its row (images/s, per core, where the time went)."""
    before = (cpu_seconds(moto), machine_busy_seconds(), time.process_time())
    started = time.perf_counter()
    steps, results, report = single_process(params) if kind == "single" else fanned_out(params)
    wall = time.perf_counter() - started - steps["start_s"]  # the start is timed apart, outside the run's wall
    after = (cpu_seconds(moto), machine_busy_seconds(), time.process_time())
    images = sum(b.images for b in report.batches)
    errors = sum(sum(b.errors.values()) for b in report.batches)
    chunks = [c for r in results for c in r.chunks]
    open_s = sum(r.open_s for r in results)
    shard_s = sum(r.wall_s for r in results)
    read_s = sum(c.read_s for c in chunks)
    infer_s = sum(c.infer_s for c in chunks)
    cores = params.base.dask.threads * processes if kind == "dask" else params.base.threads
    parallel = processes if kind == "dask" else 1
    # the shards' own seconds spread over the workers; the rest of the map is the cluster's start, the workers'
    # imports, Prefect's task runs, moving the results back and the last shard's tail
    sched_s = max(steps["map_s"] - shard_s / parallel, 0.0)
    name = f"{kind} {'w' if kind == 'dask' else 't'}={processes if kind == 'dask' else params.base.threads}"
    row = {
        "run": name,
        "kind": kind,
        "processes": processes,
        "threads": params.base.threads if kind == "single" else params.base.dask.threads,
        "cores": cores,
        "shards": len(results),
        "images": images,
        "errors": errors,
        "wall_s": round(wall, 2),
        "images_per_s": round(images / wall, 1),
        "per_core": round(images / wall / cores, 1),
        "shard_images_per_s": round(images / (shard_s / parallel), 1),
        "seconds": {
            "plan": round(steps["plan_s"], 2),
            "listing_alone": round(listing_s, 2),
            "model_open": round(open_s / parallel, 2),
            "read": round(read_s / parallel, 2),
            "decode_alone_est": round(decode_ms_ * images / 1000 / parallel, 2),
            "inference": round(infer_s / parallel, 2),
            "log_write": round(steps["combine_s"], 2),
            "cluster_start": round(steps["start_s"], 2),
            "scheduling": round(sched_s, 2),
        },
        "cpu_s": {
            "moto": round(after[0] - before[0], 1),
            "machine": round(after[1] - before[1], 1),
            "this_process": round(after[2] - before[2], 1),
        },
        "load": os.getloadavg(),
    }
    seconds = row["seconds"]
    row["share"] = {  # of the wall; the shards' seconds per worker
        "s3_io": round((seconds["listing_alone"] + seconds["read"]) / wall, 3),  # reads include the decode
        "inference": round(seconds["inference"] / wall, 3),
        "model_open": round((max(steps["plan_s"] - listing_s, 0.0) + seconds["model_open"]) / wall, 3),
        "scheduling": round(sched_s / wall, 3),
        "log_write": round(seconds["log_write"] / wall, 3),
    }
    return row


# ------------------------------------------------------------------ the model


def scaling_model(
    runs: Sequence[dict[str, Any]], single_per_core: float, *, shards_per_worker: int, images: int | None = None
) -> list[dict[str, Any]]:
    """Images/s for W workers, W × ``shards_per_worker`` shards, ``images`` images: a MODEL, not a measurement.

    T(W) = n × serial (the plan's listing and the combine's log write, per image as measured: they grow with the
    images and run in one process) + fixed (the map's overhead beyond its shards: cluster start, worker imports,
    Prefect's task runs; the most measured with 1 or 2 workers, taken as constant: W workers start in parallel on
    W cores, and it did not grow from 400 to 10 000 images here) + n × the per-image work of one worker core (reads
    + inference, from the 1-worker run) / W + shards per worker × the mean model opening per shard. S3 is assumed
    to keep up (real S3 does; moto shares the 2 cores here). ``images``: default the measured run's.
    """
    one = next(r for r in runs if r["run"] == "dask w=1")
    s = one["seconds"]
    n = images or one["images"]
    serial = (s["plan"] + s["log_write"]) / one["images"]
    work = (s["read"] + s["inference"]) / one["images"]  # one worker core, per image (opening: per shard, below)
    per_shard = s["model_open"] / one["shards"]
    fixed = max(r["seconds"]["scheduling"] for r in runs if r["kind"] == "dask")
    rows = []
    for w in MODEL_WORKERS:
        t = n * serial + fixed + n * work / w + shards_per_worker * per_shard
        rows.append(
            {
                "workers": w,
                "images": n,
                "shards": w * shards_per_worker,
                "images_per_s": round(n / t, 1),
                "per_core": round(n / t / w, 1),
                "vs_single_per_core": round(n / t / w / single_per_core, 3),
            }
        )
    return rows


# ------------------------------------------------------------------ the script


def run(
    project: Params,
    *,
    images: int,
    distinct: int,
    batch_images: int,
    shards_per_worker: int,
    cache: Path,
    fresh: bool = False,
    root: Path | None = None,
    runs: Sequence[tuple[str, int, int]] = RUNS,
    model_images: int = 100_000,
) -> dict[str, Any]:
    """The whole benchmark; returns the report (see the module docstring)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    apply_env()
    load_before = os.getloadavg()
    wall = time.perf_counter()
    cached = prepare_cache(cache, project, distinct=distinct, fresh=fresh)
    pngs = production_pngs(cached["params"])
    one_decode = decode_ms(pngs)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-", dir=root) as tmp,
        s3_stack(Path(tmp)) as (location, moto),
        prefect_test_harness(),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        upload_s = upload(location, pngs, images=images, batch_images=batch_images)
        print(f"uploaded {images} images in {upload_s:.0f} s ({images / upload_s:.0f}/s)", flush=True)
        listing_s, listed = listing_seconds(location)
        if listed != images:
            raise RuntimeError(f"{location}: listed {listed} images, uploaded {images}")
        print(HEADER, flush=True)
        for kind, threads, processes in runs:
            out = Path(tmp) / f"{kind}-{threads}-{processes}"
            shards = processes * shards_per_worker if kind == "dask" else 1
            params = run_params(cached, location, out, threads=threads, workers=processes, shards=shards)
            row = measure(kind, params, processes=processes, moto=moto, listing_s=listing_s, decode_ms_=one_decode)
            if row["images"] + row["errors"] != images:
                raise RuntimeError(f"{row['run']}: {row['images']} images logged of {images}")
            rows.append(row)
            print_row(row)
            shutil.rmtree(out)
    report: dict[str, Any] = {
        "rows": rows,
        "images": images,
        "distinct": len(pngs),
        "batches": len(batch_names(images, batch_images)),
        "batch_images": batch_images,
        "image_size": cached["image_size"],
        "imgsz": cached["imgsz"],
        "target": cached["target"],
        "predict_batch_size": cached["params"]["predict"]["batch_size"],
        "shards_per_worker": shards_per_worker,
        "upload_s": round(upload_s, 1),
        "listing_s": round(listing_s, 2),
        "decode_ms_alone": round(one_decode, 3),
        "prediction_log": "local folder (base.storage.predictions null)",
        "goal": f"per core, dask w=1 within {GOAL:.0%} of single t=1 and dask w=2 of single t=2 (the same cores)",
        "wall_s": round(time.perf_counter() - wall, 1),
        "host": host() | {"load_before": load_before, "load_after": os.getloadavg()},
    }
    by = {row["run"]: row for row in rows}
    pairs = [("dask w=1", "single t=1"), ("dask w=2", "single t=2"), ("dask w=2", "single t=1")]
    report["per_core_ratio"] = {
        f"{a} / {b}": round(by[a]["per_core"] / by[b]["per_core"], 3) for a, b in pairs if a in by and b in by
    }
    judged = [report["per_core_ratio"].get(f"{a} / {b}") for a, b in pairs[:2]]
    if all(r is not None for r in judged):
        report["goal_met"] = all(r >= 1 - GOAL for r in judged if r is not None)
    if "dask w=1" in by and "single t=1" in by:
        report["model"] = scaling_model(
            rows, by["single t=1"]["per_core"], shards_per_worker=shards_per_worker, images=model_images
        )
    return report


HEADER = (
    f"{'run':<12}{'cores':>6}{'shards':>7}{'images':>8}{'wall s':>8}{'img/s':>8}{'/core':>8}"
    f"{'plan':>7}{'read':>7}{'infer':>7}{'log':>6}{'sched':>7}{'moto cpu':>9}"
)


def print_row(row: dict[str, Any]) -> None:
    s = row["seconds"]
    print(
        f"{row['run']:<12}{row['cores']:>6}{row['shards']:>7}{row['images']:>8}{row['wall_s']:>8.1f}"
        f"{row['images_per_s']:>8.1f}{row['per_core']:>8.1f}{s['plan']:>7.1f}{s['read']:>7.1f}{s['inference']:>7.1f}"
        f"{s['log_write']:>6.1f}{s['scheduling']:>7.1f}{row['cpu_s']['moto']:>9.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--images", type=int, default=100_000, help="images put on S3 and predicted per run")
    parser.add_argument("--distinct", type=int, default=2000, help="production images rendered; the rest are copies")
    parser.add_argument("--batch-images", type=int, default=1000, help="images per production batch")
    parser.add_argument("--shards-per-worker", type=int, default=4)
    parser.add_argument("--model-images", type=int, default=100_000, help="images the scaling model is for")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="rendered world + champion, reused")
    parser.add_argument("--fresh", action="store_true", help="render and train again even if the cache matches")
    parser.add_argument("--root", type=Path, default=None, help="where the temp folder goes (default: $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="400 images, 40 distinct, batches of 80")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the shards' progress bars (workers inherit it)
    if args.quick:
        args.images, args.distinct, args.batch_images, args.shards_per_worker = 400, 40, 80, 2
    project = load_params(args.params)
    report = run(
        project,
        images=args.images,
        distinct=args.distinct,
        batch_images=args.batch_images,
        shards_per_worker=args.shards_per_worker,
        cache=args.cache,
        fresh=args.fresh,
        root=args.root,
        model_images=args.model_images,
    )
    for name, ratio in report["per_core_ratio"].items():
        print(f"per core {name}: {ratio:.2f}")
    if "goal_met" in report:
        print(f"goal ({report['goal']}): {'met' if report['goal_met'] else 'NOT met'}")
    for m in report.get("model", []):
        print(
            f"MODEL {m['images']} images, {m['workers']:>2} workers, {m['shards']:>3} shards: "
            f"{m['images_per_s']:>8.1f} img/s, "
            f"{m['per_core']:.1f}/core ({m['vs_single_per_core']:.2f}x single t=1)"
        )
    h = report["host"]
    print(f"wall {report['wall_s']:.0f} s; {h['cpu']} ({h['isa']}), {h['cores']} cores, load {h['load_before'][0]:.1f}")
    out = args.out or project.base.paths.reports / "benchmarks" / "scale.json"
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
