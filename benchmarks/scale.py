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

Four configurations, each predicting every batch into a prediction log of its own (local: the log on S3 is
measured elsewhere):

- ``single t=2`` / ``single t=1``: the single-process path (:func:`tasks.predict.run`'s plan → shards → combine,
  one shard, the model opened once), inference sessions with 2 / 1 intra-op threads;
- ``dask w=1`` / ``dask w=2``: the fanned-out path of ``flows/fanout.py`` (plan, shards mapped as Prefect tasks on a
  prefect-dask LocalCluster of 1 / 2 worker processes × 1 task thread, 1 inference thread each, combine) with
  ``--shards-per-worker`` shards per worker, inside a flow on Prefect's temporary test server.

They take turns (the house rule: ratios measured in one run, the machine is shared and noisy): the batches are cut
into ``--rounds`` groups (default 5; ``--quick``: 2) and in each round every configuration predicts that round's
batches, in an order rotated by one per round, so a change in the neighbours' load hits all four alike. A
configuration's row (``report["rows"]``) is the sum of its rounds (``report["rounds"]`` holds each round's rows).
The per-core ratios are paired: dask / single per round, then their median and the pooled ratio (summed images
over summed seconds, ``report["per_core_ratio"]``); the goal is met when both the median and the pooled ratio of
dask w=1 / single t=1 and dask w=2 / single t=2 reach 0.90. Beside it a CPU view: images per CPU second of this
process tree (this process, the Dask workers and nannies, Prefect's test server; moto_server apart), from psutil,
paired the same way (CPU seconds inflate less than the wall under the neighbours' load; reported, not judged).

Fixed costs, as in a real nightly run of 100 k images (one fan-out over all of them): each Dask configuration's
LocalCluster (``fanout.dask_runner``'s settings) is started ONCE before the first round and kept up across the
rounds (its address in ``base.dask.address``); its start is timed and added once to that configuration's summed
wall and scheduling seconds, and the workers' imports fall into its first round. What the rounds do charge R
times, on the conservative side for Dask: one Prefect flow run per round, the plan's model opening (both paths)
and the shards' model openings (``--shards-per-worker`` shards per worker per round, ~0.1 s each). While one
configuration runs, the other cluster's idle workers stay up (their heartbeats land in the CPU view).

Per run (a configuration in a round, and summed): images/s, per core (cores = inference threads × processes), and
where the time went, from the stage's own counters (:class:`tasks.contracts.predict_plan.ShardResult`): the plan
(S3 listing of the round's batches and their images + opening the model; the listing alone is timed once beside
it, over all batches, and shared out by images), reads (S3 GETs + PNG decode, 8 read threads per shard),
inference, the log write (combine), and for Dask scheduling (= the map's wall − the shards' own seconds / workers:
connecting to the cluster, worker imports, Prefect's task runs, results coming back; in the sum + the cluster's
start). moto_server serves every GET from the same two
cores: its CPU seconds per run are recorded. Beyond 2 workers the throughput is a MODEL, not a measurement: the
per-image and per-shard costs of the 1-worker run (summed over the rounds), the serial plan and combine,
workers × shards; its fixed cost is the summed scheduling seconds (R flow runs: an upper bound).

    python benchmarks/scale.py [--images 100000] [--distinct 2000] [--batch-images 1000] [--rounds 5] [--quick]
                               [--cache DIR]

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
from contextlib import ExitStack, contextmanager
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
PAIRS = [("dask w=1", "single t=1"), ("dask w=2", "single t=2"), ("dask w=2", "single t=1")]  # the first 2 judged
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


def tree_cpu_seconds(exclude: int | None = None) -> float:
    """User + system CPU seconds of this process and its descendants so far (waited-for children included),
    without the process ``exclude`` (moto_server, counted apart). A descendant that exits unwaited between two
    readings takes its seconds with it (the Dask workers and Prefect's server live for the whole run)."""
    import psutil  # a dependency of distributed, pinned in requirements.lock

    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        if child.pid == exclude:
            continue
        try:
            c = child.cpu_times()
        except psutil.Error:  # gone since the listing
            continue
        total += c.user + c.system + c.children_user + c.children_system
    return total


def decode_ms(pngs: Sequence[bytes], n: int = 200) -> float:
    """Milliseconds to decode one image alone (the read step's decode, hash and statistics), mean of ``n``."""
    from tasks.targets.chunk_inference import decode_image

    started = time.perf_counter()
    for i in range(n):
        decode_image(pngs[i % len(pngs)], path="x.png", image_id="x", uri="x.png", source="default")
    return 1000 * (time.perf_counter() - started) / n


# ------------------------------------------------------------------ the runs


def run_params(
    cached: dict[str, Any],
    location: str,
    out: Path,
    *,
    threads: int,
    workers: int,
    shards: int,
    address: str | None = None,
) -> Params:
    data = json.loads(json.dumps(cached["params"]))
    data["base"]["paths"].update(predictions=str(out / "predictions"), reports=str(out / "reports"))
    data["base"]["storage"] = {"production": location, "predictions": None}
    data["base"]["threads"] = threads
    data["base"]["dask"] = {"address": address, "workers": workers, "threads": threads, "timeout_s": 10}
    data["predict"]["shards"] = shards
    return Params.model_validate(data)


def single_process(params: Params, batches: list[str] | None = None) -> tuple[dict[str, float], list[ShardResult], Any]:
    """:func:`tasks.predict.run`, step by step with a timer on each (the same calls in the same order)."""
    from tasks import predict

    started = time.perf_counter()
    planned, detector, shadow = predict._plan(params, batches=batches, alias=None)  # what run() calls: sessions kept
    plan_s = time.perf_counter() - started
    results = [predict.run_shard(params, planned, s, opened=(detector, shadow)) for s in planned.shards]
    map_s = time.perf_counter() - started - plan_s
    report = predict.combine(params, planned, results)
    combine_s = time.perf_counter() - started - plan_s - map_s
    return {"plan_s": plan_s, "map_s": map_s, "combine_s": combine_s, "start_s": 0.0}, results, report


def fanned_out(params: Params, batches: list[str] | None = None) -> tuple[dict[str, float], list[ShardResult], Any]:
    """``flows/fanout.predict``'s three steps inside a flow, timed (the map connects to ``base.dask.address``)."""
    from prefect import flow

    from flows import fanout, stages

    @flow(name="bench-scale")
    def fan(params: Params) -> tuple[dict[str, float], list[ShardResult], Any]:
        started = time.perf_counter()
        plan = stages.predict_plan(params, batches=batches, threads=params.base.dask.threads)
        plan_s = time.perf_counter() - started
        results = fanout.map_shards(params, stages.predict_shard, plan)
        map_s = time.perf_counter() - started - plan_s
        report = stages.predict_combine(params, fanout.unwalked(plan), fanout.unwalked(results))
        combine_s = time.perf_counter() - started - plan_s - map_s
        return {"plan_s": plan_s, "map_s": map_s, "combine_s": combine_s, "start_s": 0.0}, results, report

    return fan(params)


@contextmanager
def kept_cluster(params: Params) -> Iterator[tuple[str, float]]:
    """A LocalCluster with ``fanout.dask_runner``'s settings, up until the context ends; (address, start seconds)."""
    import dask
    from distributed import LocalCluster

    from flows import fanout

    kwargs = fanout.dask_runner(params).cluster_kwargs
    started = time.perf_counter()
    with dask.config.set(fanout.LOCAL_WORKER_CONFIG), LocalCluster(**kwargs) as cluster:
        start_s = time.perf_counter() - started
        yield cluster.scheduler_address, start_s


def measure(
    kind: str,
    params: Params,
    *,
    processes: int,
    moto: int | None,
    listing_s: float,
    decode_ms_: float,
    batches: list[str] | None = None,
) -> dict[str, Any]:
    """One run over ``batches`` (default all); its row (images/s, per core, CPU seconds, where the time went).
    ``listing_s``: the listing alone of these batches."""
    before = (cpu_seconds(moto), machine_busy_seconds(), time.process_time(), tree_cpu_seconds(moto))
    started = time.perf_counter()
    steps, results, report = single_process(params, batches) if kind == "single" else fanned_out(params, batches)
    wall = time.perf_counter() - started - steps["start_s"]  # a start timed apart is outside the run's wall
    after = (cpu_seconds(moto), machine_busy_seconds(), time.process_time(), tree_cpu_seconds(moto))
    images = sum(b.images for b in report.batches)
    errors = sum(sum(b.errors.values()) for b in report.batches)
    chunks = [c for r in results for c in r.chunks]
    open_s = sum(r.open_s for r in results)
    shard_s = sum(r.wall_s for r in results)
    read_s = sum(c.read_s for c in chunks)
    infer_s = sum(c.infer_s for c in chunks)
    cores = params.base.dask.threads * processes if kind == "dask" else params.base.threads
    parallel = processes if kind == "dask" else 1
    # the shards' own seconds spread over the workers; the rest of the map is connecting to the cluster, the
    # workers' imports (first round), Prefect's task runs, moving the results back and the last shard's tail
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
        "shard_wall_s": round(shard_s / parallel, 2),  # the shards' own seconds per worker
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
            "tree": round(after[3] - before[3], 2),  # this process + Dask workers + Prefect's server, moto apart
        },
        "load": os.getloadavg(),
    }
    return derived(row)


def derived(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its rates and shares (from its images, seconds and CPU seconds)."""
    wall, images, seconds = row["wall_s"], row["images"], row["seconds"]
    row["images_per_s"] = round(images / wall, 1)
    row["per_core"] = round(images / wall / row["cores"], 1)
    row["shard_images_per_s"] = round(images / row["shard_wall_s"], 1) if row["shard_wall_s"] else 0.0
    row["images_per_cpu_s"] = round(images / row["cpu_s"]["tree"], 2) if row["cpu_s"]["tree"] > 0 else 0.0
    row["share"] = {  # of the wall; the shards' seconds per worker
        "s3_io": round((seconds["listing_alone"] + seconds["read"]) / wall, 3),  # reads include the decode
        "inference": round(seconds["inference"] / wall, 3),
        "model_open": round((max(seconds["plan"] - seconds["listing_alone"], 0.0) + seconds["model_open"]) / wall, 3),
        "scheduling": round(seconds["scheduling"] / wall, 3),
        "log_write": round(seconds["log_write"] / wall, 3),
    }
    return row


def summed(rows: Sequence[dict[str, Any]], *, cluster_start_s: float = 0.0) -> dict[str, Any]:
    """One configuration's rounds as one run: counts and seconds summed, rates again; a cluster kept up across
    the rounds adds its start once (to the wall and to the scheduling, as a fan-out over all images pays it)."""
    first = rows[0]
    total = {k: first[k] for k in ("run", "kind", "processes", "threads", "cores")}
    total |= {k: sum(r[k] for r in rows) for k in ("shards", "images", "errors")}
    total["wall_s"] = round(sum(r["wall_s"] for r in rows) + cluster_start_s, 2)
    total["shard_wall_s"] = round(sum(r["shard_wall_s"] for r in rows), 2)
    total["seconds"] = {k: round(sum(r["seconds"][k] for r in rows), 2) for k in first["seconds"]}
    total["seconds"]["cluster_start"] = round(total["seconds"]["cluster_start"] + cluster_start_s, 2)
    total["seconds"]["scheduling"] = round(total["seconds"]["scheduling"] + cluster_start_s, 2)
    total["cpu_s"] = {k: round(sum(r["cpu_s"][k] for r in rows), 2) for k in first["cpu_s"]}
    total["rounds"] = len(rows)
    total["load"] = [r["load"][0] for r in rows]  # the 1-minute load after each round
    return derived(total)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def paired_ratios(
    rounds: Sequence[dict[str, dict[str, Any]]], totals: dict[str, dict[str, Any]], key: str = "per_core"
) -> dict[str, dict[str, Any]]:
    """For each pair of :data:`PAIRS` measured: ``key`` of a / of b per round (the two ran in the same round, on
    the same batches), their median, and the pooled ratio of the configurations' sums (``totals``)."""
    out: dict[str, dict[str, Any]] = {}
    for a, b in PAIRS:
        if a not in totals or b not in totals:
            continue
        per_round = [round(r[a][key] / r[b][key], 3) if r[b][key] else 0.0 for r in rounds]
        pooled = totals[a][key] / totals[b][key] if totals[b][key] else 0.0
        out[f"{a} / {b}"] = {"rounds": per_round, "median": round(median(per_round), 3), "pooled": round(pooled, 3)}
    return out


def goal_verdict(paired: dict[str, dict[str, Any]]) -> bool | None:
    """Met when the median and the pooled per-core ratio of both judged pairs reach 1 − :data:`GOAL`; None when
    a judged pair was not measured."""
    judged = [paired.get(f"{a} / {b}") for a, b in PAIRS[:2]]
    if any(p is None for p in judged):
        return None
    return all(p["median"] >= 1 - GOAL and p["pooled"] >= 1 - GOAL for p in judged if p is not None)


def round_groups(names: Sequence[str], rounds: int) -> list[list[str]]:
    """``names`` cut into ``rounds`` consecutive groups as even as whole batches allow."""
    if not 1 <= rounds <= len(names):
        raise ValueError(f"--rounds {rounds}: must be 1..{len(names)} (the batches; fewer rounds or smaller batches)")
    return [list(names[i * len(names) // rounds : (i + 1) * len(names) // rounds]) for i in range(rounds)]


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
    rounds: int = 5,
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
    all_batches = batch_names(images, batch_images)
    index = {b: k for k, b in enumerate(all_batches)}
    groups = round_groups(all_batches, rounds)
    per_round: list[dict[str, dict[str, Any]]] = []
    rounds_out: list[dict[str, Any]] = []
    starts: dict[tuple[str, int, int], float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-", dir=root) as tmp,
        s3_stack(Path(tmp)) as (location, moto),
        prefect_test_harness(),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        ExitStack() as clusters,
    ):
        upload_s = upload(location, pngs, images=images, batch_images=batch_images)
        print(f"uploaded {images} images in {upload_s:.0f} s ({images / upload_s:.0f}/s)", flush=True)
        listing_s, listed = listing_seconds(location)
        if listed != images:
            raise RuntimeError(f"{location}: listed {listed} images, uploaded {images}")
        configs: dict[tuple[str, int, int], Params] = {}
        for kind, threads, processes in runs:  # each configuration's own log, across the rounds
            out = Path(tmp) / f"{kind}-{threads}-{processes}"
            shards = processes * shards_per_worker if kind == "dask" else 1
            params = run_params(cached, location, out, threads=threads, workers=processes, shards=shards)
            if kind == "dask":  # one cluster per configuration for the whole run (module docstring)
                address, starts[(kind, threads, processes)] = clusters.enter_context(kept_cluster(params))
                params = run_params(
                    cached, location, out, threads=threads, workers=processes, shards=shards, address=address
                )
            configs[(kind, threads, processes)] = params
        print(f"Dask clusters started once: {', '.join(f'w={k[2]} {v:.1f} s' for k, v in starts.items())}")
        for r, group in enumerate(groups):
            order = list(runs[r % len(runs) :]) + list(runs[: r % len(runs)])  # rotated by one per round
            round_images = sum(min(batch_images, images - batch_images * index[b]) for b in group)
            print(f"round {r + 1}/{len(groups)}: {len(group)} batches ({group[0]} .. {group[-1]})", flush=True)
            print(HEADER, flush=True)
            rows: dict[str, dict[str, Any]] = {}
            for config in order:
                kind, threads, processes = config
                row = measure(
                    kind,
                    configs[config],
                    processes=processes,
                    moto=moto,
                    listing_s=listing_s * round_images / images,
                    decode_ms_=one_decode,
                    batches=group,
                )
                if row["images"] + row["errors"] != round_images:
                    raise RuntimeError(f"{row['run']}, round {r + 1}: {row['images']} images logged of {round_images}")
                rows[row["run"]] = row
                print_row(row)
            per_round.append(rows)
            rounds_out.append({"round": r + 1, "batches": group, "order": list(rows), "rows": list(rows.values())})
    names = [f"{k} {'w' if k == 'dask' else 't'}={p if k == 'dask' else t}" for k, t, p in runs]
    start_of = {f"dask w={p}": s for (_, _, p), s in starts.items()}
    totals = {n: summed([rows[n] for rows in per_round], cluster_start_s=start_of.get(n, 0.0)) for n in names}
    for n in names:
        if totals[n]["images"] + totals[n]["errors"] != images:
            raise RuntimeError(f"{n}: {totals[n]['images']} images logged of {images}")
    print(f"sum of {len(groups)} rounds (a Dask cluster's start added once)")
    print(HEADER)
    for n in names:
        print_row(totals[n])
    report: dict[str, Any] = {
        "rows": list(totals.values()),
        "rounds": rounds_out,
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
        "rounds_n": len(groups),
        "cluster_start_s": {n: round(v, 2) for n, v in start_of.items()},
        "goal": (
            f"per core, dask w=1 within {GOAL:.0%} of single t=1 and dask w=2 of single t=2 (the same cores): "
            "the median of the paired per-round ratios and the pooled ratio"
        ),
        "wall_s": round(time.perf_counter() - wall, 1),
        "host": host() | {"load_before": load_before, "load_after": os.getloadavg()},
    }
    by = totals
    paired = paired_ratios(per_round, totals)
    report["paired"] = {"per_core": paired, "images_per_cpu_s": paired_ratios(per_round, totals, "images_per_cpu_s")}
    report["per_core_ratio"] = {name: p["pooled"] for name, p in paired.items()}  # pooled over the rounds
    verdict = goal_verdict(paired)
    if verdict is not None:
        report["goal_met"] = verdict
    if "dask w=1" in by and "single t=1" in by:
        report["model"] = scaling_model(
            list(totals.values()),
            by["single t=1"]["per_core"],
            shards_per_worker=shards_per_worker,
            images=model_images,
        )
    return report


HEADER = (
    f"{'run':<12}{'cores':>6}{'shards':>7}{'images':>8}{'wall s':>8}{'img/s':>8}{'/core':>8}"
    f"{'plan':>7}{'read':>7}{'infer':>7}{'log':>6}{'sched':>7}{'moto cpu':>9}{'tree cpu':>9}{'img/cpu s':>10}"
)


def print_row(row: dict[str, Any]) -> None:
    s = row["seconds"]
    print(
        f"{row['run']:<12}{row['cores']:>6}{row['shards']:>7}{row['images']:>8}{row['wall_s']:>8.1f}"
        f"{row['images_per_s']:>8.1f}{row['per_core']:>8.1f}{s['plan']:>7.1f}{s['read']:>7.1f}{s['inference']:>7.1f}"
        f"{s['log_write']:>6.1f}{s['scheduling']:>7.1f}{row['cpu_s']['moto']:>9.1f}"
        f"{row['cpu_s']['tree']:>9.1f}{row['images_per_cpu_s']:>10.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--images", type=int, default=100_000, help="images put on S3 and predicted per run")
    parser.add_argument("--distinct", type=int, default=2000, help="production images rendered; the rest are copies")
    parser.add_argument("--batch-images", type=int, default=1000, help="images per production batch")
    parser.add_argument("--shards-per-worker", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=None, help="turns the configurations take (default 5; quick 2)")
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
    rounds = args.rounds or (2 if args.quick else 5)
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
        rounds=rounds,
    )
    for name, p in report["paired"]["per_core"].items():
        cpu = report["paired"]["images_per_cpu_s"][name]
        print(
            f"per core {name}: rounds {' '.join(f'{r:.2f}' for r in p['rounds'])}, median {p['median']:.2f}, "
            f"pooled {p['pooled']:.2f}; per CPU s: median {cpu['median']:.2f}, pooled {cpu['pooled']:.2f}"
        )
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
