"""The monitor's Prometheus textfile and the endpoint ``make metrics`` serves (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks.adapters.metrics import serving, write_textfile
from tasks.contracts.audit import newest_promotion, read_audit
from tasks.contracts.reports.monitor import Agreement, MonitorReport, Signal, Trigger, Window


def _report() -> MonitorReport:
    window = Window(
        key="2026-11-03",
        date="2026-11-03",
        source=None,
        images=150,
        boxes=420,
        batches=["2026-11-03"],
        drifted=True,
        signals=[
            Signal("brightness", "input", "ks", 0.61, 1e-20, 0.61, 2.3, 141.0, 66.0, drifted=True),
            Signal("class_mix", "output", "chi2", available=False, note="no boxes"),
        ],
        latency_ms={"p50": 4.0, "p95": 6.5, "p99": None},
        errors={"decode": 2},
        agreement=Agreement("3", 15, 0.8, 0.9, 0.4, 1.2),
    )
    by_source = [Window(key="2026-11-03", date="2026-11-03", source="line-2", images=75, boxes=200, drifted=True)]
    return MonitorReport(
        model_name="visionloop-detector",
        model_version="2",
        alias="champion",
        baseline={"from": "artifact", "images": 100, "sets": ["val"]},
        windows=[window],
        by_source=by_source,
        flagged_batches=["2026-11-03"],
        drift_confirmed=True,
        trigger=Trigger(fire=True, confirmed=True, reason="drift in 2 windows", batches=["2026-11-03"]),
    )


def test_textfile_follows_prometheus_conventions(tmp_path):
    path = write_textfile(_report(), tmp_path / "monitor" / "visionloop.prom", now=1_800_000_000.0)
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert all(name.startswith("visionloop_") for name in families)
    latency = {s.labels["quantile"]: s.value for s in families["visionloop_prediction_latency_seconds"].samples}
    assert latency == {"0.50": pytest.approx(0.004), "0.95": pytest.approx(0.0065)}, "seconds, p99 unknown left out"
    effect = families["visionloop_drift_effect"].samples
    assert [(s.labels["signal"], s.labels["side"], s.value) for s in effect] == [("brightness", "input", 0.61)]
    drifted = {s.labels["source"]: s.value for s in families["visionloop_drift_detected"].samples}
    assert drifted == {"all": 1.0, "line-2": 1.0}
    errors = families["visionloop_prediction_errors"].samples
    assert [(s.labels["kind"], s.value) for s in errors] == [("decode", 2.0)]
    assert families["visionloop_retrain_triggered"].samples[0].value == 1.0
    assert not list(path.parent.glob("*.tmp*")), "written through a temp file and renamed"


def test_the_endpoint_serves_the_newest_textfile_and_nothing_else(tmp_path):
    textfile = tmp_path / "visionloop.prom"
    with serving(textfile) as url:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url, timeout=5)
        assert missing.value.code == 503
        write_textfile(_report(), textfile, now=1.0)
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = answer.read().decode()
            assert answer.headers["Content-Type"].startswith("text/plain")
        assert body == textfile.read_text()
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(url.replace("/metrics", "/secrets"), timeout=5)
        assert other.value.code == 404
        assert url.startswith("http://127.0.0.1:")


def test_newest_promotion_is_the_champions_last_arrival_by_promotion(tmp_path):
    path = tmp_path / "aliases.jsonl"
    head = '{"who": "a", "action": "promote", "model": "m", "alias": "champion", "why": "x", '
    lines = [
        head + '"ts": "t1", "from_version": null, "to_version": "1"}',
        head + '"ts": "t2", "from_version": "1", "to_version": "2"}',
        '{"torn',
    ]
    path.write_text("\n".join(lines) + "\n")
    assert len(read_audit(path)) == 2, "a torn last line is skipped"
    found = newest_promotion(Path(path), model="m", to_version="2")
    assert found is not None and found.from_version == "1"
    assert newest_promotion(path, model="m", to_version="1") is None, "v1 is not the champion's newest arrival"
    with path.open("a") as handle:
        handle.write(
            '{"ts": "t3", "who": "a", "action": "rollback", "model": "m", "alias": "champion", "from_version": "2", '
            '"to_version": "1", "why": "x"}\n'
        )
    assert newest_promotion(path, model="m", to_version="1") is None, "arrived by rollback: nothing to watch"
    assert newest_promotion(tmp_path / "none.jsonl", model="m", to_version="1") is None
