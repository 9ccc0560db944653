"""The labeling exchange: the Label Studio task a labeling backend receives and what comes back.

Owner of the task JSON the label stage sends (:func:`build_task`: data with the image URL and identity, the
champion's boxes as a prediction), of the Label Studio JSON exports read back from the files backend's inbox
(:func:`read_export`), and of the :class:`LabelBackend` protocol both backends implement
(:mod:`tasks.adapters.labelstudio`, :mod:`tasks.adapters.label_files`): ``submit`` confirms tasks as
:class:`TaskRef`, ``fetch`` returns task dicts (``id``, ``data``, ``annotations``, ``updated_at``).
The box conversions themselves live in :mod:`tasks.contracts.annotations`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import VisionloopError
from tasks.contracts import annotations as ls
from tasks.contracts import prediction_log
from tasks.contracts.ledger import LedgerRow
from tasks.contracts.sample_manifest import SampleRow


class LabelError(VisionloopError, ValueError):
    """The manifest, an image, an annotation, an inbox file or a record is unusable; the message names it."""


@dataclass(frozen=True)
class TaskRef:
    """A task the labeling backend confirmed: its id (None in the outbox) and its server ``updated_at``."""

    task_id: int | None
    updated_at: dt.datetime | None


class LabelBackend(Protocol):
    """Where tasks go and annotations come from: Label Studio's API or a folder exchange (air-gapped)."""

    name: str
    project_id: int | None

    def submit(self, tasks: list[dict[str, Any]], *, folders: set[Path]) -> tuple[dict[str, TaskRef], int]:
        """Queue ``tasks``; return the confirmed ``{image_sha256: TaskRef}`` (incl. ones already there), created."""
        ...

    def fetch(self, rows: Sequence[LedgerRow]) -> list[dict[str, Any]]:
        """Return task dicts (``id``, ``data``, ``annotations``, ``updated_at``) that may have changed for ``rows``."""
        ...


S3_SCHEME = "s3"


def is_s3_uri(uri: str) -> bool:
    """True for an ``s3://bucket/key`` image (production images on object storage, ``base.storage.production``)."""
    return urlparse(uri).scheme == S3_SCHEME


def image_path(uri: str) -> Path:
    """The local path of a ``file://`` URI or a plain path.

    Raises:
        LabelError: an ``s3://`` URI (read its bytes: :func:`tasks.adapters.image_store.read_image_bytes`)
            or a URI of any other scheme (only local files and S3 objects can be labeled).
    """
    scheme = urlparse(uri).scheme
    if scheme == S3_SCHEME:
        raise LabelError(f"image {uri}: an S3 object has no local path (read its bytes from S3)")
    if scheme not in ("", "file") and len(scheme) > 1:  # one letter: a Windows drive
        raise LabelError(
            f"image {uri}: only local files (file:// or a path) and S3 objects (s3://bucket/key) can be labeled, "
            f"got scheme {scheme!r}"
        )
    return prediction_log.image_file(uri)


def image_suffix(uri: str) -> str:
    """The image's file suffix, lower case (``.png``), of a local path or an ``s3://`` key (labeled copies keep it)."""
    return PurePosixPath(urlparse(uri).path).suffix.lower() if is_s3_uri(uri) else image_path(uri).suffix.lower()


@dataclass(frozen=True)
class Prediction:
    """The champion's boxes for one image (``xyxy`` pixels, ``(N, 4)``) from the prediction log."""

    width: int
    height: int
    boxes_xyxy: np.ndarray
    class_id: np.ndarray
    confidence: np.ndarray


def load_predictions(root: Path, rows: Sequence[SampleRow]) -> dict[str, Prediction]:
    """Return the logged predictions of ``rows`` by the model version each manifest row names.

    Only the partitions of the manifest's dates are read (all when a date is missing).
    """
    if not rows:
        return {}
    dates = None if any(r.date is None for r in rows) else {r.date for r in rows if r.date is not None}
    table = prediction_log.read(root, dates=dates)
    wanted = {(r.image_sha256, r.model_name, r.model_version) for r in rows}
    table = table.filter(pc.is_in(table["image_sha256"], pa.array(sorted({w[0] for w in wanted}), type=pa.string())))
    # the version's own answer: not its shadow rows (a champion may once have shadowed), never an error row
    table = table.filter(pc.and_(pc.invert(table["shadow"]), pc.is_null(table["error"])))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for rec in table.to_pylist():
        if (rec["image_sha256"], rec["model_name"], rec["model_version"]) in wanted:
            grouped.setdefault(rec["image_sha256"], []).append(rec)
    out = {}
    for sha, recs in grouped.items():
        boxes = [r for r in recs if r["class_id"] is not None]
        out[sha] = Prediction(
            width=int(recs[0]["image_width"]),
            height=int(recs[0]["image_height"]),
            boxes_xyxy=np.array([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in boxes], dtype=np.float64).reshape(-1, 4),
            class_id=np.array([r["class_id"] for r in boxes], dtype=np.int64),
            confidence=np.array([r["confidence"] for r in boxes], dtype=np.float64),
        )
    return out


def build_task(
    row: SampleRow, *, cycle: str, url: str, classes: Sequence[str], prediction: Prediction | None
) -> dict[str, Any]:
    """The Label Studio task of one sampled image: data (URL + identity) and the champion's boxes as a prediction.

    Regions carry percent boxes, the per-box ``score`` and the original image size; the prediction carries
    ``model_version`` (``<model_name>-v<version>``) and a task-level ``score`` (mean box confidence, 0 without boxes).
    """
    data: dict[str, Any] = {
        ls.DATA_KEY: url,
        "image_sha256": row.image_sha256,
        "image_id": row.image_id,
        "image_uri": row.image_uri,
        "batch": row.batch,
        "cycle": cycle,
        "strategy": row.strategy,
        "sample_score": row.score,
        "rank": row.rank,
    }
    task: dict[str, Any] = {"data": data}
    if prediction is None:
        return task
    data.update(image_width=prediction.width, image_height=prediction.height)
    boxes = ls.xyxy_to_xywhp(prediction.boxes_xyxy, width=prediction.width, height=prediction.height)
    keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    regions = ls.rectangle_regions(
        boxes[keep],
        [classes[int(c)] for c in prediction.class_id[keep]],
        width=prediction.width,
        height=prediction.height,
        scores=[float(s) for s in prediction.confidence[keep]],
        id_prefix=f"{row.image_sha256[:8]}-",
    )
    score = float(np.mean(prediction.confidence[keep])) if keep.any() else 0.0
    task["predictions"] = [
        {"model_version": f"{row.model_name}-v{row.model_version}", "score": round(score, 6), "result": regions}
    ]
    return task


def read_export(path: Path) -> list[dict[str, Any]]:
    """Read a Label Studio JSON export (a list of tasks); every task must carry ``data.image_sha256``.

    Raises:
        LabelError: not JSON, not a list of task objects, or a task without ``data.image_sha256`` (names it).
    """
    try:
        tasks = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LabelError(f"{path}: not a readable Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise LabelError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or not task["data"].get("image_sha256"):
            raise LabelError(
                f"{path} task #{i} (id {task.get('id') if isinstance(task, dict) else '?'}): no data.image_sha256; "
                "export with the JSON format from a project whose tasks came from the label outbox"
            )
    return tasks
