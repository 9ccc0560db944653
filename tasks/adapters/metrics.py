"""The monitor's numbers in Prometheus exposition format: a textfile for node-exporter's textfile collector, and a
small HTTP endpoint on 127.0.0.1 that serves it (``make metrics``).

Names follow the Prometheus conventions: a ``visionloop_`` prefix, base units (seconds), ``_ratio`` for shares,
``_total`` for counts that only grow; labels carry the signal, side and source, never a window or image id (one
series per label set, overwritten by each monitor run).

The textfile is written by :func:`prometheus_client.write_to_textfile` (temp file + rename: node-exporter never reads
half a file). Serving reads the file on each scrape, so the endpoint shows whatever the newest monitor run wrote.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tasks.contracts.reports.monitor import MonitorReport, Window

log = logging.getLogger(__name__)

ALL_SOURCES = "all"


def _window_gauges(registry: CollectorRegistry) -> dict[str, Gauge]:
    labels = ["source"]
    return {
        "images": Gauge("visionloop_window_images", "Images in the newest judged window", labels, registry=registry),
        "boxes": Gauge("visionloop_window_detections", "Detections in the newest window", labels, registry=registry),
        "drifted": Gauge(
            "visionloop_drift_detected", "1 when the newest window drifted from the baseline", labels, registry=registry
        ),
        "latency": Gauge(
            "visionloop_prediction_latency_seconds",
            "Model latency per image in the newest window, by quantile",
            [*labels, "quantile"],
            registry=registry,
        ),
        "errors": Gauge(
            "visionloop_prediction_errors",
            "Images that failed in the newest window",
            [*labels, "kind"],
            registry=registry,
        ),
        "effect": Gauge(
            "visionloop_drift_effect",
            "Effect size of a signal vs the baseline (KS statistic, Cramer's V, share difference)",
            [*labels, "signal", "side"],
            registry=registry,
        ),
        "p_value": Gauge(
            "visionloop_drift_p_value",
            "Two-sample test p-value of a signal",
            [*labels, "signal", "side"],
            registry=registry,
        ),
        "psi": Gauge(
            "visionloop_drift_psi",
            "Population stability index of a signal",
            [*labels, "signal", "side"],
            registry=registry,
        ),
        "value": Gauge(
            "visionloop_signal_value",
            "A signal's summary in the window (mean or share)",
            [*labels, "signal", "side"],
            registry=registry,
        ),
        "baseline": Gauge(
            "visionloop_signal_baseline_value",
            "A signal's summary in the champion's baseline (mean or share)",
            [*labels, "signal", "side"],
            registry=registry,
        ),
    }


def _fill_window(gauges: dict[str, Gauge], window: Window, source: str) -> None:
    gauges["images"].labels(source).set(window.images)
    gauges["boxes"].labels(source).set(window.boxes)
    gauges["drifted"].labels(source).set(int(window.drifted))
    for quantile, ms in window.latency_ms.items():
        if ms is not None:
            gauges["latency"].labels(source, "0." + quantile.removeprefix("p")).set(ms / 1000.0)
    for kind, count in window.errors.items():
        gauges["errors"].labels(source, kind).set(count)
    for signal in window.signals:
        if not signal.available:
            continue
        key = (source, signal.name, signal.side)
        for name, value in (
            ("effect", signal.effect),
            ("p_value", signal.p_value),
            ("psi", signal.psi),
            ("value", signal.window),
            ("baseline", signal.baseline),
        ):
            if value is not None:
                gauges[name].labels(*key).set(value)


def registry_of(report: MonitorReport, *, now: float) -> CollectorRegistry:
    """The report's newest window (all sources, then each source), the trigger, the watch and the shadow."""
    registry = CollectorRegistry()
    info = Gauge("visionloop_champion_info", "The champion the monitor judged", ["model", "version"], registry=registry)
    info.labels(report.model_name, report.model_version).set(1)
    Gauge("visionloop_monitor_last_run_timestamp_seconds", "When the monitor last ran", registry=registry).set(now)
    Gauge("visionloop_monitor_windows", "Windows judged in the last run", registry=registry).set(len(report.windows))
    Gauge(
        "visionloop_drift_flagged_batches", "Batches of drifted windows (the drift sampler's input)", registry=registry
    ).set(len(report.flagged_batches))
    Gauge("visionloop_drift_confirmed", "1 when drift is confirmed in k windows in a row", registry=registry).set(
        int(report.drift_confirmed)
    )
    trigger = report.trigger
    Gauge("visionloop_retrain_triggered", "1 when the last run decided to start a cycle", registry=registry).set(
        int(bool(trigger and trigger.fire))
    )
    watch = report.watch
    Gauge(
        "visionloop_watch_regressed", "1 when the newest promotion regressed against previous", registry=registry
    ).set(int(bool(watch and watch.regressed)))
    Gauge("visionloop_watch_rolled_back", "1 when the monitor rolled the champion back", registry=registry).set(
        int(bool(watch and watch.rolled_back))
    )
    gauges = _window_gauges(registry)
    if report.windows:
        newest = report.windows[-1]
        _fill_window(gauges, newest, ALL_SOURCES)
        for window in report.by_source:
            if window.key == newest.key and window.source:
                _fill_window(gauges, window, window.source)
        if newest.agreement is not None:
            shadow = Gauge(
                "visionloop_shadow_agreement_ratio",
                "Champion vs shadow in the newest window",
                ["shadow_version", "measure"],
                registry=registry,
            )
            agreement = newest.agreement
            for measure, value in (
                ("matched_boxes", agreement.matched_box_rate),
                ("class", agreement.class_agreement),
                ("latency", agreement.latency_ratio),
            ):
                if value is not None:
                    shadow.labels(agreement.shadow_version, measure).set(value)
    return registry


def write_textfile(report: MonitorReport, path: Path, *, now: float) -> Path:
    """Write the report's metrics to ``path`` (atomically: temp file + rename); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry_of(report, now=now))
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    textfile: Path

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics")
            return
        try:
            body = self.textfile.read_bytes()
        except OSError as exc:
            self.send_error(503, f"{self.textfile}: no metrics yet ({exc.strerror}); run the monitor first")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: " + format, *args)


def make_server(textfile: Path, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:``port`` (0 = any free port) serving ``textfile`` at ``/metrics``."""
    handler = type("MetricsHandler", (_Handler,), {"textfile": Path(textfile)})
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


@contextmanager
def serving(textfile: Path, port: int = 0) -> Iterator[str]:
    """Serve ``textfile`` in a background thread; yields the ``/metrics`` URL, stops on exit."""
    server = make_server(textfile, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
