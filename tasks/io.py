"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

KILL_BEFORE_RENAME_ENV = "VISIONLOOP_KILL_BEFORE_RENAME"
"""Tests only: the file name at whose rename :func:`atomic_open` kills its own process (see there)."""


@contextmanager
def atomic_open(path: Path, *, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Open a hidden temp file beside ``path`` for writing; on success fsync it and rename it over ``path``.

    The temp file is ``.<name>.<pid>.<random><suffix>`` in the same folder (a leading dot hides it from PyArrow, the
    suffix from ``*.parquet`` globs); on any error it is removed and ``path`` is untouched. After the rename the
    folder is fsynced too, so the rename itself survives a crash. A process killed mid-write (SIGKILL, power loss)
    cannot remove its temp file: the next successful write of ``path`` removes those whose process is gone.

    Tests only: with ``VISIONLOOP_KILL_BEFORE_RENAME=<name>`` in the environment the process SIGKILLs itself when
    a file of that name is fully written but not yet renamed (tests/reliability/test_killed_stages.py).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if os.environ.get(KILL_BEFORE_RENAME_ENV) == path.name:  # tests only: a crash at the worst moment
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    _remove_dead_temps(path, suffix)


def _remove_dead_temps(path: Path, suffix: str) -> None:
    """Remove the temp files of ``path`` whose writer process no longer exists (a live writer's are kept)."""
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = stale.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # pragma: no cover, directories cannot be opened this way on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a hidden temp file beside ``path``, fsync it, then rename over ``path``."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (non-JSON values such as paths become strings)."""
    return write_bytes_atomic(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def json_lines(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """``rows`` as JSON lines (keys sorted), the one format of every trail :func:`read_json_lines` reads."""
    return "".join(json.dumps(dict(row), sort_keys=True) + "\n" for row in rows).encode()


def append_json_lines(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` to a JSON-lines trail in one ``write`` + fsync (a crash leaves at most a torn last line)."""
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json_lines(rows)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(line number, row)`` of a JSON-lines trail, oldest first; ``row`` is ``None`` for an unreadable (torn) line.

    Nothing when the file does not exist yet; blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        return
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        yield lineno, row if isinstance(row, dict) else None


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written ``staging`` folder to ``target``, replacing what was there.

    The old folder is renamed aside (``.<name>.old``) first and removed only after the new one is in place, so a
    crash leaves the old or the new folder at ``target``, except between the two renames: then ``target`` is
    missing and ``.<name>.old`` holds it (``make doctor`` says to move it back; the next run replaces it anyway).
    """
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        shutil.rmtree(old)
