"""Batch prediction's chunk primitives: read each image once, run a session on a chunk, make the log records.

The predict stage's production loop (:mod:`tasks.predict`: error rows, timeouts, shadow, shards) is built from these:
an image that cannot be read or decoded becomes an error record, a model call that raises or runs past its timeout
gives its chunk's images error records, and a decoded image's record carries its size, latency and input statistics.
Here, in ``targets``, beside :mod:`tasks.targets.log_rows` and the scoring code, for the same reason: they read
images from disk and run inference sessions (not ``core``), and they are not what a registered model ships (not
``runtimes``).

Each step is timed where it runs (:class:`ImageRead`'s ``read_s``/``decode_s``, :class:`Prepared`'s ``seconds``,
:class:`Inferred`'s per-step milliseconds), so that a run can say where its time went (``benchmarks/predict.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from tasks.contracts import prediction_log
from tasks.contracts.predict_plan import ImageChunk
from tasks.core.image_stats import ImageStats, image_stats
from tasks.core.pixels import to_rgb
from tasks.runtimes.detectors import Detections, Detector, Letterbox, decode_output, letterbox


@dataclass(frozen=True, eq=False)
class Prepared:
    """An image letterboxed for a network input of side ``imgsz`` (:func:`tasks.runtimes.detectors.letterbox`).

    Attributes:
        tensor: ``(3, imgsz, imgsz)`` float32 in [0, 1].
        box: how to undo the letterbox.
        imgsz: the side it was prepared for (a detector of another size letterboxes again).
        seconds: the time it took.
    """

    tensor: npt.NDArray[np.float32]
    box: Letterbox
    imgsz: int
    seconds: float


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
        read_s: seconds reading the bytes (a local file; 0 for bytes handed in); decode_s: seconds hashing (when
            not done while streaming), decoding and computing the statistics.
        prepared: its network input, when it was letterboxed ahead of the model call (:func:`prepare_image`).
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
    read_s: float = 0.0
    decode_s: float = 0.0
    prepared: Prepared | None = None


def read_image(path: Path, *, source: str) -> ImageRead:
    """Read one image file once: bytes -> SHA-256, decode (Pillow) -> RGB pixels -> statistics; never raises."""
    started = time.perf_counter()
    uri = path.resolve().as_uri()
    try:
        data = path.read_bytes()
    except OSError as exc:  # gone since it was listed, no permission, a folder
        why = f"{path}: cannot read the file ({type(exc).__name__}: {exc})"
        return unread_image(path, image_id=path.stem, uri=uri, source=source, why=why)
    read_s = time.perf_counter() - started
    return decode_image(data, path=path, image_id=path.stem, uri=uri, source=source, read_s=read_s)


def decode_image(
    data: bytes,
    *,
    path: Path | str,
    image_id: str,
    uri: str,
    source: str,
    sha256: str | None = None,
    read_s: float = 0.0,
) -> ImageRead:
    """An image already read into memory (e.g. streamed from S3): decode (Pillow) -> RGB -> statistics; never raises.

    Args:
        data: the image file's bytes.
        path, image_id, uri, source: as :class:`ImageRead`'s.
        sha256: the bytes' hex SHA-256 when it was computed while they streamed (else computed here).
        read_s: the seconds it took to read ``data`` (kept in the record).
    """
    started = time.perf_counter()
    sha = sha256 or hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = to_rgb(img)
        stats = image_stats(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})"
        return ImageRead(path, image_id, uri, source, sha, None, None, "decode", why, read_s=read_s)
    decode_s = time.perf_counter() - started
    return ImageRead(path, image_id, uri, source, sha, rgb, stats, read_s=read_s, decode_s=decode_s)


def prepare_image(image: ImageRead, imgsz: int) -> ImageRead:
    """The image with its network input for side ``imgsz`` made ahead of the model call (``prepared``).

    The same letterbox the model call would make (:func:`tasks.runtimes.detectors.letterbox`), so the detections do
    not change; an image without pixels, or one the letterbox refuses, is returned as it is (the model call then
    letterboxes it and fails where it always did: an ``inference`` row).
    """
    if image.rgb is None:
        return image
    started = time.perf_counter()
    try:
        tensor, box = letterbox(image.rgb, imgsz)
    except Exception:  # the model call letterboxes it again and turns the failure into inference rows
        return image
    return dataclasses.replace(image, prepared=Prepared(tensor, box, imgsz, time.perf_counter() - started))


def unread_image(path: Path | str, *, image_id: str, uri: str, source: str, why: str) -> ImageRead:
    """An image whose bytes could not be read (``unreadable``: gone since it was listed, refused): ``why`` says so."""
    return ImageRead(path, image_id, uri, source, prediction_log.EMPTY_SHA256, None, None, "unreadable", why)


def read_ahead(
    chunks: Sequence[ImageChunk],
    read: Callable[[Path | str, str], ImageRead],
    *,
    imgsz: int,
    threads: int,
    ahead: int,
) -> Iterator[tuple[ImageChunk, list[ImageRead], float]]:
    """Each chunk with its images read (``read(path, source)``) and prepared for ``imgsz`` (:func:`prepare_image`),
    in order, and the seconds the caller waited for them.

    ``threads`` reader threads work on the images of the next ``ahead`` chunks while the caller works on the
    current one (the model call), so reading and decoding overlap inference; images stay in chunk order. A read
    that raises raises here when its chunk's turn comes; the reads not started yet are then dropped.
    """
    reader = ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="predict-read")

    def submit(chunk: ImageChunk) -> list[Future[ImageRead]]:
        pairs = zip(chunk.paths, chunk.sources, strict=True)
        return [reader.submit(lambda p, s: prepare_image(read(p, s), imgsz), path, source) for path, source in pairs]

    try:
        pending = deque((chunk, submit(chunk)) for chunk in chunks[: max(ahead, 1)])
        following = iter(chunks[max(ahead, 1) :])
        while pending:
            chunk, reads = pending.popleft()
            upcoming = next(following, None)
            if upcoming is not None:
                pending.append((upcoming, submit(upcoming)))
            started = time.perf_counter()
            images = [future.result() for future in reads]
            yield chunk, images, time.perf_counter() - started
    finally:
        reader.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Inferred:
    """One chunk's model call: its detections (None when it failed), its time, and why it failed.

    ``ms``: pre-processing + network + decoding, the images' letterboxes made ahead of the call included (each
    image's ``latency_ms`` is its share); ``preprocess_ms``, ``network_ms``, ``postprocess_ms``: the three steps
    (letterbox, forward, decoding with NMS) of a call that returned, 0 otherwise.
    """

    detections: list[Detections] | None
    ms: float
    error: str | None = None
    why: str = ""
    preprocess_ms: float = 0.0
    network_ms: float = 0.0
    postprocess_ms: float = 0.0


def _predict(detector: Detector, images: Sequence[ImageRead]) -> Inferred:
    """:func:`tasks.runtimes.detectors.predict_images` on decoded images, step by step, timed.

    The same letterbox, forward and decoding, so the detections are the same; an image already ``prepared`` for
    the detector's input size is not letterboxed again (its letterbox time is counted here).
    """
    imgsz = detector.settings.imgsz
    started = time.perf_counter()
    ahead = 0.0
    inputs: list[tuple[npt.NDArray[np.float32], Letterbox]] = []
    for image in images:
        prepared = image.prepared
        if prepared is not None and prepared.imgsz == imgsz:
            inputs.append((prepared.tensor, prepared.box))
            ahead += prepared.seconds
        else:
            assert image.rgb is not None  # only decoded images reach the model
            inputs.append(letterbox(image.rgb, imgsz))
    batch = np.stack([tensor for tensor, _ in inputs])
    forward = time.perf_counter()
    output = detector.forward(batch)
    decode = time.perf_counter()
    detections = decode_output(output, [box for _, box in inputs], detector.settings)
    done = time.perf_counter()
    return Inferred(
        detections,
        (done - started + ahead) * 1000.0,
        preprocess_ms=(forward - started + ahead) * 1000.0,
        network_ms=(decode - forward) * 1000.0,
        postprocess_ms=(done - decode) * 1000.0,
    )


def infer_chunk(
    detector: Detector,
    images: Sequence[ImageRead],
    *,
    pool: ThreadPoolExecutor | None,
    timeout_s: float | None,
) -> Inferred:
    """Run the detector on one chunk of decoded images; a raise becomes ``inference``, one past ``timeout_s``
    ``timeout``.

    With ``timeout_s`` the call runs on ``pool`` (one worker); on a timeout this waits for the worker to finish
    (a model call cannot be interrupted) and drops its late result, so chunks never overlap.
    """
    if not images:
        return Inferred([], 0.0)
    start = time.perf_counter()
    future = None if pool is None or timeout_s is None else pool.submit(_predict, detector, images)
    try:
        return _predict(detector, images) if future is None else future.result(timeout=timeout_s)
    except TimeoutError as exc:
        elapsed = (time.perf_counter() - start) * 1000.0
        if future is None or future.done():  # the model itself raised TimeoutError
            return Inferred(None, elapsed, "inference", f"{type(exc).__name__}: {exc}")
        wait_for([future])
        why = f"the model call on a chunk of {len(images)} images ran past predict.timeout_s = {timeout_s} s"
        return Inferred(None, elapsed, "timeout", why)
    except Exception as exc:  # any failure of the model call: the chunk's images get error rows, the batch goes on
        return Inferred(None, (time.perf_counter() - start) * 1000.0, "inference", f"{type(exc).__name__}: {exc}")


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
            margin=det.margin,
            evidence_max=det.evidence_max,
            evidence_count=det.evidence_count,
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
