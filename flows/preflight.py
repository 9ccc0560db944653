"""Before a flow starts from the command line: are the servers it was pointed at able to work?

With the embedded stores (no ``PREFECT_API_URL``, a ``sqlite:`` MLflow store) there is nothing to check. On the
server stack a server can answer while its database is down: Prefect's ``/api/health`` still says true and
MLflow's ``/health`` says OK, and the flow then dies on a 500 in the middle of its first call. :func:`check_servers`
asks each the question that needs its database (Prefect's ``/api/ready``, an MLflow experiment search) and stops
before anything runs, naming the server, its answer and the fix.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from tasks.config import VisionloopError

TIMEOUT_S = 10.0


class ServerNotReady(VisionloopError, RuntimeError):
    """A configured server does not answer, or answers without its database."""


def _ask(url: str, timeout_s: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status, answer.read(300).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(300).decode(errors="replace")


def _detail(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return " ".join(body.split())[:120]
    message = parsed.get("message") or parsed.get("exception_message") if isinstance(parsed, dict) else None
    return str(message or parsed)[:120]


def check_servers(environ: Mapping[str, str] | None = None, *, timeout_s: float = TIMEOUT_S) -> list[str]:
    """Check the Prefect API and the MLflow tracking server named in the environment, if any.

    Returns:
        what was checked (``"prefect http://..."``, ``"mlflow http://..."``); empty for the embedded stores.

    Raises:
        ServerNotReady: a server is unreachable or cannot reach its database (the message names it and the fix).
    """
    env = os.environ if environ is None else environ
    checked: list[str] = []
    prefect = (env.get("PREFECT_API_URL") or "").rstrip("/")
    if prefect:
        _check(f"Prefect API {prefect}", f"{prefect}/ready", timeout_s)
        checked.append(f"prefect {prefect}")
    mlflow = (env.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    if mlflow.startswith(("http://", "https://")):
        _check(f"MLflow server {mlflow}", f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1", timeout_s)
        checked.append(f"mlflow {mlflow}")
    return checked


def _check(what: str, url: str, timeout_s: float) -> None:
    try:
        status, body = _ask(url, timeout_s)
    except OSError as err:  # URLError is one
        reason = getattr(err, "reason", err)
        raise ServerNotReady(
            f"{what} is not reachable ({reason}): start it (make stack-up on the local stack) or unset the variable "
            "to use the embedded store; nothing was run"
        ) from None
    if status in (401, 403) or 200 <= status < 300:
        return  # up (an authenticated server answers a bare request with 401/403: the flow's client has the keys)
    raise ServerNotReady(
        f"{what} answers {status} to {url.split('?')[0]} ({_detail(body)}): the server is up but cannot use its "
        "database; start PostgreSQL (make stack-up on the local stack; make stack-status says which service is "
        "down); nothing was run"
    )


def require_servers() -> None:
    """:func:`check_servers` for a command line: the reason on stderr and exit status 1 instead of a traceback."""
    try:
        check_servers()
    except ServerNotReady as exc:
        print(f"not started: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
