"""A real ``moto_server`` (S3 and the other AWS APIs, in memory) on 127.0.0.1 for the tests that talk to S3.

Use::

    with s3_server(tmp_path) as server:          # started, answering, stopped afterwards
        server.apply(monkeypatch)                # boto3, DVC and s3fs in this process now talk to it
        subprocess.run(..., env=os.environ | server.env)   # or hand the env to a child

A server that does not answer within 30 s skips the test, and fails it under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

START_TIMEOUT_S = 30.0
ACCESS_KEY = "visionloop-test-key"
SECRET_KEY = "visionloop-test-secret"  # moto accepts any credentials unless started with auth=True
REGION = "us-east-1"
# client settings that would reach past the test server: a user's profile, a session token, the EC2 metadata service
UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN")


@dataclass(frozen=True)
class S3Server:
    """A running moto_server.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        env: the client environment pointing at it (endpoint, region, test credentials, no user profile).
        log: the server's output.
    """

    endpoint_url: str
    env: dict[str, str] = field(repr=False)
    log: Path

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's AWS clients at the server (undone after the test)."""
        for name in UNSET:
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()


def unique_bucket(stem: str = "vl") -> str:
    """A bucket name no other test uses."""
    return f"{stem}-{uuid.uuid4().hex[:12]}"


def _client_env(url: str, root: Path) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_ENDPOINT_URL": url,  # IAM too: tests with free_actions make their access keys there
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(root / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _ready(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as answer:
        return bool(answer.status == 200)
    return False


def _give_up(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@contextlib.contextmanager
def s3_server(root: Path, *, free_actions: int | None = None) -> Iterator[S3Server]:
    """Start ``moto_server -H 127.0.0.1 -p <free port>`` (output in ``root/moto.log``); stop it afterwards.

    Args:
        root: a folder for the log and the (absent) AWS config files.
        free_actions: enforce IAM authentication after this many requests (moto's ``INITIAL_NO_AUTH_ACTION_COUNT``):
            from then on only access keys made through the server's IAM API are accepted, and signatures are
            checked. Default ``None``: any credentials are accepted.
    """
    root.mkdir(parents=True, exist_ok=True)
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.is_file():
        _give_up(f"{executable} is missing (moto[server] is in requirements.lock: make setup)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if free_actions is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(free_actions)
    log_path = root / "moto.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(url):
            if server.poll() is not None or time.monotonic() > deadline:
                _give_up(f"moto_server did not start ({url}): {log_path.read_text()[-1500:]}")
            time.sleep(0.1)
        yield S3Server(endpoint_url=url, env=_client_env(url, root), log=log_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
