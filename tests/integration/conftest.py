from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import label, world
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.yolo_labels import image_size, list_images, read_label_file
from tasks.core.boxes import xywhn_to_xyxy
from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict

TOKEN = "visionloop-test-token-0001"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server + database for the whole session (it costs ~9 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@dataclass(frozen=True)
class Server:
    url: str
    root: Path  # the document root: everything the tests write lives below it
    data: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_make(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def label_studio_server(root: Path, *, settings: tuple[str, ...] = ()) -> Iterator[Server]:
    """Start a real Label Studio with a fresh data dir under ``root`` (its document root) and stop it afterwards.

    ``settings``: more ``make labelstudio-up`` variables (``LABEL_STUDIO_SSRF_PROTECTION=true``).

    Skips only when its venv cannot be built, and not even then under ``CI=true``: a green CI run must have
    exercised the real server.
    """
    built = run_make("labelstudio", timeout=1800)
    if built.returncode != 0:
        why = f"the Label Studio venv cannot be built (make labelstudio): {(built.stdout + built.stderr)[-800:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    port, data = free_port(), root / "server-data"
    make_vars = [
        *settings,
        f"LABEL_STUDIO_PORT={port}",
        f"LABEL_STUDIO_DATA={data}",
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}",
        f"LABEL_STUDIO_API_KEY={TOKEN}",
        "LABEL_STUDIO_START_TIMEOUT=240",
    ]
    up = run_make("labelstudio-up", *make_vars, timeout=300)
    try:
        log = (data / "server.log").read_text()[-2000:] if (data / "server.log").exists() else ""
        assert up.returncode == 0, f"make labelstudio-up failed:\n{up.stdout}\n{up.stderr}\n{log}"
        yield Server(url=f"http://127.0.0.1:{port}", root=root, data=data)
    finally:
        down = run_make("labelstudio-down", f"LABEL_STUDIO_DATA={data}", timeout=60)
        assert down.returncode == 0 and "stopped pid" in down.stdout, down.stdout + down.stderr


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real Label Studio with a fresh data dir, shared by the modules that use it (see :func:`labelstudio_env`)."""
    with label_studio_server(tmp_path_factory.mktemp("labelstudio")) as started:
        yield started


@pytest.fixture(scope="module")
def labelstudio_env(server: Server) -> Iterator[Server]:
    """The client environment pointed at :func:`server` for one module only (it must not leak into other tests)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABEL_STUDIO_API_KEY", TOKEN)
        mp.setenv("LABEL_STUDIO_URL", server.url)
        mp.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(server.root))
        yield server


# ------------------------------------------------------------------ a labeling cycle for the Label Studio tests

CYCLE = "cycle-001"
MODEL = ("visionloop-detector", "1")


def make_params(root: Path, *, title: str, labels: str = "labels", **simulator: float) -> Params:
    data = tiny_params_dict(root / "work")
    data["base"]["paths"]["labels"] = str(root / "work" / labels)
    data["label"].update(
        backend="labelstudio",
        project_title=title,
        document_root=str(root),
        min_labeled=5,
        retries=1,
        retry_delay_s=0.5,
    )
    # no annotator noise unless a test asks for it: the labels must equal the oracle
    annotator = data["world"].get("annotator", {})
    data["world"]["annotator"] = {**annotator, "small_px": 0.0, "drop_small": 0.0, "jitter": 0.0, **simulator}
    return Params.model_validate(data)


def build_cycle(params: Params) -> Params:
    """A tiny world, champion predictions (the oracle, shifted a little) in the log, and a sample manifest."""
    world.run(params)
    paths = params.base.paths
    records_by_batch: dict[str, list[prediction_log.ImageDetections]] = {}
    rows: list[dict[str, object]] = []
    rng = np.random.default_rng(0)
    for batch_dir in sorted(p for p in paths.production.iterdir() if p.is_dir()):
        batch = batch_dir.name
        for path in list_images(batch_dir / "images"):
            width, height = image_size(path)
            cls, boxes = read_label_file(paths.oracle / batch / "labels" / f"{path.stem}.txt", num_classes=6)
            xyxy = xywhn_to_xyxy(boxes, width=width, height=height) + rng.uniform(-1, 1, (len(boxes), 4))
            sha = prediction_log.sha256_file(path)
            records_by_batch.setdefault(batch, []).append(
                prediction_log.ImageDetections(
                    image_id=path.stem,
                    image_uri=path.resolve().as_uri(),
                    image_sha256=sha,
                    width=width,
                    height=height,
                    latency_ms=1.0,
                    boxes_xyxy=xyxy,
                    confidence=np.full(len(cls), 0.7),
                    class_id=cls,
                )
            )
            rows.append(
                {
                    "image_sha256": sha,
                    "image_id": path.stem,
                    "image_uri": path.resolve().as_uri(),
                    "batch": batch,
                    "date": dt.date.fromisoformat(batch),
                    "strategy": "uncertainty",
                    "score": 0.5,
                    "rank": len(rows),
                    "model_name": MODEL[0],
                    "model_version": MODEL[1],
                }
            )
    for batch, records in records_by_batch.items():
        table = prediction_log.rows_to_table(
            records,
            batch=batch,
            date=dt.date.fromisoformat(batch),
            model_name=MODEL[0],
            model_version=MODEL[1],
            model_alias="champion",
            class_names=params.base.classes,
        )
        prediction_log.append(paths.predictions, table, part=f"batch={batch}")
    manifest = label.manifest_path(params, CYCLE)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return params
