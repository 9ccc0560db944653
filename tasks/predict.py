"""Stage ``predict``: the aliased model (champion by default) over production batches → prediction log.

Contract:
    inputs: production batches ``<base.paths.production>/<batch>/images/*`` (a batch folder named
        ``YYYY-MM-DD...`` is dated by its name, otherwise by today's UTC date); the registered model
        version behind ``predict.alias``, resolved at run time;
    params: ``base`` (incl. ``device``), ``registry`` (store, model name), ``predict``,
        ``export.speed.static_shapes`` (OpenVINO runs as the export stage timed it);
    outputs: rows appended to the prediction log ``<base.paths.predictions>/date=YYYY-MM-DD/*.parquet``
        (schema in :mod:`tasks.contracts.prediction_log`), one file per (batch, model version), replaced atomically
        on a re-run; ``<reports>/predict.json``;
    side effects: the version's deployable artifact (or its ONNX file) is cached under
        ``<models>/registry/<name>/<version>/``.

The version runs its deployable artifact: the one the export stage selected and the registry tagged
(``deploy.target`` / ``deploy.artifact``), found and fetched by :func:`tasks.adapters.model_cache.find_deployed`
(the lookup the cycle stage runs for the champion too), opened by :func:`tasks.runtimes.detectors.load_detector`
(ONNX Runtime, OpenVINO, TensorRT on CUDA hosts; no torch in the serving path). A version without that tag,
or whose artifact cannot be fetched or opened here, runs its FP32 ONNX file instead; the log and the report
say which target ran and why.
Unreadable images are skipped, named in the log and in the report; they never stop the rest of the batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import time
from pathlib import Path

from tqdm import tqdm

from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters.model_cache import find_deployed, onnx_fallback
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import prediction_log
from tasks.contracts.deployed import Deployed
from tasks.contracts.model_version import ModelVersionInfo
from tasks.contracts.reports import write_report
from tasks.contracts.reports.predict import BatchResult, PredictResult
from tasks.contracts.yolo_labels import DatasetError, list_images, load_rgb
from tasks.models import family
from tasks.runtimes.detectors import Detector, InferenceSettings, load_detector, predict_images

log = logging.getLogger(__name__)
_DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")


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
    """Batches this model version has not logged yet."""
    done = {
        b.batch
        for b in prediction_log.logged_batches(params.base.paths.predictions)
        if b.model_name == info.name and b.model_version == info.version
    }
    return [b for b in list_batches(params.base.paths.production) if b not in done]


def open_deployed(params: Params, info: ModelVersionInfo, settings: InferenceSettings) -> tuple[Detector, Deployed]:
    """Open the version's deployable artifact, or its ONNX file when it has none or it cannot run here."""
    deployed = find_deployed(params, info)
    if deployed.fallback is not None:
        return load_detector(deployed.path, settings), deployed
    try:
        detector = load_detector(deployed.path, settings)
    except Exception as exc:  # opening: any failure must leave production on the re-checked ONNX
        reason = (
            f"{info.name} v{info.version}: its {deployed.target} artifact cannot run here ({type(exc).__name__}: {exc})"
        )
        log.warning("%s", reason)
        fallback = onnx_fallback(params, info, reason)
        return load_detector(fallback.path, settings), fallback
    log.info(
        "%s v%s runs its selected artifact: %s (%s) %s",
        info.name,
        info.version,
        deployed.target,
        deployed.precision,
        deployed.path,
    )
    return detector, deployed


def predict_batch(detector: Detector, *, params: Params, info: ModelVersionInfo, alias: str, batch: str) -> BatchResult:
    """Run the detector over one batch and append its rows to the prediction log."""
    images = list_images(params.base.paths.production / batch / "images")
    records: list[prediction_log.ImageDetections] = []
    skipped: dict[str, str] = {}
    size = params.predict.batch_size
    for start in tqdm(range(0, len(images), size), desc=f"predict {batch}", unit="chunk", leave=False):
        chunk, arrays = [], []
        for path in images[start : start + size]:
            try:
                arrays.append(load_rgb(path))
                chunk.append(path)
            except DatasetError as exc:
                skipped[str(path)] = str(exc)
                log.warning("skipping %s", exc)
        detections, ms = predict_images(detector, arrays)
        per_image_ms = ms / max(len(chunk), 1)
        for path, rgb, det in zip(chunk, arrays, detections, strict=True):
            records.append(
                prediction_log.ImageDetections(
                    image_id=path.stem,
                    image_uri=path.resolve().as_uri(),
                    image_sha256=prediction_log.sha256_file(path),
                    width=rgb.shape[1],
                    height=rgb.shape[0],
                    latency_ms=per_image_ms,
                    boxes_xyxy=det.boxes_xyxy,
                    confidence=det.confidence,
                    class_id=det.class_id,
                )
            )
    date = batch_date(batch)
    table = prediction_log.rows_to_table(
        records,
        batch=batch,
        date=date,
        model_name=info.name,
        model_version=info.version,
        model_alias=alias,
        class_names=list(params.base.classes),
    )
    files = prediction_log.append(
        params.base.paths.predictions, table, part=f"batch={batch}__model={info.name}-v{info.version}"
    )
    return BatchResult(
        batch=batch,
        date=date.isoformat(),
        images=len(records),
        detections=sum(len(r.confidence) for r in records),
        skipped=skipped,
        files=[str(f) for f in files],
        ms_per_image=round(sum(r.latency_ms for r in records) / max(len(records), 1), 3),
    )


def run(params: Params, *, batches: list[str] | None = None, alias: str | None = None) -> PredictResult:
    """Predict the given batches (default: every batch this model version has not logged yet).

    Raises:
        mlflow_adapter.AliasNotFoundError: no model under the alias (message names the flow that creates it).
        PredictError: a named batch does not exist.
    """
    alias = alias or params.predict.alias
    info = mlflow_adapter.get_alias(params, alias)
    available = list_batches(params.base.paths.production)
    missing = [b for b in batches or [] if b not in available]
    if missing:
        raise PredictError(f"batches {missing} not found under {params.base.paths.production} (available: {available})")
    todo = batches if batches is not None else pending_batches(params, info)
    settings = InferenceSettings(
        imgsz=params.base.imgsz,
        conf=params.predict.conf,
        iou=params.predict.iou,
        max_det=params.predict.max_det,
        threads=params.base.threads,
        device=params.base.device,
        static_shapes=params.export.speed.static_shapes,  # run as the export stage measured it
        nms_free=family(params).inference_hints(params).nms_free,
    )
    detector, deployed = open_deployed(params, info, settings)
    start = time.perf_counter()
    results = []
    for batch in todo:
        result = predict_batch(detector, params=params, info=info, alias=alias, batch=batch)
        log.info(
            "batch %s: %d images, %d detections, %.1f ms/image with %s v%s (%s)",
            batch,
            result.images,
            result.detections,
            result.ms_per_image,
            info.name,
            info.version,
            deployed.target,
        )
        results.append(result)
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
    )
    write_report(params.base.paths.reports, "predict", report, params)
    return report


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
