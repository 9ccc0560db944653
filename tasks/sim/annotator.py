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

``python -m tasks.sim.annotator --params P [--limit N]`` answers up to N open tasks (all by default).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from tasks.adapters.labelstudio import LabelStudioBackend, projects_path
from tasks.cli import stage_main
from tasks.config import AnnotatorSimParams, Params
from tasks.contracts import annotations as ls
from tasks.contracts.label_tasks import image_path, is_s3_uri
from tasks.contracts.yolo_labels import image_size, read_label_file

if TYPE_CHECKING:
    from tasks.adapters.labelstudio import LabelStudio  # the SDK client type (only adapters import the SDK)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimResult:
    """What one simulator run did."""

    project_id: int
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

    Args:
        params: ``base`` and ``label`` (connection, project title, ``world.annotator`` noise).
        limit: most tasks to answer; None answers all open ones.
        client: an SDK client (default: :func:`tasks.adapters.labelstudio.connect`).

    Returns:
        A :class:`SimResult`.

    Raises:
        tasks.adapters.labelstudio.LabelProjectNotReady: the label stage has not recorded its project yet (the
            simulator never creates one: it answers the project the label stage records in
            ``<base.paths.labels>/projects.json``).
    """
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
