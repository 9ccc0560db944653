"""Alerts through Prefect's webhook notification block to a real HTTP receiver on 127.0.0.1 (Prefect test harness)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from flows import alerts
from tasks.config import Params
from tasks.cycle import CycleState
from tests.conftest import tiny_params_dict
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

HOOK_ENV = "VISIONLOOP_TEST_ALERT_WEBHOOK"


@dataclass
class Receiver:
    url: str
    received: list[dict] = field(default_factory=list)
    status: int = 200  # what the receiver answers


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 that keeps every JSON body it is sent."""
    state = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.received.append(json.loads(body))
            self.send_response(state.status)
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/alerts"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.setattr(alerts, "_warned_unset", set())  # "no webhook configured" is logged once per process
    data = tiny_params_dict(tmp_path)
    data["monitor"]["alerts"].update(webhook_env=HOOK_ENV, timeout_s=3)
    return Params.model_validate(data)


def test_an_alert_arrives_as_json_with_its_flow_run(params, receiver, monkeypatch, prefect_harness):
    from prefect import flow

    monkeypatch.setenv(HOOK_ENV, receiver.url)

    @flow(name="alerting")
    def alerting() -> tuple[bool, str]:
        from prefect.runtime import flow_run

        sent = alerts.alert(params, "drift", "drift confirmed on {{camera-2}}", "batches 2026-11-02, 2026-11-03")
        return sent, flow_run.name

    sent, run_name = alerting()
    assert sent is True
    assert receiver.received == [
        {
            "event": "drift",
            "title": "drift confirmed on {{camera-2}}",  # braces are text, never template placeholders
            "body": "batches 2026-11-02, 2026-11-03",
            "project": params.base.project,
            "flow_run": run_name,
        }
    ]


def test_no_webhook_configured_sends_nothing_and_says_so_once(params, receiver, monkeypatch, caplog):
    monkeypatch.delenv(HOOK_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="flows.alerts"):
        assert alerts.alert(params, "rollback", "rolled back", "v3 -> v2") is False
        assert alerts.alert(params, "rollback", "rolled back again", "v2 -> v1") is False
    assert receiver.received == []
    unset = [r for r in caplog.records if "no webhook configured" in r.getMessage()]
    assert len(unset) == 1 and f"(set ${HOOK_ENV})" in unset[0].getMessage()


def test_an_event_that_is_switched_off_is_not_sent(tmp_path, receiver, monkeypatch):
    data = tiny_params_dict(tmp_path)
    data["monitor"]["alerts"].update(webhook_env=HOOK_ENV, events=["failed_run"])
    monkeypatch.setenv(HOOK_ENV, receiver.url)
    params = Params.model_validate(data)
    assert alerts.alert(params, "drift", "drift", "off") is False
    assert alerts.alert(params, "failed_run", "failed", "on") is True
    assert [r["event"] for r in receiver.received] == ["failed_run"]


def test_a_receiver_that_is_down_or_failing_never_fails_the_caller(params, receiver, monkeypatch, caplog):
    monkeypatch.setenv(HOOK_ENV, f"http://127.0.0.1:{free_port()}/alerts")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="flows.alerts"):
        assert alerts.alert(params, "rollback", "rolled back", "v3 -> v2") is False
    assert any("not delivered" in r.getMessage() and "ConnectError" in r.getMessage() for r in caplog.records)
    receiver.status = 500
    monkeypatch.setenv(HOOK_ENV, receiver.url)
    assert alerts.alert(params, "rollback", "rolled back", "v3 -> v2") is False  # it answered, with an error
    assert len(receiver.received) == 1


def test_a_failing_flow_run_sends_failed_run(tmp_path, receiver, monkeypatch, prefect_harness):
    from flows.rollback import rollback

    data = tiny_params_dict(tmp_path)
    data["monitor"]["alerts"]["webhook_env"] = HOOK_ENV  # read from the run's own params file
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv(HOOK_ENV, receiver.url)

    state = rollback(params_path=str(params_file), return_state=True)  # an empty registry: nothing to roll back to

    assert state.is_failed()
    (sent,) = receiver.received
    assert sent["event"] == "failed_run" and sent["title"].startswith("rollback run ")
    assert sent["flow_run"] and sent["flow_run"] in sent["title"]
    assert "no 'previous' alias" in sent["body"]


def test_a_params_file_that_does_not_load_still_alerts_with_the_defaults(
    tmp_path, receiver, monkeypatch, prefect_harness
):
    from flows.predict import predict

    monkeypatch.setenv("VISIONLOOP_ALERT_WEBHOOK", receiver.url)  # the default monitor.alerts.webhook_env
    state = predict(params_path=str(tmp_path / "missing.yaml"), return_state=True)
    assert state.is_failed()
    (sent,) = receiver.received
    assert sent["event"] == "failed_run" and "params file not found" in sent["body"]


def _state(hours_ago: float) -> CycleState:
    started = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)).isoformat()
    return CycleState(cycle="20261102T030000Z", status="waiting", started_at=started, updated_at=started)


@pytest.mark.parametrize(
    ("hours_ago", "sent"),
    [pytest.param(50.0, True, id="past-the-48h-deadline"), pytest.param(1.0, False, id="within-the-deadline")],
)
def test_labels_waiting_past_the_deadline_alerts(params, receiver, monkeypatch, hours_ago, sent):
    from flows.continuous_learning import _alert_if_labels_overdue

    monkeypatch.setenv(HOOK_ENV, receiver.url)
    _alert_if_labels_overdue(params, _state(hours_ago), "2 of 4 images labeled")
    assert [r["event"] for r in receiver.received] == (["labels_waiting"] if sent else [])
    if sent:
        assert "has waited 50 h for labels (deadline 48 h)" in receiver.received[0]["title"]


@pytest.mark.parametrize(
    ("started_at", "deadline", "overdue"),
    [
        pytest.param("2026-11-01T00:00:00+00:00", 48.0, 72.0, id="overdue"),
        pytest.param("2026-11-02T00:00:00+00:00", 48.0, None, id="in-time"),
        pytest.param("2026-11-02T00:00:00", 12.0, 48.0, id="naive-is-utc"),
        pytest.param("2026-11-04T00:00:00+00:00", 0.0, None, id="exactly-now"),
    ],
)
def test_labels_overdue(started_at, deadline, overdue):
    now = dt.datetime(2026, 11, 4, tzinfo=dt.UTC)
    assert alerts.labels_overdue(started_at, deadline_hours=deadline, now=now) == overdue
