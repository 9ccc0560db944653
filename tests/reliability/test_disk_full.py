"""A full disk on any write: a clean error, the previous state intact, no half-written or temp file left behind.

Two ways of filling the disk: ``ENOSPC`` injected where the project writes (the file object ``tasks.io.atomic_open``
hands out, and prometheus-client's own textfile writer), and a real size-capped tmpfs (mounted when the process may
mount: root on Linux; skipped with the reason otherwise).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tasks.io
from tasks.adapters import metrics as metrics_adapter
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.ledger import read_ledger, write_ledger
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.monitor import MonitorReport
from tasks.contracts.reports.predict import PredictResult
from tests.conftest import tiny_params_dict


class _FullDisk:
    """A file object that accepts ``room`` bytes, then fails every write with ENOSPC (what a full disk does)."""

    def __init__(self, handle: Any, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return int(self._handle.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.fixture
def full_disk(monkeypatch) -> Callable[[int], None]:
    """Make every file that ``tasks.io.atomic_open`` writes fail with ENOSPC after ``room`` bytes."""

    def fill(room: int) -> None:
        real = os.fdopen

        def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            return _FullDisk(real(fd, mode, *args, **kwargs), room)

        monkeypatch.setattr(tasks.io.os, "fdopen", fdopen)

    return fill


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, hidden ones included (a leftover temp file shows up here)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _params(root: Path) -> Params:
    return Params.model_validate(tiny_params_dict(root))


def _log_table(batch: str, n: int) -> Any:
    records = [
        prediction_log.ImageDetections(
            image_id=f"{batch}_{i:06d}",
            image_uri=f"file:///data/{batch}_{i:06d}.png",
            image_sha256=hashlib.sha256(f"{batch}{i}".encode()).hexdigest(),
            width=160,
            height=160,
            latency_ms=2.0,
            boxes_xyxy=np.array([[10.0, 10.0, 50.0, 60.0]] * 3),
            confidence=np.array([0.9, 0.5, 0.3]),
            class_id=np.array([0, 1, 2]),
        )
        for i in range(n)
    ]
    return prediction_log.rows_to_table(
        records,
        batch=batch,
        date=dt.date(2026, 11, 2),
        model_name="visionloop-detector",
        model_version="1",
        model_alias="champion",
        class_names=["circle", "triangle", "square", "star", "cross", "ring"],
    )


def _write_log(params: Params) -> None:
    prediction_log.append(params.base.paths.predictions, _log_table("2026-11-02", 200), part="batch=2026-11-02")


def _write_report(params: Params) -> None:
    record = PredictResult(model_name="visionloop-detector", model_version="2", alias="champion", wall_s=9.0)
    write_report(params.base.paths.reports, "predict", record, params)


def _write_ledger(params: Params) -> None:
    path = params.base.paths.labels / "ledger.parquet"
    rows = read_ledger(path)
    base = {
        "image_id": "x",
        "image_uri": "file:///x.png",
        "batch": "2026-11-02",
        "cycle": "c2",
        "status": "queued",
        "backend": "files",
        "project_id": None,
        "task_id": 1,
        "annotation_id": None,
        "annotation_updated_at": None,
        "task_updated_at": None,
        "n_boxes": None,
        "phash": None,
        "queued_at": dt.datetime(2026, 11, 3, tzinfo=dt.UTC),
        "updated_at": dt.datetime(2026, 11, 3, tzinfo=dt.UTC),
    }
    for i in range(50):
        sha = hashlib.sha256(f"new{i}".encode()).hexdigest()
        rows[sha] = {**base, "image_sha256": sha, "image_id": f"x{i}"}  # type: ignore[assignment]
    write_ledger(path, rows)


def _write_textfile(params: Params) -> None:
    report = MonitorReport(model_name="visionloop-detector", model_version="2", alias="champion", baseline={})
    metrics_adapter.write_textfile(report, params.base.paths.reports / "monitor" / "visionloop.prom", now=2.0)


WRITERS: dict[str, Callable[[Params], None]] = {
    "prediction log append": _write_log,
    "stage report": _write_report,
    "label ledger": _write_ledger,
    "json state": lambda params: tasks.io.write_json_atomic(
        params.base.paths.reports / "state.json", {"v": 2, "batches": [f"2026-11-{d:02d}" for d in range(1, 31)]}
    ),
}


def _stores(params: Params) -> None:
    """The state before the full disk: one of everything the writers above replace."""
    prediction_log.append(params.base.paths.predictions, _log_table("2026-11-02", 3), part="batch=2026-11-02")
    record = PredictResult(model_name="visionloop-detector", model_version="1", alias="champion")
    write_report(params.base.paths.reports, "predict", record, params)
    write_ledger(params.base.paths.labels / "ledger.parquet", {})
    tasks.io.write_json_atomic(params.base.paths.reports / "state.json", {"v": 1})
    report = MonitorReport(model_name="visionloop-detector", model_version="1", alias="champion", baseline={})
    metrics_adapter.write_textfile(report, params.base.paths.reports / "monitor" / "visionloop.prom", now=1.0)


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("room", [0, 100], ids=["at-once", "mid-file"])
def test_enospc_keeps_the_previous_state_and_leaves_no_temp_file(tmp_path, full_disk, writer, room):
    params = _params(tmp_path)
    _stores(params)
    before = snapshot(tmp_path)
    full_disk(room)
    with pytest.raises(OSError) as raised:
        WRITERS[writer](params)
    assert raised.value.errno == errno.ENOSPC or "No space left" in str(raised.value)
    assert snapshot(tmp_path) == before, "nothing changed, no temp file left"
    # and the stores still read
    assert prediction_log.read(params.base.paths.predictions).num_rows == 9
    assert load_report(params.base.paths.reports, "predict").model_version == "1"


def test_enospc_in_the_prometheus_textfile_keeps_the_old_file(tmp_path, monkeypatch):
    import prometheus_client.exposition as exposition

    params = _params(tmp_path)
    _stores(params)
    before = snapshot(tmp_path)
    real_open = open

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDisk(handle, 10) if "w" in mode else handle

    monkeypatch.setattr(exposition, "open", full_open, raising=False)
    with pytest.raises(OSError):
        _write_textfile(params)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------- a real full disk


@pytest.fixture
def tiny_tmpfs(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs (a real file system that fills up); skipped where this process may not mount."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root (the injected ENOSPC tests above still run)")
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this sandbox does not allow mounting a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_file_system_keeps_the_previous_log_and_report(tiny_tmpfs):
    params = _params(tiny_tmpfs)
    _stores(params)
    before = snapshot(tiny_tmpfs)
    with pytest.raises(OSError):
        tasks.io.write_bytes_atomic(params.base.paths.reports / "big.bin", os.urandom(512 * 1024))
    with pytest.raises(OSError):  # 20 000 images of random hashes: far more than the space left
        prediction_log.append(params.base.paths.predictions, _log_table("2026-11-02", 20_000), part="batch=2026-11-02")
    assert snapshot(tiny_tmpfs) == before
    assert prediction_log.read(params.base.paths.predictions).num_rows == 9
