"""A flow started against a server whose database is down stops at once, naming it, instead of dying on a 500.

Real HTTP servers on 127.0.0.1 answer as Prefect's and MLflow's do with and without their database (the stack test
in tests/stack/test_stack.py stops the stack's real PostgreSQL).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from flows import preflight
from tests.integration.conftest import free_port


def serve(status: int, body: bytes) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def answering(request):
    status, body = request.param
    yield from serve(status, body)


@pytest.mark.parametrize(
    ("answering", "variable", "path", "expected"),
    [
        pytest.param((200, b"true"), "PREFECT_API_URL", "/api", None, id="prefect-ready"),
        pytest.param(
            (503, b'{"message":"Database is not available"}'),
            "PREFECT_API_URL",
            "/api",
            r"Prefect API http://127\.0\.0\.1:\d+/api answers 503 to .*/api/ready \(Database is not available\): "
            r".*start PostgreSQL",
            id="prefect-without-database",
        ),
        pytest.param((200, b'{"experiments": []}'), "MLFLOW_TRACKING_URI", "", None, id="mlflow-ready"),
        pytest.param(
            (500, b"<h1>Internal Server Error</h1>"),
            "MLFLOW_TRACKING_URI",
            "",
            r"MLflow server http://127\.0\.0\.1:\d+ answers 500 .*\(<h1>Internal Server Error</h1>\).*nothing was run",
            id="mlflow-without-database",
        ),
        pytest.param((401, b"{}"), "MLFLOW_TRACKING_URI", "", None, id="mlflow-asks-for-keys-is-up"),
    ],
    indirect=["answering"],
)
def test_a_server_without_its_database_stops_the_flow_before_it_runs(answering, variable, path, expected):
    environ = {variable: answering + path}
    if expected is None:
        assert preflight.check_servers(environ) == [f"{variable.split('_')[0].lower()} {answering + path}"]
    else:
        with pytest.raises(preflight.ServerNotReady, match=expected):
            preflight.check_servers(environ)


def test_a_server_nobody_listens_on_is_named():
    url = f"http://127.0.0.1:{free_port()}/api"
    with pytest.raises(preflight.ServerNotReady, match=rf"Prefect API {url} is not reachable .*make stack-up"):
        preflight.check_servers({"PREFECT_API_URL": url}, timeout_s=2)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="nothing-set"),
        pytest.param({"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, id="embedded-mlflow"),
    ],
)
def test_the_embedded_stores_need_no_check(environ):
    assert preflight.check_servers(environ) == []


def test_the_command_line_says_why_and_exits_non_zero(monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    with pytest.raises(SystemExit) as exited:
        preflight.require_servers()
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith("not started: Prefect API http://127.0.0.1:")
