"""A fault-injecting HTTP proxy for tests: forwards to a real service, or fails the requests a script names.

Each request is matched against the rules in order (``"<METHOD> <path?query>"`` searched with a regex); the first
matching rule takes its next action (the last one repeats), a request no rule matches is forwarded. Actions:

- ``forward``: pass the request to the upstream service and its answer back;
- ``503``: answer ``503 Service Unavailable`` (with ``Retry-After: 0``: clients that honour it retry at once);
- ``hang``: read the request and never answer (until the proxy closes): the client's timeout must fire;
- ``reset``: close the connection with a TCP reset, no answer;
- ``forward-503``: forward (the service does the work) but answer 503: the answer was lost on the way back.

:meth:`FaultProxy.refuse` stops listening, so new connections are refused. Every request is recorded
(:attr:`FaultProxy.seen`) with the action taken. The proxy listens on 127.0.0.1 only, one thread per connection,
``Connection: close`` on every answer (one request per connection, so counting is exact), and stops by itself
after ``lifetime_s`` even if a test forgets to close it.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

ACTIONS = ("forward", "503", "hang", "reset", "forward-503")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Rule:
    """Requests whose ``"<METHOD> <path>"`` matches ``pattern`` get ``actions`` in turn; the last one repeats."""

    pattern: str
    actions: Sequence[str]
    taken: list[str] = field(default_factory=list)

    def next_action(self) -> str:
        action = self.actions[min(len(self.taken), len(self.actions) - 1)]
        self.taken.append(action)
        return action


@dataclass(frozen=True)
class Seen:
    """One request the proxy received and what it did with it."""

    method: str
    path: str
    action: str


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``), scripted by rules."""

    def __init__(self, upstream: str, *, lifetime_s: float = 600.0, upstream_timeout_s: float = 120.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.upstream_timeout_s = upstream_timeout_s
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listening = True
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        self._watchdog = threading.Timer(lifetime_s, self.close)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, pattern: str, *actions: str) -> Rule:
        """Add a rule: requests matching ``pattern`` get ``actions`` in turn (the last repeats)."""
        unknown = [a for a in actions if a not in ACTIONS]
        if not actions or unknown:
            raise ValueError(f"actions must be a non-empty sequence of {ACTIONS}, got {actions}")
        rule = Rule(pattern, actions)
        with self._lock:
            self.rules.append(rule)
        return rule

    def count(self, pattern: str = "", action: str | None = None) -> int:
        """How many requests matching ``pattern`` (and handled with ``action``, when given) the proxy received."""
        with self._lock:
            return sum(
                1
                for s in self.seen
                if re.search(pattern, f"{s.method} {s.path}") and (action is None or s.action == action)
            )

    def refuse(self) -> None:
        """Stop listening: from now on connections to :attr:`url` are refused (the port stays unused)."""
        with self._lock:
            listening, self._listening = self._listening, False
        if listening:
            self._server.shutdown()
            self._server.server_close()

    def close(self) -> None:
        """Stop listening and release every hanging request (idempotent; also called by the lifetime watchdog)."""
        if self._closed.is_set():
            return
        self._closed.set()  # first: the hanging requests end, their threads with them
        self._watchdog.cancel()
        self.refuse()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            action = "forward"
            for rule in self.rules:
                if re.search(rule.pattern, f"{method} {path}"):
                    action = rule.next_action()
                    break
            self.seen.append(Seen(method, path, action))
            return action


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads FaultProxy.seen

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        self.close_connection = True
        body = self._body()
        action = proxy._decide(self.command, self.path)
        if action == "hang":
            proxy._closed.wait()
            return
        if action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        answer = self._forward(proxy, body) if action in ("forward", "forward-503") else None
        if answer is None or action != "forward":
            self._send(503, [("Retry-After", "0"), ("Content-Type", "text/plain")], b"injected by faultproxy\n")
            return
        self._send(*answer)

    def _forward(self, proxy: FaultProxy, body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout_s)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
            return response.status, kept, data
        except OSError:
            return None  # the upstream failed: the client sees a 503, as from a real gateway
        finally:
            conn.close()

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        try:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            pass  # the client gave up (its timeout): nothing to tell it

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle
