"""The ingest endpoint's HTTP plumbing: a small stdlib server on 127.0.0.1 that hands each POST body to the stage.

``tasks/ingest.py --serve`` builds it with :func:`make_server`; what a body means (parsing, checks, the append) is the
stage's ``handle`` callback, so this module only speaks HTTP:

* ``POST /predictions`` with ``Content-Length``: the body (at most ``max_bytes``; larger is refused with 413 before a
  byte of it is read; the server speaks HTTP/1.0, so a client that sends ``Expect: 100-continue`` gets the 413
  instead of a ``100 Continue`` and never sends the body) and its ``Content-Type`` go to ``handle``, whose
  ``(status, JSON object)`` is the answer. No length: 411. An exception in ``handle``: 500, logged with its traceback.
* ``GET /health``: 200 ``{"ok": true}``. Anything else: 404.

The stdlib server (one thread per request) is enough: a request's work is one Parquet append under the stage's file
lock, and the endpoint is meant for a gateway or sidecar on the same host, not the open network (it binds
127.0.0.1 only and has no authentication: put a reverse proxy with TLS and auth in front for anything else).
"""

from __future__ import annotations

import http.server
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PATH = "/predictions"
Handle = Callable[[bytes, str], tuple[int, dict[str, Any]]]
"""``handle(body, content_type) -> (HTTP status, JSON object)``."""


class _Handler(http.server.BaseHTTPRequestHandler):
    handle_body: Handle
    max_bytes: int
    server_version = "visionloop-ingest"

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = (json.dumps(payload, default=str) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _length(self) -> int | None:
        """The body's length when acceptable; otherwise answers (411/413/400), closes, and returns None."""
        header = self.headers.get("Content-Length")
        problem = None
        if header is None:
            problem = 411, "Content-Length is required"
        elif not header.isdigit():
            problem = 400, f"Content-Length {header!r} is not a number"
        elif int(header) > self.max_bytes:
            problem = 413, f"body of {header} bytes exceeds ingest.max_request_bytes = {self.max_bytes}"
        if problem is None:
            return int(header or 0)
        self.close_connection = True  # the unread body must not be taken for the next request
        self._answer(problem[0], {"error": problem[1]})
        return None

    def do_POST(self) -> None:
        if self.path != PATH:
            self.close_connection = True
            self._answer(404, {"error": f"POST {PATH} with prediction records"})
            return
        length = self._length()
        if length is None:
            return
        body = self.rfile.read(length)
        try:
            status, payload = self.handle_body(body, self.headers.get("Content-Type", ""))
        except Exception as exc:  # the server lives on; the client gets the reason
            log.exception("ingest request failed")
            status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._answer(status, payload)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": f"POST {PATH} with prediction records; GET /health"})

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight: an append is never cut short


def make_server(handle: Handle, *, port: int, max_bytes: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:``port`` (0 = any free port) answering ``POST /predictions`` with ``handle``."""
    handler = type("IngestHandler", (_Handler,), {"handle_body": staticmethod(handle), "max_bytes": max_bytes})
    return _Server((HOST, port), handler)


def serve_until_stopped(server: http.server.ThreadingHTTPServer) -> None:
    """Serve until SIGINT or SIGTERM, then stop accepting and let the requests in flight finish (main thread only)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="ingest-http", daemon=True)
    thread.start()
    try:
        while not stop.wait(timeout=1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def serving(handle: Handle, *, port: int = 0, max_bytes: int) -> Iterator[str]:
    """Serve in a background thread; yields the ``/predictions`` URL, stops on exit."""
    server = make_server(handle, port=port, max_bytes=max_bytes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}{PATH}"
    finally:
        server.shutdown()
        server.server_close()
