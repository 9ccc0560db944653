"""The ingest endpoint as a client sees it: ``python -m tasks.ingest --serve`` started as its own process on a free
port of 127.0.0.1, real HTTP requests (urllib), every answer (200, 422, 400, 413, 404), and concurrent posts of
overlapping records (the file lock: each prediction logged once, every part whole).

Also the crash: the CLI SIGKILLed when its part is fully written but not yet renamed
(``VISIONLOOP_KILL_BEFORE_RENAME``) leaves the log readable and unchanged, and running it again completes it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import doctor
from tasks.adapters import ingest_http
from tasks.config import Params
from tasks.contracts import ingest_rows
from tasks.contracts import prediction_log as plog
from tasks.env import PROJECT_ROOT
from tasks.io import KILL_BEFORE_RENAME_ENV
from tests.conftest import tiny_params_dict
from tests.integration.conftest import free_port
from tests.unit.test_ingest import box, record, write_jsonl

pytestmark = pytest.mark.integration

MAX_ROWS, MAX_BYTES = 50, 40_000


def params_file(root: Path, **ingest: Any) -> Path:
    data = tiny_params_dict(root)
    data["ingest"].update(ingest)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def command(params: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tasks.ingest", "--params", str(params), *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **extra}
    if KILL_BEFORE_RENAME_ENV not in extra:
        env.pop(KILL_BEFORE_RENAME_ENV, None)
    return env


class Endpoint:
    def __init__(self, url: str, params: Params) -> None:
        self.url, self.params = url, params

    def post(self, body: bytes, content_type: str = "application/json", path: str = "/predictions") -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def post_rows(self, rows: list[Any]) -> tuple[int, Any]:
        return self.post(json.dumps(rows).encode())


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    root = tmp_path_factory.mktemp("ingest-http")
    port = free_port()
    path = params_file(root, port=port, max_request_rows=MAX_ROWS, max_request_bytes=MAX_BYTES)
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(command(path, "--serve"), cwd=root, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # a server that cannot start fails the test (CI or not): nothing here is optional
            assert proc.poll() is None, f"ingest server exited {proc.returncode}: {(root / 'server.log').read_text()}"
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                    assert json.loads(answer.read()) == {"ok": True}
                    break
            except OSError:
                assert time.monotonic() < deadline, f"ingest server not up in 60 s: {(root / 'server.log').read_text()}"
                time.sleep(0.1)
        yield Endpoint(url, Params.model_validate(yaml.safe_load(path.read_text())))
    finally:
        proc.send_signal(signal.SIGTERM)  # what a service manager sends: requests in flight finish
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (root / "server.log").read_text()
    assert "serving on http://127.0.0.1:" in (root / "server.log").read_text()


def logged(params: Params, batch: str) -> list[dict[str, Any]]:
    return [row for row in plog.read(params.base.paths.predictions).to_pylist() if row["batch"] == batch]


def test_good_records_are_added_and_a_repeat_adds_nothing(endpoint):
    rows = [record(n, batch="http-good") for n in (1, 2)] + [record(3, batch="http-good", detections=[])]
    status, answer = endpoint.post_rows(rows)
    assert (status, answer["added_images"], answer["added_rows"], answer["refused"]) == (200, 3, 3, [])
    status, again = endpoint.post_rows(rows)
    assert (status, again["already_ingested"], again["added_images"]) == (200, True, 0)
    assert len(logged(endpoint.params, "http-good")) == 3


def test_bad_records_get_422_with_each_reason_and_the_good_ones_are_added(endpoint):
    rows = [record(10, batch="http-bad"), record(11, batch="http-bad", detections=box(class_id=99, x2=500.0))]
    body = "".join(json.dumps(row) + "\n" for row in rows).encode() + b"{broken\n"
    status, answer = endpoint.post(body, content_type="application/x-ndjson")
    assert (status, answer["format"], answer["added_images"], answer["quarantined"]) == (422, "jsonl", 1, 2)
    refused = {item["line"]: item["reasons"] for item in answer["refused"]}
    assert [r["field"] for r in refused[2]] == ["detections[0].class_id"]
    assert refused[3][0]["check"] == "json"
    assert Path(answer["quarantine_file"]).is_file()
    assert [row["image_id"] for row in logged(endpoint.params, "http-bad")] == ["cam1-00010"]


ANSWERS: dict[str, tuple[str, bytes, str, int, str]] = {
    "not-json": ("/predictions", b"{not json", "application/json", 400, "not JSON"),
    "not-an-array": ("/predictions", b'"text"', "application/json", 400, "expected a JSON array"),
    "no-records": ("/predictions", b"[]", "application/json", 400, "no prediction records"),
    "too-many-rows": (
        "/predictions",
        json.dumps([{}] * (MAX_ROWS + 1)).encode(),
        "application/json",
        413,
        "max_request_rows",
    ),
    "too-many-bytes": ("/predictions", b" " * (MAX_BYTES + 1), "application/json", 413, "max_request_bytes"),
    "wrong-path": ("/other", b"[]", "application/json", 404, "POST /predictions"),
}


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "message"), list(ANSWERS.values()), ids=list(ANSWERS)
)
def test_a_request_that_cannot_be_ingested_is_answered_and_adds_nothing(
    endpoint, path, body, content_type, status, message
):
    before = plog.read(endpoint.params.base.paths.predictions).num_rows
    got, answer = endpoint.post(body, content_type=content_type, path=path)
    assert (got, message in answer["error"]) == (status, True), answer
    assert plog.read(endpoint.params.base.paths.predictions).num_rows == before


def test_a_too_large_body_announced_with_expect_100_continue_is_refused_before_it_is_sent(endpoint):
    host, port = endpoint.url.removeprefix("http://").split(":")
    headers = (  # what curl sends for a body over 1 MB: the headers, then the body only after "100 Continue"
        f"POST /predictions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {50 * MAX_BYTES}\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(headers.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"413", answer  # no "100 Continue" first


def test_concurrent_posts_of_overlapping_records_log_each_prediction_once(endpoint):
    posts = [[record(100 + n, batch="http-race") for n in range(start, start + 30)] for start in range(0, 60, 10)]
    with ThreadPoolExecutor(max_workers=len(posts)) as pool:
        answers = list(pool.map(endpoint.post_rows, posts))
    distinct = {r["image_sha256"] for rows in posts for r in rows}
    assert sum(a["added_images"] for _, a in answers) == len(distinct)
    assert sum(a["duplicates"] for _, a in answers) == sum(len(p) for p in posts) - len(distinct)
    rows = logged(endpoint.params, "http-race")  # read validates every part: none is half-written
    assert sorted(r["image_sha256"] for r in rows) == sorted(distinct)


def raw_status(url: str, request: bytes) -> int:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return int(sock.recv(4096).split(b"\r\n", 1)[0].split()[1])


def test_a_failing_handler_gets_500_and_the_server_lives_on():
    def handle(body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        raise RuntimeError("disk on fire")

    with ingest_http.serving(handle, max_bytes=100) as url:
        status, answer = Endpoint(url.removesuffix("/predictions"), None).post(b"[]")  # type: ignore[arg-type]
        assert (status, answer["error"]) == (500, "RuntimeError: disk on fire")
        assert raw_status(url, b"POST /predictions HTTP/1.1\r\nHost: x\r\n\r\n") == 411  # no Content-Length
        with urllib.request.urlopen(url.removesuffix("/predictions") + "/health", timeout=5) as health:
            assert health.status == 200


def test_the_server_binds_loopback_only():
    server = ingest_http.make_server(lambda body, content_type: (200, {}), port=0, max_bytes=10)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_a_cli_killed_before_its_part_is_renamed_leaves_the_log_as_it_was(tmp_path):
    path = params_file(tmp_path)
    params = Params.model_validate(yaml.safe_load(path.read_text()))
    first = write_jsonl(tmp_path / "first.jsonl", [record(n) for n in range(1, 4)])
    subprocess.run(command(path, str(first)), cwd=tmp_path, env=clean_env(), check=True, capture_output=True)
    before = plog.read(params.base.paths.predictions)
    rows = [record(n, detections=box(confidence=0.5)) for n in range(10, 2010)]
    second = write_jsonl(tmp_path / "second.jsonl", rows)
    part = f"ingest={ingest_rows.ingest_id(ingest_rows.read_input(second, 'jsonl'))}.parquet"

    killed = subprocess.run(
        command(path, str(second)), cwd=tmp_path, env=clean_env(**{KILL_BEFORE_RENAME_ENV: part}), capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert plog.read(params.base.paths.predictions).equals(before), "a reader sees the log as it was"
    day = params.base.paths.predictions / "date=2026-12-01"
    assert not (day / part).exists() and list(day.glob(f".{part}.*.tmp")), "only a hidden temp file is left"

    again = subprocess.run(command(path, str(second)), cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["added_images"] == len(rows)
    assert plog.read(params.base.paths.predictions).num_rows == before.num_rows + len(rows)
    assert not list(day.glob(f".{part}.*.tmp")), "the next write of the part removed the dead one's temp file"
    _, findings = doctor.check_temp_files(params)
    assert findings == [], findings


def test_the_ingest_flow_ingests_a_file(tmp_path, prefect_harness):
    from flows.ingest import ingest as ingest_flow

    path = params_file(tmp_path)
    rows = [record(1), record(2, detections=box(confidence=7.0))]
    report = ingest_flow(path=str(write_jsonl(tmp_path / "in.jsonl", rows)), params_path=str(path))
    assert (report.added_images, report.quarantined, report.reasons) == (1, 1, {"range detections[].confidence": 1})
