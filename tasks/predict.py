"""Stage ``predict``: the aliased model (champion by default) over production batches → prediction log.

Contract:
    inputs: production batches ``<base.paths.production>/<batch>/images/*`` (a batch folder named
        ``YYYY-MM-DD...`` is dated by its name, otherwise by today's UTC date) and their optional
        ``<batch>/sources.csv`` (:mod:`tasks.contracts.batch_sources`: image -> source, else ``default``); the
        registered model version behind ``predict.alias``, resolved at run time, and the one behind
        ``predict.shadow.alias`` when shadow is on. With ``base.storage.production`` set (``s3://bucket/prefix``)
        the batches are ``<prefix>/<batch>/images/*`` objects there instead (:mod:`tasks.adapters.image_store`:
        paginated listings; each image streamed once into memory, hashed as it streams, never written to disk;
        ``image_uri`` is ``s3://bucket/key``; an object deleted since it was listed is an ``unreadable`` row);
    params: ``base`` (incl. ``device``, ``seed``), ``registry`` (store, model name), ``predict``,
        ``export.speed.static_shapes`` (OpenVINO runs as the export stage timed it);
    outputs: rows appended to the prediction log ``<base.paths.predictions>/date=YYYY-MM-DD/*.parquet``
        (schema in :mod:`tasks.contracts.prediction_schema`), one file per (batch, model version) and one per
        (batch, shadow version), replaced atomically on a re-run; ``<reports>/predict.json``;
    side effects: each version's deployable artifact (or its ONNX file) is cached under
        ``<models>/registry/<name>/<version>/``.

The version runs its deployable artifact: the one the export stage selected and the registry tagged
(``deploy.target`` / ``deploy.artifact``), found and fetched by :func:`tasks.adapters.model_cache.find_deployed`
(the lookup the cycle stage runs for the champion too), opened by :func:`tasks.runtimes.detectors.load_detector`
(ONNX Runtime, OpenVINO, TensorRT on CUDA hosts; no torch in the serving path). A version without that tag,
or whose artifact cannot be fetched or opened here, runs its FP32 ONNX file instead; the log and the report
say which target ran and why.

Each image file is read once: its bytes give ``image_sha256``, are decoded, and the decoded pixels give the input
statistics (:func:`tasks.core.image_stats.image_stats`); reader threads do that (and the letterbox) for the next
chunks while the model runs on the current one (:func:`tasks.targets.chunk_inference.read_ahead`). An image that
cannot be read (``unreadable``) or decoded (``decode``), or whose chunk's model call raises (``inference``) or runs
past ``predict.timeout_s`` (``timeout``: the call runs on one worker thread; the next chunk starts once it has
finished), gets one error row in the log and is named in the report; it never stops the rest of the batch.

Shadow (``predict.shadow``, ``share`` 0 = off): when ``alias`` (an alias or a version number) names a version other
than the one predicting, that version also predicts the images whose seeded draw ``u(base.seed, image_sha256)``
(:func:`shadow_draw`) is below ``share`` (the same images on every run), from the same decoded pixels, after the
champion. Its rows go to their own part ``batch=<b>__model=<name>-v<n>__shadow`` (``shadow`` true, ``model_alias``
the shadow alias); the champion's rows are never changed by it, and shadow rows never mark the batch as predicted
by that version (:func:`tasks.contracts.prediction_log.logged_batches`). An alias that names no version is logged
once at INFO; a shadow version that cannot be opened is logged as a warning; either way the champion goes on.

Shards (``predict.shards``, 1 = one shard): :func:`plan` resolves the run once and cuts the batches' images into at
most that many shards of whole chunks (:mod:`tasks.core.shards`: never one task per image); :func:`run_shard`
predicts one shard, opening the model once, and hands its records back without writing; :func:`combine` logs each
batch once all its shards are in, in image order, so the log is the same however the shards ran. :func:`run` does
the three in this process (``python -m tasks.predict``, ``dvc repro``); ``flows/fanout.py`` maps
:func:`run_shard` over Dask workers when ``predict.shards`` > 1 (``base.dask``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tasks.adapters import image_store, log_store
from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters.model_cache import open_deployed, resolve_version
from tasks.adapters.s3 import S3ObjectMissing
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import prediction_log
from tasks.contracts.batch_sources import read_sources, sources_path
from tasks.contracts.model_version import ModelVersionInfo
from tasks.contracts.predict_plan import (
    ImageChunk,
    PredictedChunk,
    PredictPlan,
    PredictShard,
    ShadowPlan,
    ShardResult,
)
from tasks.contracts.reports import write_report
from tasks.contracts.reports.predict import BatchResult, PredictResult
from tasks.contracts.yolo_labels import list_images
from tasks.core import shards
from tasks.runtimes.detectors import Detector, InferenceSettings, load_detector
from tasks.targets.chunk_inference import (
    ImageRead,
    Inferred,
    chunk_records,
    decode_image,
    infer_chunk,
    read_ahead,
    read_image,
    unread_image,
    unread_record,
)
from tasks.targets.scoring import predict_settings

log = logging.getLogger(__name__)
_DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")
S3_READ_THREADS = 8  # a chunk's S3 reads in flight at once: 111 -> 256 images/s from moto on 2 cores (77 kB PNGs)
# local files read, decoded and letterboxed at once beside the model call: the loop's wait for its images went from
# 24 % of the wall to under 1 % (benchmarks/predict.py, 2 k images, 2 cores)
LOCAL_READ_THREADS = 2
PREFETCH_CHUNKS = 2  # chunks whose images are read ahead of the one the model runs on
SHADOW_SUFFIX = "__shadow"
"""Ends the part name of a shadow version's rows: ``batch=<b>__model=<name>-v<n>__shadow``."""


class PredictError(VisionloopError, FileNotFoundError):
    """The production folder or a named batch does not exist."""


def batch_date(batch: str) -> dt.date:
    """The date of a batch folder: its ``YYYY-MM-DD`` name prefix, else today (UTC)."""
    match = _DATE_PREFIX.match(batch)
    if match:
        try:
            return dt.date.fromisoformat(match.group(1))
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC).date()


def list_batches(production: Path | str) -> list[str]:
    """Batch folders (those with an ``images/`` sub-folder), sorted by name; on S3 (``s3://bucket/prefix``) the
    batch prefixes with ``images/`` objects (:func:`tasks.adapters.image_store.list_batches`)."""
    if image_store.is_s3(production):
        return image_store.list_batches(str(production))
    production = Path(production)
    if not production.is_dir():
        raise PredictError(f"{production}: production folder not found (base.paths.production)")
    return sorted(p.name for p in production.iterdir() if (p / "images").is_dir())


def pending_batches(params: Params, info: ModelVersionInfo) -> list[str]:
    """Batches this model version has not logged yet (its shadow rows do not count: it predicts those in full)."""
    done = {
        b.batch
        for b in prediction_log.logged_batches(log_store.log_root(params))
        if b.model_name == info.name and b.model_version == info.version
    }
    return [b for b in list_batches(image_store.production_location(params)) if b not in done]


@dataclass(frozen=True)
class Shadow(ShadowPlan):
    """The shadow version with its artifact opened for the run."""

    detector: Detector


def open_shadow(params: Params, champion: ModelVersionInfo, settings: InferenceSettings) -> Shadow | None:
    """The shadow version of this run, opened like the champion (:func:`open_deployed`), or None when it is off.

    Off when ``predict.shadow.share`` is 0, when its alias names no version or the champion's own version (logged
    at INFO), or when the version cannot be opened (logged as a warning): the champion's predictions go on.
    """
    config = params.predict.shadow
    if config.share <= 0:
        return None
    info = resolve_version(params, config.alias)
    if info is None:
        log.info("shadow: %r names no version of %s; no shadow this run", config.alias, params.registry.model_name)
        return None
    if (info.name, info.version) == (champion.name, champion.version):
        log.info("shadow: %r is the predicting version v%s itself; no shadow this run", config.alias, info.version)
        return None
    try:
        detector, deployed = open_deployed(params, info, settings)
    except Exception as exc:  # the shadow must never stop the champion's predictions
        why = f"{type(exc).__name__}: {exc}"
        log.warning("shadow: %s v%s cannot be opened (%s); no shadow this run", info.name, info.version, why)
        return None
    share = f"{config.share:.0%}"
    log.info("shadow: %s v%s (%s) predicts %s of the images too", info.name, info.version, config.alias, share)
    return Shadow(detector=detector, info=info, alias=config.alias, deployed=deployed, share=config.share)


def shadow_draw(seed: int, image_sha256: str) -> float:
    """The uniform draw in [0, 1) that puts an image in the shadow share: a pure function of (seed, content hash)."""
    digest = hashlib.sha256(f"{seed}:shadow:{image_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


def _failures(images: Sequence[ImageRead], inferred: Inferred, skipped: dict[str, str], what: str) -> None:
    if inferred.error is not None:
        log.warning("%s: %d image(s) get %s rows: %s", what, len(images), inferred.error, inferred.why)
        skipped.update({str(image.path): f"{inferred.error}: {inferred.why}" for image in images})


def batch_chunks(params: Params, batch: str) -> list[ImageChunk]:
    """A batch's images cut into chunks of ``predict.batch_size``, with their sources.

    Raises:
        SourcesError: the batch's ``sources.csv`` is malformed (names the file and line).
    """
    location = image_store.production_location(params)
    images: list[Path | str]
    if image_store.is_s3(location):  # s3://bucket/key URIs, listed page by page; sources.csv read from there
        images = list(image_store.list_batch_images(str(location), batch))
        sources = image_store.read_batch_sources(str(location), batch)
    else:
        folder = Path(location) / batch
        images = list(list_images(folder / "images"))
        sources = read_sources(sources_path(folder))
    named = [sources.get(image_store.image_stem(image), prediction_log.DEFAULT_SOURCE) for image in images]
    size = params.predict.batch_size
    return [
        ImageChunk(batch, tuple(images[i : i + size]), tuple(named[i : i + size])) for i in range(0, len(images), size)
    ]


def plan_shards(params: Params, batches: Sequence[str]) -> tuple[PredictShard, ...]:
    """At most ``predict.shards`` shards of whole chunks over the batches' images (never one task per image)."""
    chunks = {batch: batch_chunks(params, batch) for batch in batches}
    sizes = [(batch, len(found)) for batch, found in chunks.items()]
    planned = shards.plan_shards(sizes, chunk=1, shards=params.predict.shards)  # units: whole chunks
    return tuple(
        PredictShard(i, tuple(chunks[unit.group][unit.start] for unit in units)) for i, units in enumerate(planned)
    )


def predict_chunks(
    detector: Detector,
    chunks: Sequence[ImageChunk],
    *,
    seed: int,
    timeout_s: float | None,
    shadow: Shadow | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> Iterator[PredictedChunk]:
    """Predict chunks in order: each image read once, the detector (and the shadow on its share) on the decoded ones.

    Reader threads read, decode and letterbox the images of the next :data:`PREFETCH_CHUNKS` chunks while the
    model runs on the current one (:data:`LOCAL_READ_THREADS` threads for local files, :data:`S3_READ_THREADS`
    for S3 objects); the model calls stay one at a time, in chunk order, and each chunk's images stay in order.
    A read that raises (an S3 failure other than a missing object) raises here when its chunk's turn comes.
    """
    threads = S3_READ_THREADS if chunks and image_store.is_s3(chunks[0].paths[0]) else LOCAL_READ_THREADS
    reads = read_ahead(chunks, _read, imgsz=detector.settings.imgsz, threads=threads, ahead=PREFETCH_CHUNKS)
    for chunk, images, read_s in reads:
        yield _predict_read(
            detector, chunk, images, read_s=read_s, seed=seed, timeout_s=timeout_s, shadow=shadow, pool=pool
        )


def _predict_read(
    detector: Detector,
    chunk: ImageChunk,
    images: Sequence[ImageRead],
    *,
    read_s: float,
    seed: int,
    timeout_s: float | None,
    shadow: Shadow | None,
    pool: ThreadPoolExecutor | None,
) -> PredictedChunk:
    """One chunk's records from its images as read: error rows for the unread, the model on the decoded ones."""
    records: list[prediction_log.ImageDetections] = []
    skipped: dict[str, str] = {}
    for image in images:
        if image.error is not None:
            log.warning("%s: %s row (%s)", image.path, image.error, image.why)
            skipped[str(image.path)] = f"{image.error}: {image.why}"
            records.append(unread_record(image))
    decoded = [image for image in images if image.rgb is not None]
    started = time.perf_counter()
    inferred = infer_chunk(detector, decoded, pool=pool, timeout_s=timeout_s)
    infer_s = time.perf_counter() - started
    _failures(decoded, inferred, skipped, f"batch {chunk.batch}")
    records += chunk_records(decoded, inferred)
    shadow_records: list[prediction_log.ImageDetections] = []
    calls = [inferred]
    if shadow is not None:
        chosen = [i for i in decoded if shadow_draw(seed, i.sha256) < shadow.share]
        started = time.perf_counter()
        found = infer_chunk(shadow.detector, chosen, pool=pool, timeout_s=timeout_s)
        infer_s += time.perf_counter() - started
        _failures(chosen, found, {}, f"batch {chunk.batch} shadow v{shadow.info.version}")
        shadow_records = chunk_records(chosen, found)
        calls.append(found)
    return PredictedChunk(
        chunk.batch,
        records,
        shadow_records,
        skipped,
        read_s=read_s,
        infer_s=infer_s,
        file_read_s=sum(image.read_s for image in images),
        decode_s=sum(image.decode_s for image in images),
        preprocess_s=sum(call.preprocess_ms for call in calls) / 1000.0,
        network_s=sum(call.network_ms for call in calls) / 1000.0,
        postprocess_s=sum(call.postprocess_ms for call in calls) / 1000.0,
    )


def _read(address: Path | str, source: str) -> ImageRead:
    """One image read once: a local file, or an S3 object streamed into memory and hashed as it streams.

    An object deleted since it was listed is ``unreadable`` (its row and reason logged; the batch goes on); any
    other S3 failure (credentials, bucket, endpoint) concerns every image and stops the run, naming the endpoint.
    """
    if not image_store.is_s3(address):
        return read_image(Path(address), source=source)
    uri, image_id = str(address), image_store.image_stem(address)
    try:
        fetched = image_store.fetch_image(uri)
    except S3ObjectMissing as exc:
        return unread_image(uri, image_id=image_id, uri=uri, source=source, why=str(exc))
    return decode_image(fetched.data, path=uri, image_id=image_id, uri=uri, source=source, sha256=fetched.sha256)


def predict_batch(
    detector: Detector,
    *,
    params: Params,
    info: ModelVersionInfo,
    alias: str,
    batch: str,
    shadow: Shadow | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> BatchResult:
    """Run the detector (and the shadow on its share) over one batch and append their rows to the prediction log.

    Raises:
        SourcesError: the batch's ``sources.csv`` is malformed (names the file and line).
    """
    seed, timeout_s = params.base.seed, params.predict.timeout_s
    chunks = batch_chunks(params, batch)
    predicted = list(
        tqdm(
            predict_chunks(detector, chunks, seed=seed, timeout_s=timeout_s, shadow=shadow, pool=pool),
            total=len(chunks),
            desc=f"predict {batch}",
            unit="chunk",
            leave=False,
        )
    )
    return log_batch(params, predicted, info=info, alias=alias, batch=batch, shadow=shadow)


def log_batch(
    params: Params,
    chunks: Sequence[PredictedChunk],
    *,
    info: ModelVersionInfo,
    alias: str,
    batch: str,
    shadow: ShadowPlan | None,
) -> BatchResult:
    """Append a batch's records (its chunks in order) to the log, one part per version, and sum them up."""
    records = [r for chunk in chunks for r in chunk.records]
    shadow_records = [r for chunk in chunks for r in chunk.shadow_records]
    skipped = {path: why for chunk in chunks for path, why in chunk.skipped.items()}
    date = batch_date(batch)
    files = _log(params, records, info=info, alias=alias, batch=batch, date=date)
    shadow_files = [] if shadow is None else _log_shadow(params, shadow, shadow_records, batch=batch, date=date)
    predicted = [r for r in records if r.error is None]
    return BatchResult(
        batch=batch,
        date=date.isoformat(),
        images=len(predicted),
        detections=sum(r.n_detections for r in predicted),
        skipped=skipped,
        files=[str(f) for f in files],
        ms_per_image=round(sum(r.latency_ms for r in predicted) / max(len(predicted), 1), 3),
        errors=dict(sorted(Counter(r.error for r in records if r.error is not None).items())),
        shadow_images=len(shadow_records),
        shadow_files=[str(f) for f in shadow_files],
    )


def _log(
    params: Params,
    records: Sequence[prediction_log.ImageDetections],
    *,
    info: ModelVersionInfo,
    alias: str,
    batch: str,
    date: dt.date,
    shadow: bool = False,
) -> list[Path]:
    """Append one version's records of a batch to the log as its own part (a shadow part ends in ``__shadow``)."""
    table = prediction_log.rows_to_table(
        records,
        batch=batch,
        date=date,
        model_name=info.name,
        model_version=info.version,
        model_alias=alias,
        class_names=list(params.base.classes),
        shadow=shadow,
    )
    part = f"batch={batch}__model={info.name}-v{info.version}" + (SHADOW_SUFFIX if shadow else "")
    return log_store.append(params, table, part=part)


def _log_shadow(
    params: Params, shadow: ShadowPlan, records: Sequence[prediction_log.ImageDetections], *, batch: str, date: dt.date
) -> list[Path]:
    """Log the shadow's records; a log contract failure (e.g. a class outside ``base.classes``) is only a warning."""
    try:
        return _log(params, records, info=shadow.info, alias=shadow.alias, batch=batch, date=date, shadow=True)
    except prediction_log.PredictionLogError as exc:  # the shadow must never stop the champion's predictions
        log.warning("batch %s: shadow v%s rows not logged: %s", batch, shadow.info.version, exc)
        return []


def plan(
    params: Params, *, batches: list[str] | None = None, alias: str | None = None, threads: int | None = None
) -> PredictPlan:
    """Resolve the run once (version, artifact, shadow, batches) and cut its images into shards.

    The artifacts are opened here once (so that the fallback to ONNX is decided once for every shard) and let go;
    each shard opens them again from the plan. ``threads``: the intra-op threads of the shards' sessions (default
    ``base.threads``; ``base.dask.threads`` when the flow fans out).

    Raises:
        mlflow_adapter.AliasNotFoundError: no model under the alias (message names the flow that creates it).
        PredictError: a named batch does not exist.
        SourcesError: a batch's ``sources.csv`` is malformed.
    """
    return _plan(params, batches=batches, alias=alias, threads=threads)[0]


def _plan(
    params: Params, *, batches: list[str] | None, alias: str | None, threads: int | None = None
) -> tuple[PredictPlan, Detector, Shadow | None]:
    started = time.time()
    alias = alias or params.predict.alias
    info = mlflow_adapter.get_alias(params, alias)
    location = image_store.production_location(params)
    available = list_batches(location)
    missing = [b for b in batches or [] if b not in available]
    if missing:
        raise PredictError(f"batches {missing} not found under {location} (available: {available})")
    todo = batches if batches is not None else pending_batches(params, info)
    settings = shard_settings(params, threads or params.base.threads)
    detector, deployed = open_deployed(params, info, settings)
    shadow = open_shadow(params, info, settings) if todo else None
    shadow_plan = None if shadow is None else ShadowPlan(shadow.info, shadow.alias, shadow.deployed, shadow.share)
    shards_ = plan_shards(params, todo)
    planned = PredictPlan(info, alias, deployed, shadow_plan, settings.threads, tuple(todo), shards_, started)
    return planned, detector, shadow


def shard_settings(params: Params, threads: int) -> InferenceSettings:
    """``predict``'s inference settings with ``threads`` intra-op threads and the sampler's evidence band."""
    return dataclasses.replace(predict_settings(params), threads=threads, evidence_conf=params.predict.evidence_conf)


def run_shard(
    params: Params, plan: PredictPlan, shard: PredictShard, *, opened: tuple[Detector, Shadow | None] | None = None
) -> ShardResult:
    """Predict one shard's chunks; its records come back, nothing is written (:func:`combine` logs them).

    The model (and the shadow's) is opened once per shard from the plan's artifact, unless ``opened`` hands in
    the sessions the plan opened (the single-process run). A shadow that cannot be opened here is a warning.
    """
    start = time.perf_counter()
    detector, shadow = opened if opened is not None else _open_planned(params, plan)
    open_s = time.perf_counter() - start
    timeout_s = params.predict.timeout_s
    # with a timeout, model calls run on one worker thread so that a stuck call can be given up on
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict") if timeout_s else None
    try:
        chunks = tuple(
            tqdm(
                predict_chunks(
                    detector, shard.chunks, seed=params.base.seed, timeout_s=timeout_s, shadow=shadow, pool=pool
                ),
                total=len(shard.chunks),
                desc=f"predict shard {shard.index}",
                unit="chunk",
                leave=False,
            )
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    images = sum(len(c.paths) for c in shard.chunks)
    wall_s = time.perf_counter() - start
    log.info("shard %d: %d images in %.2f s", shard.index, images, wall_s)
    return ShardResult(shard.index, chunks, open_s=open_s, wall_s=wall_s)


def _open_planned(params: Params, plan: PredictPlan) -> tuple[Detector, Shadow | None]:
    settings = shard_settings(params, plan.threads)
    detector = load_detector(plan.deployed.path, settings)
    if plan.shadow is None:
        return detector, None
    try:
        opened = load_detector(plan.shadow.deployed.path, settings)
    except Exception as exc:  # the shadow must never stop the champion's predictions
        log.warning("shadow v%s cannot be opened here (%s: %s)", plan.shadow.info.version, type(exc).__name__, exc)
        return detector, None
    return detector, Shadow(plan.shadow.info, plan.shadow.alias, plan.shadow.deployed, plan.shadow.share, opened)


def combine(params: Params, plan: PredictPlan, results: Sequence[ShardResult]) -> PredictResult:
    """Log every batch of the plan from its shards' records (in image order, whatever order shards finished in).

    Each batch is written once, after all its shards are in, one atomic part per version (re-runs replace it).

    Raises:
        ValueError: the results are not exactly the plan's shards (one missing, or one twice).
    """
    indices = sorted(r.index for r in results)
    if indices != [s.index for s in plan.shards]:
        raise ValueError(f"predict: shard results {indices} do not match the plan's {len(plan.shards)} shards")
    by_batch: dict[str, list[PredictedChunk]] = {batch: [] for batch in plan.batches}
    for result in sorted(results, key=lambda r: r.index):
        for chunk in result.chunks:
            by_batch[chunk.batch].append(chunk)
    batches: list[BatchResult] = []
    for batch, chunks in by_batch.items():
        logged = log_batch(params, chunks, info=plan.info, alias=plan.alias, batch=batch, shadow=plan.shadow)
        log.info(
            "batch %s: %d images, %d detections, %.1f ms/image with %s v%s (%s); errors %s; shadow %d images",
            batch,
            logged.images,
            logged.detections,
            logged.ms_per_image,
            plan.info.name,
            plan.info.version,
            plan.deployed.target,
            logged.errors or "none",
            logged.shadow_images,
        )
        batches.append(logged)
    report = PredictResult(
        model_name=plan.info.name,
        model_version=plan.info.version,
        alias=plan.alias,
        batches=batches,
        target=plan.deployed.target,
        precision=plan.deployed.precision,
        artifact=str(plan.deployed.path),
        fallback=plan.deployed.fallback,
        wall_s=round(time.time() - plan.started, 2),
        shadow=_shadow_summary(plan.shadow, batches),
    )
    write_report(params.base.paths.reports, "predict", report, params)
    return report


def run(params: Params, *, batches: list[str] | None = None, alias: str | None = None) -> PredictResult:
    """Predict the given batches (default: every batch this model version has not logged yet), in this process.

    The same plan → shards → combine as a fanned-out run (``flows/fanout.py``): here the shards run one after
    another on the sessions the plan opened.

    Raises:
        mlflow_adapter.AliasNotFoundError: no model under the alias (message names the flow that creates it).
        PredictError: a named batch does not exist.
        SourcesError: a batch's ``sources.csv`` is malformed.
    """
    planned, detector, shadow = _plan(params, batches=batches, alias=alias)
    return combine(params, planned, [run_shard(params, planned, s, opened=(detector, shadow)) for s in planned.shards])


def _shadow_summary(shadow: ShadowPlan | None, results: Sequence[BatchResult]) -> dict[str, Any] | None:
    if shadow is None:
        return None
    return {
        "alias": shadow.alias,
        "version": shadow.info.version,
        "images": sum(r.shadow_images for r in results),
        "target": shadow.deployed.target,
        "precision": shadow.deployed.precision,
        "share": shadow.share,
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", action="append", default=None, help="batch folder name (repeatable)")
    parser.add_argument("--alias", default=None, help="registry alias (default: predict.alias)")


def main(argv: list[str] | None = None) -> PredictResult:
    """``python -m tasks.predict [--params P ...] [--batch B ...] [--alias A]``."""
    return stage_main(
        "predict",
        __doc__,
        run=lambda params, args: run(params, batches=args.batch, alias=args.alias),
        arguments=_arguments,
        summary=lambda report: json.dumps({b.batch: b.images for b in report.batches}),
        argv=argv,
    )


if __name__ == "__main__":
    main()
