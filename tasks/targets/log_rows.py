"""A detector over a folder of images, as prediction-log records (boxes, latency, input statistics).

What the monitor's baseline and its benchmark need: the rows batch prediction would write for these images, without
the predict stage's production concerns (error rows, timeouts, shadow). The predict stage keeps its own loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from tasks.contracts import prediction_log
from tasks.contracts.yolo_labels import load_rgb
from tasks.core.image_stats import image_stats
from tasks.runtimes.detectors import Detector, predict_images


def image_records(
    detector: Detector,
    images: Sequence[Path],
    *,
    batch_size: int,
    source: str | Mapping[str, str] = "default",
    desc: str = "predict",
) -> list[prediction_log.ImageDetections]:
    """One record per image, in order, predicted in chunks of ``batch_size``.

    Args:
        source: one source for every image, or ``{image id: source}`` (``default`` for ids it lacks).

    Raises:
        DatasetError: an image that does not decode (names the file).
    """
    records = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="chunk", leave=False, disable=None):
        paths = list(images[start : start + batch_size])
        arrays = [load_rgb(p) for p in paths]
        detections, ms = predict_images(detector, arrays)
        for path, rgb, det in zip(paths, arrays, detections, strict=True):
            records.append(
                prediction_log.ImageDetections(
                    image_id=path.stem,
                    image_uri=path.resolve().as_uri(),
                    image_sha256=prediction_log.sha256_file(path),
                    width=rgb.shape[1],
                    height=rgb.shape[0],
                    latency_ms=ms / len(paths),
                    boxes_xyxy=det.boxes_xyxy,
                    confidence=det.confidence,
                    class_id=det.class_id,
                    margin=det.margin,
                    evidence_max=det.evidence_max,
                    evidence_count=det.evidence_count,
                    source=source if isinstance(source, str) else source.get(path.stem, "default"),
                    stats=image_stats(rgb),
                )
            )
    return records
