"""Leases: one holder at a time of a named lock on the model registry, across processes, clones and hosts.

The lock lives where the registry lives (:func:`hold` chooses, for :func:`tasks.adapters.mlflow.registry_lock`):

* **an MLflow tracking server** (``http``/``https``): :func:`mlflow_lease`, a registered model of a reserved name
  (``<model>.lease``, ``<model>.cycle-lease``). Creating a registered model is atomic on the server: its unique
  name constraint answers ``RESOURCE_ALREADY_EXISTS`` to every creator but one, so that constraint is the mutex,
  shared by every clone and host that uses the server. The lease's tags name its holder (``host``, ``pid``, flow
  ``run``, a random ``token``) and its ``acquired_at`` / ``expires_at`` (ISO UTC, the holder's clock: hosts need
  synchronised clocks, to well within ``promote.lease_ttl_s``). A heartbeat thread of the holder pushes
  ``expires_at`` forward every third of the TTL; release deletes the model. A lease past ``expires_at`` (its
  holder died or lost the server), or one held by a process of this host that no longer exists, is stale: the next
  contender breaks it, with a warning naming the old holder. Breaking runs under a second, short lease
  (``<name>.break``) and re-reads the lease first, so two contenders never break a fresh lease one of them just
  took. The lease shows in MLflow's model list while it is held (MLflow has no hidden registered models); it is
  tagged ``visionloop.lease = true`` and described as a lock. visionloop only ever looks up its model by exact name,
  so a lease is never read as a model.
* **the embedded store** (SQLite in the checkout): :func:`file_lease`, an OS file lock (``flock``) beside the audit
  trail, with the holder written next to it for the error message. The OS drops the lock of a process that dies, so
  a crash never leaves it held.

Both raise :class:`LeaseHeldError` naming the holder, since when, and what to do, once ``timeout_s`` has passed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from tasks.config import Params, VisionloopError
from tasks.io import pid_alive, write_json_atomic

log = logging.getLogger(__name__)

TAG = "visionloop.lease"  # "true" on every lease; its fields are "visionloop.lease.<field>"
BREAK_TTL_S = 30.0  # a breaker holds its lease for milliseconds; one older than this died while breaking
_POLL_S = 0.25


class LeaseHeldError(VisionloopError, TimeoutError):
    """Another process holds the lease (and still did when the wait ended)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease.

    Attributes:
        host, pid: the holding process.
        run: the flow run (or ``user@host``) that took it; ``-`` when unknown.
        token: random, unique per acquisition (a release or renewal only touches its own lease).
        acquired_at, expires_at: ISO UTC; ``expires_at`` is ``""`` for a file lock (the OS frees it on a crash).
    """

    host: str
    pid: int
    run: str
    token: str
    acquired_at: str
    expires_at: str = ""

    @classmethod
    def new(cls, *, run: str | None, ttl_s: float | None) -> Holder:
        now = _now()
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            run=run or os.environ.get("PREFECT__FLOW_RUN_ID") or "-",
            token=uuid.uuid4().hex,
            acquired_at=now.isoformat(timespec="milliseconds"),
            expires_at=_in(ttl_s) if ttl_s is not None else "",
        )

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Holder | None:
        """The holder a lease's tags name; ``None`` when they are not a lease's (a model of that very name)."""
        fields = {f.name: tags.get(f"{TAG}.{f.name}") for f in dataclasses.fields(cls)}
        if tags.get(TAG) != "true" or fields["token"] is None:
            return None
        pid = fields.pop("pid") or "0"
        return cls(pid=int(pid) if pid.isdigit() else 0, **{k: v or "" for k, v in fields.items()})

    def tags(self) -> dict[str, str]:
        return {TAG: "true", **{f"{TAG}.{k}": str(v) for k, v in dataclasses.asdict(self).items()}}

    def describe(self) -> str:
        return f"run {self.run} (pid {self.pid} on {self.host}) since {self.acquired_at}"

    def stale(self, now: dt.datetime | None = None) -> str | None:
        """Why this lease may be broken (its expiry passed, or its process on this host is gone); ``None``: live."""
        if self.expires_at and dt.datetime.fromisoformat(self.expires_at) < (now or _now()):
            return f"expired at {self.expires_at}"
        if self.host == socket.gethostname() and self.pid > 0 and not pid_alive(self.pid):
            return f"process {self.pid} no longer runs on {self.host}"
        return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _in(seconds: float) -> str:
    return (_now() + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def held_message(what: str, where: str, holder: Holder | None, *, waited_s: float, fix: str) -> str:
    """The error of a lease that stayed held: the lock, where it lives, its holder and since when, the fix."""
    who = holder.describe() if holder else "a holder that did not say who it is"
    expiry = f", lease expires {holder.expires_at} unless renewed" if holder and holder.expires_at else ""
    return f"{what} ({where}) is held by {who}{expiry}; waited {waited_s:g} s: {fix}"


def hold(
    params: Params, *, store: str, client: Callable[[], Any], holder: str | None, cycle: bool
) -> AbstractContextManager[Holder]:
    """The registry lock (``cycle``: the cycle lease) of ``registry.model_name`` on the store ``store``.

    Args:
        params: ``registry.model_name``, ``promote.audit_log`` (the file locks' folder), ``promote.lock_timeout_s``
            (the registry lock's wait; the cycle lease is tried once), ``promote.lease_ttl_s``.
        store: the tracking URI; ``http(s)://`` means a server, and a lease on it.
        client: makes the ``MlflowClient`` of that server.
        holder: the flow run (or ``user@host``) taking it, for whoever finds it held.
    """
    model = params.registry.model_name
    if cycle:
        kind, timeout_s, what = "cycle", 0, "the continuous-learning cycle lease"
        fix = (
            "one cycle at a time: let that run finish (see it in the Prefect UI); if it is dead, the lease frees "
            f"itself (a server lease within promote.lease_ttl_s = {params.promote.lease_ttl_s:g} s)"
        )
    else:
        kind, timeout_s, what = "lock", params.promote.lock_timeout_s, "the registry lock"
        fix = "wait for it to finish, or raise promote.lock_timeout_s"
    if store.startswith(("http://", "https://")):
        name = f"{model}.lease" if kind == "lock" else f"{model}.{kind}-lease"
        return mlflow_lease(
            client(),
            name,
            ttl_s=params.promote.lease_ttl_s,
            timeout_s=timeout_s,
            run=holder,
            what=what,
            where=f"lease {name} on {store}",
            fix=fix,
        )
    path = params.promote.audit_log.with_name(f".{model}.lock" if kind == "lock" else f".{model}.{kind}.lock")
    return file_lease(path, timeout_s=timeout_s, run=holder, what=what, fix=fix)


# --------------------------------------------------------------------------------------------- file lock


@contextmanager
def file_lease(path: Path, *, timeout_s: float, run: str | None, what: str, fix: str) -> Iterator[Holder]:
    """Hold the OS file lock ``path`` (waiting up to ``timeout_s``; 0: one try); its holder is written beside it.

    Raises:
        LeaseHeldError: still held after ``timeout_s``, naming the holder.
    """
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name + ".holder.json")
    lock = FileLock(str(path), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise LeaseHeldError(
            held_message(what, str(path), _current_holder(sidecar), waited_s=timeout_s, fix=fix)
        ) from None
    holder = Holder.new(run=run, ttl_s=None)
    try:
        write_json_atomic(sidecar, dataclasses.asdict(holder))
        yield holder
    finally:
        if (_read_sidecar(sidecar) or holder).token == holder.token:
            sidecar.unlink(missing_ok=True)
        lock.release()


def _current_holder(sidecar: Path, *, patience_s: float = 2.0) -> Holder | None:
    """The holder a held file lock names: its holder writes it just after taking the lock (or the file is a crashed
    holder's leftover, naming a process that is gone), so give it a moment to appear."""
    deadline = time.monotonic() + patience_s
    while True:
        holder = _read_sidecar(sidecar)
        if (holder is not None and holder.stale() is None) or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


def _read_sidecar(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # absent (between acquire and write) or not ours
        return None


# --------------------------------------------------------------------------------------------- MLflow lease


def _create(client: Any, name: str, holder: Holder, what: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, tags=holder.tags(), description=f"visionloop lease, not a model: {what}; deleted on release"
        )
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    return True


def _read(client: Any, name: str) -> tuple[bool, Holder | None]:
    """``(exists, holder)`` of the registered model ``name``."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False, None
        raise
    return True, Holder.from_tags(model.tags or {})


def _delete(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _break_if_stale(client: Any, name: str, seen: Holder) -> bool:
    """Delete the lease ``name`` if it is still ``seen`` and stale; under the breaker lease. ``True``: now free."""
    breaker = f"{name}.break"
    if not _create(client, breaker, Holder.new(run=None, ttl_s=BREAK_TTL_S), f"breaking {name}"):
        exists, other = _read(client, breaker)
        if exists and other is not None and other.stale():  # a contender that died while breaking
            _delete(client, breaker)
        return False
    try:
        exists, current = _read(client, name)
        if not exists:
            return True
        if current is None or current.token != seen.token or not (why := current.stale()):
            return False  # re-checked: a lease taken (or renewed) meanwhile is never broken
        log.warning("breaking the stale lease %s of %s: %s", name, current.describe(), why)
        _delete(client, name)
        return True
    finally:
        _delete(client, breaker)


class _Heartbeat(threading.Thread):
    """Pushes the lease's ``expires_at`` forward every third of the TTL while its holder lives."""

    def __init__(self, client: Any, name: str, holder: Holder, ttl_s: float) -> None:
        super().__init__(name=f"lease-heartbeat-{name}", daemon=True)
        self.client, self.lease, self.holder, self.ttl_s = client, name, holder, ttl_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.ttl_s / 3):
            try:
                _, current = _read(self.client, self.lease)
                if current is None or current.token != self.holder.token:
                    log.error("lease %s was broken while %s held it", self.lease, self.holder.describe())
                    return
                self.client.set_registered_model_tag(self.lease, f"{TAG}.expires_at", _in(self.ttl_s))
            except Exception as exc:  # the server blinked: the next beat tries again before the lease expires
                log.warning("lease %s: renewal failed (%s)", self.lease, exc)


@contextmanager
def mlflow_lease(
    client: Any, name: str, *, ttl_s: float, timeout_s: float, run: str | None, what: str, where: str, fix: str
) -> Iterator[Holder]:
    """Hold the MLflow-side lease ``name`` (a registered model) on ``client``'s server.

    Args:
        client: an ``MlflowClient`` on the tracking server.
        name: the lease's registered-model name.
        ttl_s: how long the lease outlives its holder's last heartbeat.
        timeout_s: how long to wait for another holder (0: one try, after breaking a stale lease).
        run: the holder's flow run (default: ``PREFECT__FLOW_RUN_ID``, else ``-``).
        what, where, fix: for the error message.

    Raises:
        LeaseHeldError: still held by a live holder after ``timeout_s``.
    """
    started = time.monotonic()
    while True:
        holder = Holder.new(run=run, ttl_s=ttl_s)
        if _create(client, name, holder, what):
            break
        exists, current = _read(client, name)
        if not exists or (current is not None and current.stale() and _break_if_stale(client, name, current)):
            continue  # released or broken meanwhile: try again at once
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise LeaseHeldError(held_message(what, where, current, waited_s=round(waited, 1), fix=fix))
        time.sleep(min(_POLL_S * (1 + random.random()), max(timeout_s - waited, 0.01)))
    heartbeat = _Heartbeat(client, name, holder, ttl_s)
    heartbeat.start()
    try:
        yield holder
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
        _, current = _read(client, name)
        if current is not None and current.token == holder.token:
            _delete(client, name)
        else:
            log.error("lease %s was no longer held by %s at release: it was broken", name, holder.describe())
