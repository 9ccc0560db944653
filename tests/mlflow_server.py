"""A real ``mlflow server`` on 127.0.0.1 for the tests that need server mode (leases, services down)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import free_port


@contextlib.contextmanager
def mlflow_server(root: Path, *, workers: int = 1) -> Iterator[str]:
    """Start ``mlflow server`` (SQLite store and served artifacts under ``root``) and yield its URL; stop it after.

    A server that does not answer ``/health`` within 120 s skips the test, and fails it under ``CI=true``.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "a")]
    command += ["--workers", str(workers)]
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            time.sleep(0.5)
        else:
            why = f"mlflow server did not start ({url}): {(root / 'server.log').read_text()[-1500:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
