"""Prefect server on SQLite vs PostgreSQL: task runs per second under bursts of tiny tasks, and where it stalls.

For each backend a ``prefect server start`` on 127.0.0.1 (a free port, its own ``PREFECT_HOME`` in a temp folder):
SQLite (``sqlite+aiosqlite`` in that folder) or PostgreSQL 15 (a throw-away cluster made by
``deploy/local/stack.py``'s ``init_postgres``/``start_postgres`` on a free port, ``postgresql+asyncpg``). The same
client (this script with ``--client``, a child process with ``PREFECT_API_URL``) then runs one flow per burst: the
flow maps ``B`` tasks that return at once over a ``ThreadPoolTaskRunner(max_workers=B)`` (B = 50, 100, 200, ...),
and the client polls ``/task_runs/count`` until the server has recorded all ``B`` runs as COMPLETED.

Per burst: ``client s`` (submit to all results in the flow), ``server s`` (burst start until the server holds all
``B`` completed runs), runs/s = ``B / server s``, and the warnings the client logged (Prefect's own retries on 503
"database is locked" and the like). A burst stalls when it raises, is not recorded within ``--timeout`` seconds, or
its per-task server time exceeds ``--stall-factor`` times the first burst's; larger bursts are not run after a
stall. Everything runs on 127.0.0.1 and stops by itself. Prints a table and writes
``reports/benchmarks/prefect_backends.json``.

    python benchmarks/prefect_backends.py [--bursts 50,100,200,400,800] [--backends sqlite,postgresql] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from dvc_scale import host  # noqa: E402  (beside this script: sys.path[0] when run)

START_TIMEOUT_S = 120.0


# ------------------------------------------------------------------ the client (a child process)


class _Counter(logging.Handler):
    """Counts WARNING+ records of Prefect's loggers and keeps the first few messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(record.getMessage()[:200])


def _count_completed(api: str, flow_run_id: str) -> int:
    body = {
        "flow_runs": {"id": {"any_": [flow_run_id]}},
        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    request = urllib.request.Request(
        f"{api}/task_runs/count", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(json.loads(answer.read()))


def stall_reasons(
    size: int, *, recorded: int, server_s: float, first_per_task: float, timeout: float, stall_factor: float
) -> list[str]:
    """Why a burst of ``size`` tasks counts as stalled (empty: it did not).

    Args:
        size: tasks in the burst.
        recorded: COMPLETED task runs the server held when polling stopped.
        server_s: seconds from the burst's start until then.
        first_per_task: seconds per task of the first burst (the baseline).
        timeout: the polling limit in seconds.
        stall_factor: how many times the baseline's per-task time a burst may take.
    """
    reasons = []
    if recorded < size:
        reasons.append(f"{recorded}/{size} recorded after {timeout:.0f} s")
    per_task = server_s / size
    if per_task > stall_factor * first_per_task:
        reasons.append(f"{per_task * 1e3:.0f} ms/task > {stall_factor:g}x the first burst's")
    return reasons


def client(bursts: list[int], *, timeout: float, stall_factor: float) -> list[dict[str, Any]]:
    """Run one flow per burst against ``$PREFECT_API_URL``; one result row per burst (see the module docstring)."""
    from prefect import flow, task
    from prefect.runtime import flow_run
    from prefect.task_runners import ThreadPoolTaskRunner

    api = os.environ["PREFECT_API_URL"]
    counter = _Counter()
    logging.getLogger("prefect").addHandler(counter)

    @task
    def tiny(i: int) -> int:
        return i

    rows: list[dict[str, Any]] = []
    first_per_task: float | None = None
    for size in bursts:
        runner: ThreadPoolTaskRunner[int] = ThreadPoolTaskRunner(max_workers=size)

        # Prefect's stubs want TaskRunner[PrefectFuture]; the thread runner's futures are a subclass (invariant generic)
        @flow(name=f"burst-{size}", task_runner=runner, log_prints=False)  # type: ignore[arg-type]
        def burst(n: int) -> tuple[str, float, float]:
            start = time.time()
            results = tiny.map(range(n)).result()
            assert results == list(range(n)), "a task returned the wrong value"
            return str(flow_run.id), start, time.time() - start

        before = counter.count
        row: dict[str, Any] = {"tasks": size}
        flow_start = time.perf_counter()
        try:
            run_id, start, client_s = burst(size)
        except Exception as exc:  # the stall we look for: report it, run no larger burst
            row.update(stalled=True, error=f"{type(exc).__name__}: {exc}"[:300])
            rows.append(row)
            print(json.dumps(row), flush=True)
            break
        row["flow_s"] = round(time.perf_counter() - flow_start, 2)
        row["client_s"] = round(client_s, 2)
        recorded = 0
        while time.time() - start < timeout:
            with contextlib.suppress(OSError):
                recorded = _count_completed(api, run_id)
            if recorded >= size:
                break
            time.sleep(0.2)
        server_s = time.time() - start
        row.update(server_s=round(server_s, 2), recorded=recorded, warnings=counter.count - before)
        row["runs_per_s"] = round(recorded / server_s, 1)
        first_per_task = first_per_task or server_s / size
        reasons = stall_reasons(
            size,
            recorded=recorded,
            server_s=server_s,
            first_per_task=first_per_task,
            timeout=timeout,
            stall_factor=stall_factor,
        )
        row["stalled"] = bool(reasons)
        if reasons:
            row["error"] = "; ".join(reasons)
        row["warning_samples"] = counter.samples[-3:] if row["warnings"] else []
        rows.append(row)
        print(json.dumps(row), flush=True)
        if reasons:
            break
    return rows


# ------------------------------------------------------------------ the servers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
        return bool(answer.status == 200)
    return False


@contextlib.contextmanager
def prefect_server(home: Path, database_url: str) -> Iterator[tuple[str, int]]:
    """``prefect server start`` on a free port of 127.0.0.1 with this database; yields (API URL, pid)."""
    from tasks.env import read_env_file

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**read_env_file(), **os.environ}
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    log = (home / "server.log").open("wb")
    command = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(api):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (home / "server.log").read_text()[-1500:]
                raise RuntimeError(f"prefect server ({api}, {database_url.split(':')[0]}) did not start:\n{tail}")
            time.sleep(0.5)
        yield api, server.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def database(backend: str, root: Path) -> Iterator[str]:
    """The Prefect database URL of ``backend``: a SQLite file, or a throw-away PostgreSQL 15 cluster (stopped after)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{root / 'prefect.db'}"
        return
    from deploy.local import stack as pg

    # initdb runs as the postgres user when we are root: the cluster goes in a folder of its own under the system's
    # temp dir (a pytest tmp_path or a 0700 temp folder above it would shut that user out)
    own = Path(tempfile.mkdtemp(prefix="prefect-backends-pg-"))
    blocked = [str(p) for p in own.parents if os.geteuid() == 0 and not os.stat(p).st_mode & 0o001]
    if blocked:
        shutil.rmtree(own)
        raise RuntimeError(f"PostgreSQL's folder {own}: the postgres user cannot traverse {blocked}; set TMPDIR=/tmp")
    os.chmod(own, 0o755)
    cluster = pg.Stack(root=own, ports={"postgres": free_port()})
    try:
        pg.init_postgres(cluster)
        pg.start_postgres(cluster)
        try:
            yield cluster.database_url("prefect", driver="asyncpg")
        finally:
            pg.stop_postgres(cluster)
    finally:
        shutil.rmtree(own, ignore_errors=True)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (the server's uvicorn and services) in MiB."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(proc.name) == pid or int(stat[2]) == pid:  # ppid
                status = (proc / "status").read_text()
                total += int(status.split("VmRSS:")[1].split()[0])
    return round(total / 1024, 1)


def combine(per_client: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per burst over the clients that ran it at the same time: summed tasks and records, the slowest times.

    A burst counts as stalled when any client's did; bursts a client never reached (it stopped at a stall) are
    left out of that burst's row, and its row is stalled.
    """
    rows = []
    for index in range(max((len(c) for c in per_client), default=0)):
        mine = [c[index] for c in per_client if len(c) > index]
        row: dict[str, Any] = {"tasks": sum(r["tasks"] for r in mine), "clients": len(mine)}
        for key in ("flow_s", "client_s", "server_s"):
            if all(key in r for r in mine):
                row[key] = max(r[key] for r in mine)
        row["recorded"] = sum(r.get("recorded", 0) for r in mine)
        row["warnings"] = sum(r.get("warnings", 0) for r in mine)
        if "server_s" in row:
            row["runs_per_s"] = round(row["recorded"] / row["server_s"], 1)
        errors = [r["error"] for r in mine if r.get("error")]
        if len(mine) < len(per_client):
            errors.append(f"{len(per_client) - len(mine)} of {len(per_client)} clients stopped at an earlier stall")
        row["stalled"] = any(r.get("stalled") for r in mine) or len(mine) < len(per_client)
        if errors:
            row["error"] = "; ".join(errors)[:300]
        rows.append(row)
    return rows


def run_backend(
    backend: str, bursts: list[int], root: Path, *, timeout: float, stall_factor: float, clients: int = 1
) -> dict[str, Any]:
    """Start the backend and its server, run ``clients`` client processes at once, stop both; the backend's result."""
    root.mkdir(parents=True)
    started = time.perf_counter()
    with database(backend, root) as url, prefect_server(root / "prefect-home", url) as (api, pid):
        start_s = time.perf_counter() - started
        command = [sys.executable, __file__, "--client", "--bursts", ",".join(map(str, bursts))]
        command += ["--timeout", str(timeout), "--stall-factor", str(stall_factor)]
        children = [
            subprocess.Popen(
                command,
                env={**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(root / f"client-home-{k}")},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(clients)
        ]
        child_timeout = (timeout + 120) * len(bursts) + 120
        outputs = [child.communicate(timeout=child_timeout) for child in children]
        per_client = [[json.loads(x) for x in out.splitlines() if x.startswith("{")] for out, _ in outputs]
        server_rss = rss_mib(pid)
    for child, (_, err), got in zip(children, outputs, per_client, strict=True):
        if child.returncode != 0 and not got:
            raise RuntimeError(f"{backend}: a client failed ({child.returncode}):\n{err[-2000:]}")
    rows = combine(per_client)
    for row in rows:
        print_row(backend, row)
    log = (root / "prefect-home" / "server.log").read_text(errors="replace").splitlines()
    return {
        "backend": backend,
        "server_start_s": round(start_s, 1),
        "server_rss_mib": server_rss,
        "clients": clients,
        "per_client": per_client,
        "server_log": {
            "database_locked": sum("database is locked" in line for line in log),
            "error_lines": sum("ERROR" in line or "Traceback" in line for line in log),
        },
        "bursts": rows,
    }


HEADER = f"{'backend':<11}{'tasks':>6}{'flow s':>8}{'client s':>9}{'server s':>9}{'runs/s':>8}{'warnings':>9}  stalled"


def print_row(backend: str, row: dict[str, Any]) -> None:
    def num(key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "-"

    stalled = f"yes: {row.get('error', '')}" if row.get("stalled") else "no"
    print(
        f"{backend:<11}{row['tasks']:>6}{num('flow_s'):>8}{num('client_s'):>9}{num('server_s'):>9}"
        f"{row.get('runs_per_s', 0):>8.1f}{row.get('warnings', 0):>9}  {stalled}",
        flush=True,
    )


def run(
    backends: list[str],
    bursts: list[int],
    *,
    timeout: float,
    stall_factor: float,
    clients: int = 1,
    root: Path | None = None,
) -> dict[str, Any]:
    """Every backend, the same bursts, the same client; the report."""
    import prefect

    load_before = os.getloadavg()
    wall = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="prefect-backends-", dir=root) as tmp:
        for backend in backends:
            results.append(
                run_backend(
                    backend, bursts, Path(tmp) / backend, timeout=timeout, stall_factor=stall_factor, clients=clients
                )
            )
    summary = {}
    for result in results:
        ok = [r for r in result["bursts"] if not r.get("stalled")]
        stalled = [r["tasks"] for r in result["bursts"] if r.get("stalled")]
        summary[result["backend"]] = {
            "best_runs_per_s": max((r["runs_per_s"] for r in ok), default=0.0),
            "largest_clean_burst": max((r["tasks"] for r in ok), default=0),
            "stalled_at": stalled[0] if stalled else None,
        }
    return {
        "results": results,
        "summary": summary,
        "bursts": bursts,
        "clients": clients,
        "timeout_s": timeout,
        "stall_factor": stall_factor,
        "prefect": prefect.__version__,
        "wall_s": round(time.perf_counter() - wall, 1),
        "host": host() | {"load_before": load_before, "load_after": os.getloadavg()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--bursts", default="50,100,200,400,800", help="tasks per burst, increasing")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the server to record a burst")
    parser.add_argument("--stall-factor", type=float, default=5.0, help="per-task time vs the first burst's")
    parser.add_argument("--clients", type=int, default=1, help="client processes running the bursts at once")
    parser.add_argument("--quick", action="store_true", help="bursts 20,40 only")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help="where the temp folder goes (default: $TMPDIR)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    bursts = [20, 40] if args.quick else [int(x) for x in args.bursts.split(",") if x]
    if args.client:
        client(bursts, timeout=args.timeout, stall_factor=args.stall_factor)
        return None
    from tasks.config import load_params
    from tasks.env import apply_env
    from tasks.io import write_json_atomic

    apply_env()
    print(HEADER, flush=True)
    report = run(
        [b for b in args.backends.split(",") if b],
        bursts,
        timeout=args.timeout,
        stall_factor=args.stall_factor,
        clients=args.clients,
        root=args.root,
    )
    print(f"{args.clients} client process(es) at once; tasks = all clients' tasks of the burst")
    for backend, s in report["summary"].items():
        print(
            f"{backend}: best {s['best_runs_per_s']:.1f} runs/s, largest clean burst {s['largest_clean_burst']}, "
            f"stalled at {s['stalled_at'] or 'none of the bursts'}"
        )
    h = report["host"]
    print(f"wall {report['wall_s']:.0f} s; {h['cpu']} ({h['isa']}), {h['cores']} cores, load {h['load_before'][0]:.1f}")
    out = (
        args.out
        or load_params(PROJECT_ROOT / "params.yaml").base.paths.reports / "benchmarks" / "prefect_backends.json"
    )
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
