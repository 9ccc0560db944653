from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.env import PROJECT_ROOT

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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real Label Studio with a fresh data dir, shared by the modules that use it (see :func:`labelstudio_env`)."""
    built = run_make("labelstudio", timeout=1800)
    if built.returncode != 0:
        pytest.skip(f"the Label Studio venv cannot be built (make labelstudio): {(built.stdout + built.stderr)[-800:]}")
    root = tmp_path_factory.mktemp("labelstudio")
    port, data = free_port(), root / "server-data"
    settings = [
        f"LABEL_STUDIO_PORT={port}",
        f"LABEL_STUDIO_DATA={data}",
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}",
        f"LABEL_STUDIO_API_KEY={TOKEN}",
        "LABEL_STUDIO_START_TIMEOUT=240",
    ]
    up = run_make("labelstudio-up", *settings, timeout=300)
    try:
        log = (data / "server.log").read_text()[-2000:] if (data / "server.log").exists() else ""
        assert up.returncode == 0, f"make labelstudio-up failed:\n{up.stdout}\n{up.stderr}\n{log}"
        yield Server(url=f"http://127.0.0.1:{port}", root=root, data=data)
    finally:
        down = run_make("labelstudio-down", f"LABEL_STUDIO_DATA={data}", timeout=60)
        assert down.returncode == 0 and "stopped pid" in down.stdout, down.stdout + down.stderr


@pytest.fixture(scope="module")
def labelstudio_env(server: Server) -> Iterator[Server]:
    """The client environment pointed at :func:`server` for one module only (it must not leak into other tests)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABEL_STUDIO_API_KEY", TOKEN)
        mp.setenv("LABEL_STUDIO_URL", server.url)
        mp.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(server.root))
        yield server
