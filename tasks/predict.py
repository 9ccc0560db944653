"""Stage ``predict``: the aliased model (champion by default) over production batches → prediction log.

Contract:
    inputs: production batches ``<base.paths.production>/<batch>/images/*`` (a batch folder named
        ``YYYY-MM-DD...`` is dated by its name, otherwise by today's UTC date) and their optional
        ``<batch>/sources.csv`` (:mod:`tasks.contracts.batch_sources`: image -> source, else ``default``); the
        registered model version behind ``predict.alias``, resolved at run time, and the one behind
        ``predict.shadow.alias`` when shadow is on;
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
statistics (:func:`tasks.core.image_stats.image_stats`). An image that cannot be read (``unreadable``) or decoded
(``decode``), or whose chunk's model call raises (``inference``) or runs past ``predict.timeout_s`` (``timeout``:
the call runs on one worker thread; the next chunk starts once it has finished), gets one error row in the log and
is named in the report; it never stops the rest of the batch.

Shadow (``predict.shadow``, ``share`` 0 = off): when ``alias`` (an alias or a version number) names a version other
than the one predicting, that version also predicts the images whose seeded draw ``u(base.seed, image_sha256)``
(:func:`shadow_draw`) is below ``share`` (the same images on every run), from the same decoded pixels, after the
champion. Its rows go to their own part ``batch=<b>__model=<name>-v<n>__shadow`` (``shadow`` true, ``model_alias``
the shadow alias); the champion's rows are never changed by it, and shadow rows never mark the batch as predicted
by that version (:func:`tasks.contracts.prediction_log.logged_batches`). An alias that names no version is logged
once at INFO; a shadow version that cannot be opened is logged as a warning; either way the champion goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from tqdm import tqdm

from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters.model_cache import open_deployed, resolve_version
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import prediction_log
from tasks.contracts.batch_sources import read_sources, sources_path
from tasks.contracts.deployed import Deployed
from tasks.contracts.model_version import ModelVersionInfo
from tasks.contracts.reports import write_report
from tasks.contracts.reports.predict import BatchResult, PredictResult
from tasks.contracts.yolo_labels import list_images
from tasks.core.image_stats import ImageStats, image_stats
from tasks.core.pixels import to_rgb
from tasks.runtimes.detectors import Detections, Detector, InferenceSettings, predict_images
from tasks.targets.scoring import predict_settings

log = logging.getLogger(__name__)
_DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")
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


def list_batches(production: Path) -> list[str]:
    """Batch folders (those with an ``images/`` sub-folder), sorted by name."""
    if not production.is_dir():
        raise PredictError(f"{production}: production folder not found (base.paths.production)")
    return sorted(p.name for p in production.iterdir() if (p / "images").is_dir())


def pending_batches(params: Params, info: ModelVersionInfo) -> list[str]:
    """Batches this model version has not logged yet (its shadow rows do not count: it predicts those in full)."""
    done = {
        b.batch
        for b in prediction_log.logged_batches(params.base.paths.predictions)
        if b.model_name == info.name and b.model_version == info.version
    }
    return [b for b in list_batches(params.base.paths.production) if b not in done]


@dataclass(frozen=True)
class Shadow:
    """A version predicting a share of the images beside the champion (``predict.shadow``), opened for the run."""

    detector: Detector
    info: ModelVersionInfo
    alias: str
    deployed: Deployed
    share: float


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


@dataclass(frozen=True, eq=False)
class ImageRead:
    """One production image as read for prediction: one read gives its hash, its pixels and their statistics.

    Attributes:
        path, image_id, uri, source: where it is, its id (file stem), its ``file://`` URI and its source.
        sha256: hex SHA-256 of the bytes read (:data:`prediction_log.EMPTY_SHA256` when none could be).
        rgb: ``(H, W, 3)`` uint8 RGB, None when it could not be read or decoded.
        stats: its input statistics, None with ``rgb``.
        error: ``unreadable`` or ``decode`` when ``rgb`` is None, else None.
        why: the reason behind ``error`` (empty otherwise).
    """

    path: Path
    image_id: str
    uri: str
    source: str
    sha256: str
    rgb: npt.NDArray[np.uint8] | None
    stats: ImageStats | None
    error: str | None = None
    why: str = ""


def read_image(path: Path, *, source: str) -> ImageRead:
    """Read one image file once: bytes -> SHA-256, decode (Pillow) -> RGB pixels -> statistics; never raises."""
    uri = path.resolve().as_uri()
    try:
        data = path.read_bytes()
    except OSError as exc:  # gone since it was listed, no permission, a folder
        why = f"{path}: cannot read the file ({type(exc).__name__}: {exc})"
        return ImageRead(path, path.stem, uri, source, prediction_log.EMPTY_SHA256, None, None, "unreadable", why)
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = to_rgb(img)
        stats = image_stats(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})"
        return ImageRead(path, path.stem, uri, source, sha, None, None, "decode", why)
    return ImageRead(path, path.stem, uri, source, sha, rgb, stats)


@dataclass(frozen=True)
class Inferred:
    """One chunk's model call: its detections (None when it failed), its time, and why it failed."""

    detections: list[Detections] | None
    ms: float
    error: str | None = None
    why: str = ""


def infer_chunk(
    detector: Detector,
    arrays: Sequence[npt.NDArray[np.uint8]],
    *,
    pool: ThreadPoolExecutor | None,
    timeout_s: float | None,
) -> Inferred:
    """Run the detector on one chunk; a raise becomes ``inference``, a call past ``timeout_s`` ``timeout``.

    With ``timeout_s`` the call runs on ``pool`` (one worker); on a timeout this waits for the worker to finish
    (a model call cannot be interrupted) and drops its late result, so chunks never overlap.
    """
    if not arrays:
        return Inferred([], 0.0)
    start = time.perf_counter()
    future = None if pool is None or timeout_s is None else pool.submit(predict_images, detector, arrays)
    try:
        detections, ms = predict_images(detector, arrays) if future is None else future.result(timeout=timeout_s)
    except TimeoutError as exc:
        elapsed = (time.perf_counter() - start) * 1000.0
        if future is None or future.done():  # the model itself raised TimeoutError
            return Inferred(None, elapsed, "inference", f"{type(exc).__name__}: {exc}")
        wait_for([future])
        why = f"the model call on a chunk of {len(arrays)} images ran past predict.timeout_s = {timeout_s} s"
        return Inferred(None, elapsed, "timeout", why)
    except Exception as exc:  # any failure of the model call: the chunk's images get error rows, the batch goes on
        return Inferred(None, (time.perf_counter() - start) * 1000.0, "inference", f"{type(exc).__name__}: {exc}")
    return Inferred(detections, ms)


def chunk_records(images: Sequence[ImageRead], inferred: Inferred) -> list[prediction_log.ImageDetections]:
    """The log records of decoded images after their chunk's model call (error records when it failed)."""
    per_image_ms = inferred.ms / max(len(images), 1)
    if inferred.detections is None:
        assert inferred.error is not None  # a failed call always says how
        return [
            prediction_log.ImageDetections.failed(
                image_id=image.image_id,
                image_uri=image.uri,
                image_sha256=image.sha256,
                error=inferred.error,
                source=image.source,
                width=_shape(image)[1],
                height=_shape(image)[0],
                latency_ms=per_image_ms,
            )
            for image in images
        ]
    return [
        prediction_log.ImageDetections(
            image_id=image.image_id,
            image_uri=image.uri,
            image_sha256=image.sha256,
            width=_shape(image)[1],
            height=_shape(image)[0],
            latency_ms=per_image_ms,
            boxes_xyxy=det.boxes_xyxy,
            confidence=det.confidence,
            class_id=det.class_id,
            source=image.source,
            stats=image.stats,
        )
        for image, det in zip(images, inferred.detections, strict=True)
    ]


def _shape(image: ImageRead) -> tuple[int, ...]:
    return (0, 0) if image.rgb is None else image.rgb.shape[:2]


def unread_record(image: ImageRead) -> prediction_log.ImageDetections:
    """The error record of an image that could not be read or decoded (size 0, latency 0)."""
    assert image.error is not None
    return prediction_log.ImageDetections.failed(
        image_id=image.image_id, image_uri=image.uri, image_sha256=image.sha256, error=image.error, source=image.source
    )


def _failures(images: Sequence[ImageRead], inferred: Inferred, skipped: dict[str, str], what: str) -> None:
    if inferred.error is not None:
        log.warning("%s: %d image(s) get %s rows: %s", what, len(images), inferred.error, inferred.why)
        skipped.update({str(image.path): f"{inferred.error}: {inferred.why}" for image in images})


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
    folder = params.base.paths.production / batch
    images = list_images(folder / "images")
    sources = read_sources(sources_path(folder))
    records: list[prediction_log.ImageDetections] = []
    shadow_records: list[prediction_log.ImageDetections] = []
    skipped: dict[str, str] = {}
    size, timeout_s = params.predict.batch_size, params.predict.timeout_s
    for start in tqdm(range(0, len(images), size), desc=f"predict {batch}", unit="chunk", leave=False):
        paths = images[start : start + size]
        chunk = [read_image(path, source=sources.get(path.stem, prediction_log.DEFAULT_SOURCE)) for path in paths]
        for image in chunk:
            if image.error is not None:
                log.warning("%s: %s row (%s)", image.path, image.error, image.why)
                skipped[str(image.path)] = f"{image.error}: {image.why}"
                records.append(unread_record(image))
        decoded = [image for image in chunk if image.rgb is not None]
        inferred = infer_chunk(detector, [i.rgb for i in decoded if i.rgb is not None], pool=pool, timeout_s=timeout_s)
        _failures(decoded, inferred, skipped, f"batch {batch}")
        records += chunk_records(decoded, inferred)
        if shadow is not None:
            chosen = [i for i in decoded if shadow_draw(params.base.seed, i.sha256) < shadow.share]
            arrays = [i.rgb for i in chosen if i.rgb is not None]
            found = infer_chunk(shadow.detector, arrays, pool=pool, timeout_s=timeout_s)
            _failures(chosen, found, {}, f"batch {batch} shadow v{shadow.info.version}")
            shadow_records += chunk_records(chosen, found)
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
    return prediction_log.append(params.base.paths.predictions, table, part=part)


def _log_shadow(
    params: Params, shadow: Shadow, records: Sequence[prediction_log.ImageDetections], *, batch: str, date: dt.date
) -> list[Path]:
    """Log the shadow's records; a log contract failure (e.g. a class outside ``base.classes``) is only a warning."""
    try:
        return _log(params, records, info=shadow.info, alias=shadow.alias, batch=batch, date=date, shadow=True)
    except prediction_log.PredictionLogError as exc:  # the shadow must never stop the champion's predictions
        log.warning("batch %s: shadow v%s rows not logged: %s", batch, shadow.info.version, exc)
        return []


def run(params: Params, *, batches: list[str] | None = None, alias: str | None = None) -> PredictResult:
    """Predict the given batches (default: every batch this model version has not logged yet).

    Raises:
        mlflow_adapter.AliasNotFoundError: no model under the alias (message names the flow that creates it).
        PredictError: a named batch does not exist.
        SourcesError: a batch's ``sources.csv`` is malformed.
    """
    alias = alias or params.predict.alias
    info = mlflow_adapter.get_alias(params, alias)
    available = list_batches(params.base.paths.production)
    missing = [b for b in batches or [] if b not in available]
    if missing:
        raise PredictError(f"batches {missing} not found under {params.base.paths.production} (available: {available})")
    todo = batches if batches is not None else pending_batches(params, info)
    settings = predict_settings(params)
    detector, deployed = open_deployed(params, info, settings)
    shadow = open_shadow(params, info, settings) if todo else None
    start = time.perf_counter()
    results = []
    # with a timeout, model calls run on one worker thread so that a stuck call can be given up on
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict") if params.predict.timeout_s else None
    try:
        for batch in todo:
            result = predict_batch(
                detector, params=params, info=info, alias=alias, batch=batch, shadow=shadow, pool=pool
            )
            log.info(
                "batch %s: %d images, %d detections, %.1f ms/image with %s v%s (%s); errors %s; shadow %d images",
                batch,
                result.images,
                result.detections,
                result.ms_per_image,
                info.name,
                info.version,
                deployed.target,
                result.errors or "none",
                result.shadow_images,
            )
            results.append(result)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    report = PredictResult(
        model_name=info.name,
        model_version=info.version,
        alias=alias,
        batches=results,
        target=deployed.target,
        precision=deployed.precision,
        artifact=str(deployed.path),
        fallback=deployed.fallback,
        wall_s=round(time.perf_counter() - start, 2),
        shadow=_shadow_summary(shadow, results),
    )
    write_report(params.base.paths.reports, "predict", report, params)
    return report


def _shadow_summary(shadow: Shadow | None, results: Sequence[BatchResult]) -> dict[str, Any] | None:
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
