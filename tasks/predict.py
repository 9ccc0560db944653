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
(``deploy.target`` / ``deploy.artifact``), opened by :func:`tasks.runtimes.detectors.load_detector`
(ONNX Runtime, OpenVINO, TensorRT on CUDA hosts; no torch in the serving path). A version without that tag,
or whose artifact cannot be fetched or opened here, runs its FP32 ONNX file instead; the log and the report
say which target ran and why.
Unreadable images are skipped, named in the log and in the report; they never stop the rest of the batch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from tasks import registry
from tasks.config import Params, load_params, stage_argparser
from tasks.contracts import prediction_log
from tasks.contracts.yolo_labels import DatasetError, list_images, load_rgb
from tasks.io import write_json_atomic
from tasks.runtimes.detectors import Deployed, Detector, InferenceSettings, load_detector, predict_images

log = logging.getLogger(__name__)
_DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")
FALLBACK_TARGET = "onnx"
_DEPLOY_CACHE = "deploy"  # sub-folder of a version's cache holding its deployable artifact


@dataclass(frozen=True)
class BatchResult:
    """Outcome of predicting one batch."""

    batch: str
    date: str
    images: int
    detections: int
    skipped: dict[str, str]
    files: list[str]
    ms_per_image: float


@dataclass(frozen=True)
class PredictResult:
    """What ``reports/predict.json`` holds."""

    model_name: str
    model_version: str
    alias: str
    batches: list[BatchResult] = field(default_factory=list)
    target: str = FALLBACK_TARGET
    precision: str = "fp32"
    artifact: str = ""
    fallback: str | None = None


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
        raise FileNotFoundError(f"{production}: production folder not found (base.paths.production)")
    return sorted(p.name for p in production.iterdir() if (p / "images").is_dir())


def pending_batches(params: Params, info: registry.ModelVersionInfo) -> list[str]:
    """Batches this model version has not logged yet."""
    done = {
        b.batch
        for b in prediction_log.logged_batches(params.base.paths.predictions)
        if b.model_name == info.name and b.model_version == info.version
    }
    return [b for b in list_batches(params.base.paths.production) if b not in done]


def _version_cache(params: Params, info: registry.ModelVersionInfo) -> Path:
    return params.base.paths.models / "registry" / info.name / info.version


def cached_onnx(params: Params, info: registry.ModelVersionInfo) -> Path:
    """The version's ONNX file, downloaded once into ``<models>/registry/<name>/<version>/``."""
    cache = _version_cache(params, info)
    found = (
        sorted(p for p in cache.rglob("*.onnx") if p.relative_to(cache).parts[0] != _DEPLOY_CACHE)
        if cache.is_dir()
        else []
    )
    return found[0] if found else registry.download_onnx(params, info, cache)


def cached_deploy_artifact(params: Params, info: registry.ModelVersionInfo) -> Path:
    """The version's ``deploy.artifact``, downloaded once into ``<models>/registry/<name>/<version>/deploy/``.

    Raises:
        LookupError: the version has no ``deploy.artifact`` tag.
    """
    artifact = registry.deploy_artifact(info)
    if artifact is None:
        raise LookupError(f"{info.name} v{info.version} has no {registry.DEPLOY_ARTIFACT} tag")
    cache = _version_cache(params, info) / _DEPLOY_CACHE
    local = cache.joinpath(*PurePosixPath(artifact).parts)
    # a download lands complete or not at all, so the file standing for the artifact means all of it is there
    return local if local.is_file() else registry.download_deploy_artifact(params, info, cache)


def find_deployed(params: Params, info: registry.ModelVersionInfo) -> Deployed:
    """The version's deployable artifact, fetched (cached), or its ONNX file when it has none or fetching fails.

    Nothing is opened: :func:`open_deployed` runs what this finds; the gate times it against a candidate.
    """
    target = info.tags.get(registry.DEPLOY_TARGET)
    if registry.deploy_artifact(info) is None or target is None:
        reason = (
            f"{info.name} v{info.version} has no {registry.DEPLOY_ARTIFACT} tag (registered before export "
            "selection, or nothing was selected)"
        )
    else:
        try:
            path = cached_deploy_artifact(params, info)
        except Exception as exc:  # any failure must leave the caller on the re-checked ONNX
            reason = f"{info.name} v{info.version}: its {target} artifact cannot run here ({type(exc).__name__}: {exc})"
            log.warning("%s", reason)
        else:
            return Deployed(target=target, precision=info.tags.get(registry.DEPLOY_PRECISION, ""), path=path)
    return onnx_fallback(params, info, reason)


def onnx_fallback(params: Params, info: registry.ModelVersionInfo, reason: str) -> Deployed:
    """The version's re-checked ONNX file (fetched, cached), what runs when its selected artifact cannot."""
    log.info("%s; running its ONNX file (target %s)", reason, FALLBACK_TARGET)
    return Deployed(FALLBACK_TARGET, "fp32", cached_onnx(params, info), fallback=reason)


def open_deployed(
    params: Params, info: registry.ModelVersionInfo, settings: InferenceSettings
) -> tuple[Detector, Deployed]:
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


def predict_batch(
    detector: Detector, *, params: Params, info: registry.ModelVersionInfo, alias: str, batch: str
) -> BatchResult:
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
        registry.AliasNotFoundError: no model under the alias (message names the flow that creates it).
        FileNotFoundError: a named batch does not exist.
    """
    alias = alias or params.predict.alias
    info = registry.get_alias(params, alias)
    available = list_batches(params.base.paths.production)
    missing = [b for b in batches or [] if b not in available]
    if missing:
        raise FileNotFoundError(
            f"batches {missing} not found under {params.base.paths.production} (available: {available})"
        )
    todo = batches if batches is not None else pending_batches(params, info)
    settings = InferenceSettings(
        imgsz=params.base.imgsz,
        conf=params.predict.conf,
        iou=params.predict.iou,
        max_det=params.predict.max_det,
        threads=params.predict.threads,
        device=params.base.device,
        static_shapes=params.export.speed.static_shapes,  # run as the export stage measured it
        nms_free=params.base.nms_free,
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
    )
    write_json_atomic(
        params.base.paths.reports / "predict.json", asdict(report) | {"wall_s": round(time.perf_counter() - start, 2)}
    )
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.predict [--params P] [--batch B ...] [--alias A]``."""
    from tasks.env import apply_env

    parser = stage_argparser("predict", __doc__)
    parser.add_argument("--batch", action="append", default=None, help="batch folder name (repeatable)")
    parser.add_argument("--alias", default=None, help="registry alias (default: predict.alias)")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(load_params(args.params), batches=args.batch, alias=args.alias)
    print(json.dumps({b.batch: b.images for b in report.batches}))


if __name__ == "__main__":
    main()
