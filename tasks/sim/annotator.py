"""Annotator simulator — for the demo, tests and benchmarks only, never part of the production loop.

It answers the open tasks of the label stage's Label Studio project *through the Label Studio API*, as a
person would in the UI: one annotation per task, with ``rectanglelabels`` regions taken from the world's
oracle ground truth ``<base.paths.oracle>/<batch>/labels/<image_id>.txt`` (YOLO), plus optional realistic
noise from ``world.annotator`` (params):

- a box whose shorter side is below ``small_px`` pixels is missed with probability ``drop_small``;
- each box corner moves by a uniform ± ``jitter`` fraction of the box's width/height (then clipped);
- a ``skip`` share of tasks is skipped (a cancelled annotation, as the UI's *Skip* button makes).

Randomness is seeded per task from ``simulator.seed`` (``base.seed`` when null) and the image's SHA-256,
so a task gets the same answer whatever order or batch it is answered in.

With ``label.backend: files`` (no server) it plays the person of the air-gapped exchange instead
(:func:`run_files`): it reads the task JSON the label stage wrote to the outbox, answers every task no inbox
export answers yet, the same way, and writes one Label Studio JSON export per run into the inbox, which the label
stage reads on its next run (:mod:`tasks.adapters.label_files`).

``python -m tasks.sim.annotator --params P [--limit N]`` answers up to N open tasks (all by default).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from tasks.adapters.label_files import exchange_folders
from tasks.adapters.labelstudio import LabelStudioBackend, projects_path
from tasks.cli import stage_main
from tasks.config import AnnotatorSimParams, Params
from tasks.contracts import annotations as ls
from tasks.contracts.label_tasks import image_path, is_s3_uri, read_export
from tasks.contracts.yolo_labels import image_size, read_label_file
from tasks.io import write_json_atomic

if TYPE_CHECKING:
    from tasks.adapters.labelstudio import LabelStudio  # the SDK client type (only adapters import the SDK)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimResult:
    """What one simulator run did (``project_id`` None with the files backend; ``task_ids`` are the export's ids
    there)."""

    project_id: int | None
    answered: int
    skipped: int
    boxes: int
    dropped_boxes: int
    task_ids: list[int] = field(default_factory=list)


def noisy_boxes(
    boxes_xywhn: np.ndarray,
    *,
    width: int,
    height: int,
    noise: AnnotatorSimParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the annotator noise to oracle boxes.

    Args:
        boxes_xywhn: ``(N, 4)`` YOLO normalised boxes.
        width: image width in pixels.
        height: image height in pixels.
        noise: the simulator params (``small_px``, ``drop_small``, ``jitter``).
        rng: the task's generator.

    Returns:
        ``(kept, boxes)``: ``(N,)`` bool mask of the boxes kept and ``(K, 4)`` their noisy ``xywhn`` (K = kept.sum()),
        clipped to the image. With all noise at zero the boxes come back unchanged.
    """
    b: np.ndarray = np.asarray(boxes_xywhn, dtype=np.float64).reshape(-1, 4)
    shorter_px = np.minimum(b[:, 2] * width, b[:, 3] * height)
    missed = (shorter_px < noise.small_px) & (rng.random(len(b)) < noise.drop_small)
    kept = ~missed
    b = b[kept]
    if noise.jitter > 0 and len(b):
        corners = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)
        size = np.concatenate([b[:, 2:], b[:, 2:]], axis=1)
        corners = np.clip(corners + rng.uniform(-noise.jitter, noise.jitter, corners.shape) * size, 0.0, 1.0)
        corners[:, 2:] = np.maximum(corners[:, 2:], corners[:, :2])
        b = np.concatenate([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], axis=1)
    return kept, b


def answer_task(
    task: dict[str, Any], params: Params, noise: AnnotatorSimParams
) -> tuple[list[dict[str, Any]], bool, int]:
    """The annotation a simulated person gives one task.

    Args:
        task: the task dict (``data`` with ``batch``, ``image_id``, ``image_sha256``, ``image_uri``).
        params: for ``base.classes``, ``base.paths.oracle`` and ``base.seed``.
        noise: the simulator params.

    Returns:
        ``(result regions, cancelled, dropped boxes)``.

    Raises:
        tasks.contracts.yolo_labels.DatasetError: the oracle label file is missing or malformed (names it).
    """
    data = task["data"]
    seed = params.base.seed if noise.seed is None else noise.seed
    rng = np.random.default_rng([seed, int(str(data["image_sha256"])[:15], 16)])
    if rng.random() < noise.skip:
        return [], True, 0
    classes = params.base.classes
    label_file = params.base.paths.oracle / str(data["batch"]) / "labels" / f"{data['image_id']}.txt"
    class_id, boxes = read_label_file(label_file, num_classes=len(classes))
    width, height = data.get("image_width"), data.get("image_height")
    if not width or not height:
        width, height = _image_size(str(data["image_uri"]))
    kept, noisy = noisy_boxes(boxes, width=int(width), height=int(height), noise=noise, rng=rng)
    regions = ls.rectangle_regions(
        ls.xywhn_to_xywhp(noisy),
        [classes[int(c)] for c in class_id[kept]],
        width=int(width),
        height=int(height),
        id_prefix="sim",
    )
    return regions, False, int((~kept).sum())


def _image_size(uri: str) -> tuple[int, int]:
    """``(width, height)`` as shown, of a local image or an ``s3://`` one (its bytes read from S3)."""
    if not is_s3_uri(uri):
        return image_size(image_path(uri))
    from PIL import Image

    from tasks.adapters.image_store import read_image_bytes
    from tasks.core.pixels import upright_size

    with Image.open(io.BytesIO(read_image_bytes(uri))) as image:
        image.load()
        return upright_size(image)


def run(params: Params, *, limit: int | None = None, client: LabelStudio | None = None) -> SimResult:
    """Answer up to ``limit`` open tasks (no annotation yet) of the label stage's project, in task id order.

    With ``label.backend: files`` the outbox tasks are answered into the inbox instead (:func:`run_files`).

    Args:
        params: ``base`` and ``label`` (connection, project title, ``world.annotator`` noise).
        limit: most tasks to answer; None answers all open ones.
        client: an SDK client (default: :func:`tasks.adapters.labelstudio.connect`; unused with ``files``).

    Returns:
        A :class:`SimResult`.

    Raises:
        tasks.adapters.labelstudio.LabelProjectNotReady: the label stage has not recorded its project yet (the
            simulator never creates one: it answers the project the label stage records in
            ``<base.paths.labels>/projects.json``).
    """
    if params.label.backend == "files":
        return run_files(params, limit=limit)
    backend = LabelStudioBackend(
        params.label, params.base.classes, record=projects_path(params), create=False, client=client
    )
    project_id = cast(int, backend.project_id)
    tasks = backend.list_tasks(project_id, fields="all")
    open_tasks = sorted((t for t in tasks if not t.annotations), key=lambda t: int(t.id))
    if limit is not None:
        open_tasks = open_tasks[:limit]
    answered = skipped = boxes = dropped = 0
    ids = []
    for task in open_tasks:
        regions, cancelled, lost = answer_task({"data": dict(task.data or {})}, params, params.world.annotator)
        backend.annotate(int(task.id), result=regions, cancelled=cancelled)
        ids.append(int(task.id))
        answered += 1
        skipped += int(cancelled)
        boxes += len(regions)
        dropped += lost
    log.log(
        logging.INFO if answered else logging.DEBUG,
        "annotator simulator: answered %d task(s) of project %s (%d skipped, %d boxes, %d dropped)",
        answered,
        project_id,
        skipped,
        boxes,
        dropped,
    )
    return SimResult(
        project_id=project_id, answered=answered, skipped=skipped, boxes=boxes, dropped_boxes=dropped, task_ids=ids
    )


def export_id(image_sha256: str) -> int:
    """The task and annotation id the files mode gives an image's answer: stable, so a re-read export is the same
    annotation (the inbox reader de-duplicates annotations by id)."""
    return int(image_sha256[:12], 16)


def outbox_tasks(outbox: Path) -> list[dict[str, Any]]:
    """Every task of the outbox's task JSON files (the label stage's :func:`~tasks.contracts.label_tasks.build_task`
    lists), oldest file first, each image once."""
    tasks: dict[str, dict[str, Any]] = {}
    for path in sorted(outbox.glob("*.json")) if outbox.is_dir() else []:
        for task in read_export(path):  # the same shape: a list of tasks, each with data.image_sha256
            tasks.setdefault(str(task["data"]["image_sha256"]), task)
    return list(tasks.values())


def answered_images(inbox: Path) -> set[str]:
    """SHA-256 of the images some inbox export already answers (an annotation, cancelled or not)."""
    done: set[str] = set()
    for path in sorted(inbox.glob("*.json")) if inbox.is_dir() else []:
        done |= {str(t["data"]["image_sha256"]) for t in read_export(path) if t.get("annotations")}
    return done


def export_task(task: dict[str, Any], regions: Sequence[dict[str, Any]], *, cancelled: bool, at: str) -> dict[str, Any]:
    """One task of a Label Studio JSON export: the outbox task's data and predictions with one annotation."""
    task_id = export_id(str(task["data"]["image_sha256"]))
    annotation = {
        "id": task_id,
        "result": list(regions),
        "was_cancelled": cancelled,
        "created_at": at,
        "updated_at": at,
        "completed_by": 1,
    }
    return {
        "id": task_id,
        "data": task["data"],
        "annotations": [annotation],
        "predictions": task.get("predictions", []),
    }


def run_files(params: Params, *, limit: int | None = None) -> SimResult:
    """The files backend's person: answer the outbox tasks no inbox export answers yet, as one new inbox export.

    Reads ``label.outbox`` (default ``<base.paths.labels>/outbox``), answers up to ``limit`` open tasks in outbox
    order with :func:`answer_task` and writes ``<inbox>/sim-<UTC time>.json`` atomically (nothing when none is
    open), which the label stage collects on its next run.

    Returns:
        A :class:`SimResult` (``project_id`` None, ``task_ids`` the export's task ids).

    Raises:
        tasks.contracts.label_tasks.LabelError: an outbox or inbox file is not a task list (names it).
        tasks.contracts.yolo_labels.DatasetError: an oracle label file is missing or malformed (names it).
    """
    outbox, inbox = exchange_folders(params)
    done = answered_images(inbox)
    open_tasks = [t for t in outbox_tasks(outbox) if str(t["data"]["image_sha256"]) not in done]
    if limit is not None:
        open_tasks = open_tasks[:limit]
    now = dt.datetime.now(dt.UTC)
    exported, skipped, boxes, dropped = [], 0, 0, 0
    for task in open_tasks:
        regions, cancelled, lost = answer_task(task, params, params.world.annotator)
        exported.append(export_task(task, regions, cancelled=cancelled, at=now.isoformat()))
        skipped += int(cancelled)
        boxes += len(regions)
        dropped += lost
    if exported:
        path = write_json_atomic(inbox / f"sim-{now.strftime('%Y%m%dT%H%M%S%fZ')}.json", exported)
        log.info(
            "annotator simulator: answered %d outbox task(s) into %s (%d skipped, %d boxes, %d dropped)",
            len(exported),
            path,
            skipped,
            boxes,
            dropped,
        )
    return SimResult(
        project_id=None,
        answered=len(exported),
        skipped=skipped,
        boxes=boxes,
        dropped_boxes=dropped,
        task_ids=[int(t["id"]) for t in exported],
    )


class BackgroundAnnotator:
    """The demo's labeling team: answers new tasks every ``interval`` seconds in a daemon thread until stopped.

    Use as a context manager around the flow that waits for labels. Errors (the project not created yet, the server
    briefly away) are logged and retried on the next round; ``answered`` counts the tasks answered so far.
    """

    def __init__(self, params: Params, *, interval: float = 2.0) -> None:
        self.params, self.interval = params, interval
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="annotator-simulator", daemon=True)

    def _work(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.answered += run(self.params).answered
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.info("annotator simulator: %s (retrying)", self.errors[-1].splitlines()[0])

    def __enter__(self) -> BackgroundAnnotator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=None, help="answer at most N open tasks (default: all)")


def main(argv: list[str] | None = None) -> SimResult:
    """``python -m tasks.sim.annotator --params P [--limit N]`` (demo/tests/benchmarks only)."""
    return stage_main(
        "sim.annotator",
        __doc__,
        run=lambda params, args: run(params, limit=args.limit),
        arguments=_arguments,
        summary=lambda result: json.dumps({k: v for k, v in asdict(result).items() if k != "task_ids"}),
        argv=argv,
    )


if __name__ == "__main__":
    main()
