"""Batch prediction's chunk primitives: read each image once, run a session on a chunk, make the log records.

The predict stage's production loop (:mod:`tasks.predict`: error rows, timeouts, shadow, shards) is built from these:
an image that cannot be read or decoded becomes an error record, a model call that raises or runs past its timeout
gives its chunk's images error records, and a decoded image's record carries its size, latency and input statistics.
Here, in ``targets``, beside :mod:`tasks.targets.log_rows` and the scoring code, for the same reason: they read
images from disk and run inference sessions (not ``core``), and they are not what a registered model ships (not
``runtimes``).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from tasks.contracts import prediction_log
from tasks.core.image_stats import ImageStats, image_stats
from tasks.core.pixels import to_rgb
from tasks.runtimes.detectors import Detections, Detector, predict_images


@dataclass(frozen=True, eq=False)
class ImageRead:
    """One production image as read for prediction: one read gives its hash, its pixels and their statistics.

    Attributes:
        path, image_id, uri, source: where it is (a local path, or the ``s3://`` URI of an object), its id (file
            stem), its URI (``file://`` or ``s3://bucket/key``, the log's ``image_uri``) and its source.
        sha256: hex SHA-256 of the bytes read (:data:`prediction_log.EMPTY_SHA256` when none could be).
        rgb: ``(H, W, 3)`` uint8 RGB, None when it could not be read or decoded.
        stats: its input statistics, None with ``rgb``.
        error: ``unreadable`` or ``decode`` when ``rgb`` is None, else None.
        why: the reason behind ``error`` (empty otherwise).
    """

    path: Path | str
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
        return unread_image(path, image_id=path.stem, uri=uri, source=source, why=why)
    return decode_image(data, path=path, image_id=path.stem, uri=uri, source=source)


def decode_image(
    data: bytes, *, path: Path | str, image_id: str, uri: str, source: str, sha256: str | None = None
) -> ImageRead:
    """An image already read into memory (e.g. streamed from S3): decode (Pillow) -> RGB -> statistics; never raises.

    Args:
        data: the image file's bytes.
        path, image_id, uri, source: as :class:`ImageRead`'s.
        sha256: the bytes' hex SHA-256 when it was computed while they streamed (else computed here).
    """
    sha = sha256 or hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = to_rgb(img)
        stats = image_stats(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})"
        return ImageRead(path, image_id, uri, source, sha, None, None, "decode", why)
    return ImageRead(path, image_id, uri, source, sha, rgb, stats)


def unread_image(path: Path | str, *, image_id: str, uri: str, source: str, why: str) -> ImageRead:
    """An image whose bytes could not be read (``unreadable``: gone since it was listed, refused): ``why`` says so."""
    return ImageRead(path, image_id, uri, source, prediction_log.EMPTY_SHA256, None, None, "unreadable", why)


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
