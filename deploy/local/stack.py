"""The server stack on 127.0.0.1, one switch away from the embedded default (SQLite MLflow, temporary Prefect).

``python -m deploy.local.stack up|down|status|env|exec -- CMD`` (``make stack-up`` / ``make stack-down``;
``make demo STACK=server`` runs the demo under ``exec``). Services, in start order:

- ``postgres``: PostgreSQL 15 from the Debian package (``/usr/lib/postgresql/15/bin``), a cluster of its own in
  ``<dir>/pg`` listening on 127.0.0.1 only (TCP, no Unix socket), password auth; databases ``mlflow`` and
  ``prefect``. initdb refuses to run as root: as root the cluster belongs to the package's ``postgres`` user and
  its commands run through ``runuser -u postgres``; as anyone else, to that user. Missing binaries are installed
  with apt-get when we are root (and said so), else the error names the package.
- ``s3``: ``moto_server`` (in memory: objects are gone after ``down``), or npm ``s3rver`` (``STACK_S3=s3rver``,
  persisted under ``<dir>/s3rver``; installed with npm into ``<dir>/npm`` when missing). The buckets in
  :data:`BUCKETS` are created at every ``up``.
- ``mlflow``: ``mlflow server`` with the PostgreSQL backend store (``postgresql+psycopg``) and
  ``--artifacts-destination s3://visionloop-mlflow/mlartifacts`` (clients upload through the server).
- ``prefect-server``: ``prefect server start`` on PostgreSQL (``postgresql+asyncpg``), then the process work pool
  ``visionloop-local`` (the pool of every prefect.yaml deployment) and ``prefect-worker`` on it.

Everything lives in ``STACK_DIR`` (default ``.cache/stack``, git-ignored): the cluster, ``run/*.pid``,
``logs/*.log``, ``secrets.env`` (the cluster's generated password, mode 0600, servers only) and ``stack.env``, the
variables clients need (:data:`CLIENT_ENV`). Ports come from ``STACK_PG_PORT``, ``STACK_S3_PORT``,
``STACK_MLFLOW_PORT``, ``STACK_PREFECT_PORT`` (defaults in :data:`SERVICES`, the same as the Makefile's and
deploy/compose.yaml's). ``down`` stops every process group ``up`` started (and the cluster), idempotent;
``up`` on a running stack starts nothing and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PG_PACKAGE = "postgresql-15"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "visionloop"  # the cluster's superuser and owner of both databases (a cluster of this stack only)
DATABASES = ("mlflow", "prefect")
WORK_POOL = "visionloop-local"  # prefect.yaml: every deployment's work_pool.name
BUCKETS = {"mlflow": "visionloop-mlflow", "dvc": "visionloop-dvc", "data": "visionloop-data"}
MLFLOW_ARTIFACTS = f"s3://{BUCKETS['mlflow']}/mlartifacts"
DVC_REMOTE = f"s3://{BUCKETS['dvc']}/remote"
S3_BACKENDS = ("moto", "s3rver")
# The local stack's own dummy keys: moto accepts any, s3rver only its fixed pair. Never a real account's.
S3_KEYS = {"moto": ("visionloop-local-stack", "visionloop-local-stack-not-a-secret"), "s3rver": ("S3RVER", "S3RVER")}
REGION = "us-east-1"
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Service:
    """One service: its port variable and default (None: no port), and its name in deploy/compose.yaml."""

    port_env: str | None
    default_port: int | None
    compose: str


# Default ports sit below Linux's default ephemeral range (32768-60999): a port in it can be held for a moment by an
# outgoing connection's local end (a busy S3 client makes thousands), and the stack then fails to start on it.
EPHEMERAL_START = 32768
SERVICES: dict[str, Service] = {
    "postgres": Service("STACK_PG_PORT", 25432, "postgres"),
    "s3": Service("STACK_S3_PORT", 29000, "minio"),
    "mlflow": Service("STACK_MLFLOW_PORT", 25000, "mlflow"),
    "prefect-server": Service("STACK_PREFECT_PORT", 24200, "prefect-server"),
    "prefect-worker": Service(None, None, "prefect-worker"),
}
# What clients (flows, tests, the stock MLflow/Prefect/boto3 clients) need, written to stack.env: the same names as
# deploy/compose.yaml's client environment and deploy/.env.example.
CLIENT_ENV = (
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "VISIONLOOP_HOME",
)


class StackError(RuntimeError):
    """The stack cannot start or stop; the message names the service, the log and the fix when known."""


@dataclass(frozen=True)
class Stack:
    """Where the stack lives and on which ports; :meth:`from_env` reads the ``STACK_*`` variables."""

    root: Path
    ports: dict[str, int]
    s3_backend: str = "moto"
    pg_bin: Path = PG_BIN
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Stack:
        env = os.environ if environ is None else environ
        root = Path(env.get("STACK_DIR") or PROJECT_ROOT / ".cache" / "stack")
        if not root.is_absolute():
            root = PROJECT_ROOT / root
        ports = {}
        for name, service in SERVICES.items():
            if service.port_env and service.default_port:
                raw = env.get(service.port_env) or str(service.default_port)
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise StackError(f"{service.port_env}={raw!r}: not a TCP port (1-65535)")
                ports[name] = int(raw)
        backend = env.get("STACK_S3") or "moto"
        if backend not in S3_BACKENDS:
            raise StackError(f"STACK_S3={backend!r}: choose one of {', '.join(S3_BACKENDS)}")
        return cls(root=root, ports=ports, s3_backend=backend, pg_bin=Path(env.get("STACK_PG_BIN") or PG_BIN))

    # ------------------------------------------------------------------ places and addresses
    @property
    def pg_data(self) -> Path:
        return self.root / "pg"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.env"

    def pid_file(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def database_url(self, database: str, *, driver: str = "psycopg") -> str:
        """``postgresql+<driver>://visionloop:<password>@127.0.0.1:<port>/<database>`` (servers and tests only)."""
        password = read_env_file(self.secrets_file).get("POSTGRES_PASSWORD")
        if not password:
            raise StackError(f"{self.secrets_file}: no POSTGRES_PASSWORD (the cluster is not initialised: run up)")
        return f"postgresql+{driver}://{PG_USER}:{password}@127.0.0.1:{self.ports['postgres']}/{database}"

    def client_env(self) -> dict[str, str]:
        """The variables of :data:`CLIENT_ENV` for this stack."""
        s3 = self.url("s3")
        key, secret = S3_KEYS[self.s3_backend]
        return {
            "MLFLOW_TRACKING_URI": self.url("mlflow"),
            "PREFECT_API_URL": f"{self.url('prefect-server')}/api",
            "AWS_ENDPOINT_URL": s3,
            "AWS_ENDPOINT_URL_S3": s3,
            "MLFLOW_S3_ENDPOINT_URL": s3,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION,
            "VISIONLOOP_HOME": str(PROJECT_ROOT),
        }


# ------------------------------------------------------------------ small helpers


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``path`` (comments and blank lines skipped); empty when the file is missing."""
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _write_private(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` atomically (temp file + rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except (OSError, urllib.error.URLError):
        return False


def _answers_http(url: str) -> bool:
    """Any HTTP answer at all (an S3 endpoint answers 403 to an unsigned request)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def _port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (servers bind with SO_REUSEADDR: TIME_WAIT does not count)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by us) is not alive
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _group_members(pgid: int) -> list[int]:
    """The running (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    """Does any process of process group ``pgid`` still run (zombies excepted)?"""
    return bool(_group_members(pgid))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"(no {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _say(message: str) -> None:
    print(f"stack: {message}", flush=True)


# ------------------------------------------------------------------ PostgreSQL


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_command(stack: Stack, tool: str, *args: str) -> list[str]:
    """``tool`` of the PostgreSQL package, run as the ``postgres`` user when we are root (initdb refuses root)."""
    command = [str(stack.pg_bin / tool), *args]
    return ["runuser", "-u", "postgres", "--", *command] if _as_root() else command


def ensure_postgres_installed(stack: Stack) -> None:
    """The PostgreSQL 15 binaries exist, or are installed with apt-get when we are root (said so), or an error."""
    if (stack.pg_bin / "initdb").exists() and (stack.pg_bin / "pg_ctl").exists():
        return
    if not _as_root() or not shutil.which("apt-get"):
        raise StackError(
            f"PostgreSQL 15 is not installed ({stack.pg_bin}/initdb missing): install the Debian package "
            f"(sudo apt-get install -y {PG_PACKAGE}) or set STACK_PG_BIN to its bin folder"
        )
    _say(f"installing {PG_PACKAGE} with apt-get (PostgreSQL 15 server binaries; its own cluster is not used)")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", PG_PACKAGE]):
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if done.returncode != 0:
            raise StackError(f"{' '.join(command)} failed: {(done.stdout + done.stderr)[-800:]}")
    if not (stack.pg_bin / "initdb").exists():
        raise StackError(f"{PG_PACKAGE} installed but {stack.pg_bin}/initdb is missing; set STACK_PG_BIN")


def _chown_postgres(*paths: Path) -> None:
    if _as_root():
        for path in paths:
            shutil.chown(path, user="postgres", group="postgres")


def _pg_pid(stack: Stack) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` when that process runs, else None."""
    pid_file = stack.pg_data / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().splitlines()[0])
        if _alive(pid) and str(stack.pg_data) in _cmdline(pid):
            return pid
    return None


def init_postgres(stack: Stack) -> bool:
    """Create the cluster in ``<dir>/pg`` (once) with a generated password; True when it was created now."""
    if (stack.pg_data / "PG_VERSION").exists():
        return False
    ensure_postgres_installed(stack)
    password = read_env_file(stack.secrets_file).get("POSTGRES_PASSWORD") or secrets.token_hex(16)
    _write_private(
        stack.secrets_file,
        "# The local stack's generated PostgreSQL password (servers and tests only; never in stack.env or logs).\n"
        f"POSTGRES_USER={PG_USER}\nPOSTGRES_PASSWORD={password}\n",
        mode=0o600,
    )
    stack.pg_data.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.pg_data, 0o700)
    pwfile = stack.root / "run" / "pg-init.pw"
    _write_private(pwfile, password + "\n", mode=0o600)
    _chown_postgres(stack.pg_data, pwfile)
    try:
        done = subprocess.run(
            _pg_command(
                stack,
                "initdb",
                "-D",
                str(stack.pg_data),
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ),
            capture_output=True,
            text=True,
            cwd="/",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(stack.pg_data, ignore_errors=True)
        raise StackError(f"initdb {stack.pg_data} failed: {(done.stdout + done.stderr)[-800:]}")
    # 127.0.0.1 only, no Unix socket (nothing outside this folder), small memory: a stack for one machine
    settings = "\n# visionloop local stack\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
    settings += "shared_buffers = 64MB\nmax_connections = 100\n"
    with (stack.pg_data / "postgresql.conf").open("a") as conf:
        conf.write(settings)
    return True


def start_postgres(stack: Stack) -> bool:
    """Start the cluster (pg_ctl -w) unless it runs; create the databases. True when started now."""
    if _pg_pid(stack) is not None:
        _create_databases(stack)
        return False
    port = stack.ports["postgres"]
    if not _port_free(port):
        raise StackError(f"postgres: port {port} on 127.0.0.1 is taken by another process; set STACK_PG_PORT=<port>")
    log = stack.log_file("postgres")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    _chown_postgres(log)
    done = subprocess.run(
        _pg_command(
            stack, "pg_ctl", "start", "-w", "-t", "60", "-D", str(stack.pg_data), "-l", str(log), "-o", f"-p {port}"
        ),
        capture_output=True,
        text=True,
        cwd="/",
    )
    if done.returncode != 0:
        raise StackError(f"postgres did not start ({done.stdout + done.stderr}); end of {log}:\n{_tail(log)}")
    _create_databases(stack)
    return True


def _create_databases(stack: Stack) -> None:
    """The ``mlflow`` and ``prefect`` databases (and Prefect's ``pg_trgm`` extension), created when missing."""
    import psycopg

    url = stack.database_url("postgres").replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in have:
                conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(url.rsplit("/", 1)[0] + "/prefect", autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")


def stop_postgres(stack: Stack) -> bool:
    if _pg_pid(stack) is None:
        return False
    subprocess.run(
        _pg_command(stack, "pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(stack.pg_data)),
        capture_output=True,
        text=True,
        cwd="/",
    )
    pid = _pg_pid(stack)
    if pid is not None:  # pragma: no cover, pg_ctl stop -m fast ends it in seconds
        os.kill(pid, signal.SIGKILL)
    return True


# ------------------------------------------------------------------ processes we start (own process group each)

OWNER_ENV = "VISIONLOOP_STACK_DIR"  # set in every process up starts: down stops only processes of this stack


def _ours(stack: Stack, pid: int) -> bool:
    """Was ``pid`` started by this stack (its environment names this STACK_DIR)? Guards against reused pids."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{OWNER_ENV}={stack.root}".encode() in environ


def _running_pid(stack: Stack, service: str) -> int | None:
    """The pid in ``run/<service>.pid`` when that process runs and was started by this stack."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(stack.pid_file(service).read_text().strip())
        if _alive(pid) and _ours(stack, pid):
            return pid
    return None


def _server_env(stack: Stack) -> dict[str, str]:
    """The environment of every server process: ours, visionloop.env's switches, the client variables."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from tasks.env import read_env_file as read_project_env

    env = dict(os.environ)
    for key, value in read_project_env().items():
        env.setdefault(key, value)
    env.update(stack.client_env())
    env["PATH"] = f"{stack.bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env[OWNER_ENV] = str(stack.root)
    return env


def _spawn(stack: Stack, service: str, command: list[str], env: dict[str, str]) -> int:
    log_path = stack.log_file(service)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _write_private(stack.pid_file(service), f"{process.pid}\n")
    return process.pid


def _wait(stack: Stack, service: str, pid: int, ready: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
    """Wait until ``ready()`` holds; the process dying or the timeout raises with the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not _alive(pid):
            stack.pid_file(service).unlink(missing_ok=True)
            raise StackError(
                f"{service} exited while starting; end of {stack.log_file(service)}:\n{_tail(stack.log_file(service))}"
            )
        time.sleep(0.5)
    raise StackError(f"{service} not ready after {timeout:.0f} s (still starting? see {stack.log_file(service)})")


def _check_port(stack: Stack, service: str) -> None:
    port = stack.ports[service]
    if not _port_free(port):
        variable = SERVICES[service].port_env
        raise StackError(f"{service}: port {port} on 127.0.0.1 is taken by another process; set {variable}=<port>")


def _s3rver_command(stack: Stack) -> list[str]:
    found = shutil.which("s3rver") or str(stack.root / "npm" / "node_modules" / ".bin" / "s3rver")
    if not Path(found).exists():
        if not shutil.which("npm"):
            raise StackError("STACK_S3=s3rver needs npm (apt-get install -y npm), or use the default STACK_S3=moto")
        _say(f"installing s3rver with npm into {stack.root / 'npm'} (an S3 endpoint that persists to disk)")
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(stack.root / "npm"), "s3rver@3"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise StackError(f"npm install s3rver failed: {(done.stdout + done.stderr)[-800:]}")
    data = stack.root / "s3rver"
    data.mkdir(parents=True, exist_ok=True)
    return [found, "--directory", str(data), "--address", "127.0.0.1", "--port", str(stack.ports["s3"]), "--silent"]


def start_s3(stack: Stack, env: dict[str, str]) -> bool:
    if _running_pid(stack, "s3") is None:
        _check_port(stack, "s3")
        if stack.s3_backend == "s3rver":
            command = _s3rver_command(stack)
        else:
            command = [str(stack.bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(stack.ports["s3"])]
        pid = _spawn(stack, "s3", command, env)
        _wait(stack, "s3", pid, lambda: _answers_http(stack.url("s3")), timeout=60)
        started = True
    else:
        started = False
    create_buckets(stack)
    return started


def s3_client(stack: Stack) -> Any:
    """A boto3 S3 client on the stack's endpoint with its local keys."""
    import boto3

    key, secret = S3_KEYS[stack.s3_backend]
    return boto3.client(
        "s3", endpoint_url=stack.url("s3"), aws_access_key_id=key, aws_secret_access_key=secret, region_name=REGION
    )


def create_buckets(stack: Stack) -> None:
    client = s3_client(stack)
    have = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS.values():
        if bucket not in have:
            client.create_bucket(Bucket=bucket)


def _start_mlflow(stack: Stack, env: dict[str, str]) -> int | None:
    if _running_pid(stack, "mlflow") is not None:
        return None
    _check_port(stack, "mlflow")
    env = {
        **env,
        "MLFLOW_BACKEND_STORE_URI": stack.database_url("mlflow"),  # in the env, not on the command line (ps)
        # MLflow 3's GenAI job runner: 7 huey consumers, ~1.8 GB RSS, unused by visionloop
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [str(stack.bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(stack.ports["mlflow"])]
    command += ["--artifacts-destination", MLFLOW_ARTIFACTS, "--workers", "1"]
    return _spawn(stack, "mlflow", command, env)


def _start_prefect_server(stack: Stack, env: dict[str, str]) -> int | None:
    if _running_pid(stack, "prefect-server") is not None:
        return None
    _check_port(stack, "prefect-server")
    env = {
        **env,
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.database_url("prefect", driver="asyncpg"),
        "PREFECT_HOME": str(stack.root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the API the UI's pages call from the browser; unset, they call the default port and show "Can't connect"
        "PREFECT_UI_API_URL": f"{stack.url('prefect-server')}/api",
    }
    env.pop("PREFECT_API_URL", None)
    command = [str(stack.bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1"]
    command += ["--port", str(stack.ports["prefect-server"])]
    return _spawn(stack, "prefect-server", command, env)


def _worker_online(stack: Stack, name: str, since: float) -> bool:
    """Has worker ``name`` sent a heartbeat to the pool after ``since`` (epoch s)? Rows of old sessions persist."""
    import datetime as dt
    import json

    request = urllib.request.Request(
        f"{stack.url('prefect-server')}/api/work_pools/{WORK_POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            workers = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    for worker in workers:
        beat = worker.get("last_heartbeat_time")
        if worker.get("name") == name and beat and dt.datetime.fromisoformat(beat).timestamp() >= since - 1:
            return True
    return False


def ensure_work_pool(stack: Stack, env: dict[str, str]) -> bool:
    """The process work pool ``visionloop-local`` (with Prefect's default process job template); True if created."""
    prefect = str(stack.bin_dir / "prefect")
    inspect = subprocess.run([prefect, "work-pool", "inspect", WORK_POOL], env=env, capture_output=True, text=True)
    if inspect.returncode == 0:
        return False
    done = subprocess.run(
        [prefect, "work-pool", "create", WORK_POOL, "--type", "process"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise StackError(f"prefect work-pool create {WORK_POOL} failed: {(done.stdout + done.stderr)[-800:]}")
    return True


def _start_worker(stack: Stack, env: dict[str, str]) -> bool:
    if _running_pid(stack, "prefect-worker") is not None:
        return False
    command = [str(stack.bin_dir / "prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"]
    name = f"{WORK_POOL}-worker"
    command += ["--name", name]
    since = time.time()
    pid = _spawn(stack, "prefect-worker", command, env)
    _wait(stack, "prefect-worker", pid, lambda: _worker_online(stack, name, since), timeout=90)
    return True


def _our_group(stack: Stack, service: str) -> int | None:
    """The process group ``up`` made for ``service`` (its id is the pid in ``run/<service>.pid``) while it runs.

    Only while one of its processes carries this stack's mark: a reused pid is never hit, and children a crashed
    leader left behind still count.
    """
    pid_file = stack.pid_file(service)
    try:
        pgid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if any(_ours(stack, member) for member in _group_members(pgid)):
        return pgid
    pid_file.unlink(missing_ok=True)
    return None


def _stop_groups(stack: Stack, services: list[str], timeout: float = 20.0) -> list[str]:
    """SIGTERM the services' process groups at once, SIGKILL what is left after ``timeout``; the ones stopped."""
    groups = {name: pgid for name in services if (pgid := _our_group(stack, name)) is not None}
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        for pgid in groups.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_group_alive(pgid) for pgid in groups.values()):
            time.sleep(0.2)
        left = [name for name, pgid in groups.items() if _group_alive(pgid)]
        if not left:
            break
        if sig == signal.SIGTERM:
            _say(f"{', '.join(left)} still running {timeout:.0f} s after SIGTERM: SIGKILL")
    else:  # pragma: no cover, SIGKILL ends a process group unless it is stuck in the kernel
        raise StackError(f"{', '.join(left)}: survived SIGKILL; see {stack.root / 'logs'}")
    for name in groups:
        stack.pid_file(name).unlink(missing_ok=True)
    return list(groups)


# ------------------------------------------------------------------ the commands


def write_env_file(stack: Stack) -> Path:
    """``stack.env``: what clients need, sourceable (``set -a; source stack.env; set +a``)."""
    lines = [
        "# visionloop local server stack (python -m deploy.local.stack up); clients: set -a; source this; set +a",
        "# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are the local stack's dummy keys (moto accepts any,",
        "# s3rver wants S3RVER): never a real account's. The PostgreSQL password is not here (secrets.env).",
    ]
    lines += [f"{key}={value}" for key, value in stack.client_env().items()]
    if stack.s3_backend == "s3rver":
        lines += ["# s3rver persists: the DVC remote lives on the stack too (moto would lose it at down)"]
        lines += [f"VISIONLOOP_DVC_REMOTE={DVC_REMOTE}"]
    _write_private(stack.env_file, "\n".join(lines) + "\n")
    return stack.env_file


def health(stack: Stack) -> dict[str, bool]:
    """Each service: running and answering."""
    return {
        "postgres": _pg_pid(stack) is not None,
        "s3": _running_pid(stack, "s3") is not None and _answers_http(stack.url("s3")),
        "mlflow": _running_pid(stack, "mlflow") is not None and _healthy(f"{stack.url('mlflow')}/health"),
        "prefect-server": _running_pid(stack, "prefect-server") is not None
        and _healthy(f"{stack.url('prefect-server')}/api/health"),
        "prefect-worker": _running_pid(stack, "prefect-worker") is not None,
    }


def up(stack: Stack) -> dict[str, float]:
    """Start what is not running (in order), write ``stack.env``; the seconds each start took (empty: already up)."""
    if all(health(stack).values()) and stack.env_file.exists():
        _say(f"already up (env {stack.env_file}); nothing started")
        return {}
    stack.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.monotonic()
    fresh = init_postgres(stack)
    if fresh:
        _say(f"initialised a PostgreSQL cluster in {stack.pg_data} (superuser {PG_USER}, password in secrets.env)")
    if start_postgres(stack):
        timings["postgres"] = time.monotonic() - start
        _say(f"postgres on 127.0.0.1:{stack.ports['postgres']} (databases {', '.join(DATABASES)})")
    env = _server_env(stack)
    mark = time.monotonic()
    if start_s3(stack, env):
        timings["s3"] = time.monotonic() - mark
        _say(f"s3 ({stack.s3_backend}) on {stack.url('s3')}, buckets {', '.join(BUCKETS.values())}")
        if stack.s3_backend == "moto" and not fresh:
            _say(
                "note: moto_server starts empty: objects of earlier sessions (MLflow artifacts, production batches, "
                "the prediction log) are gone while PostgreSQL kept their records; down --purge (and a fresh clone "
                "or data/ folder) for a clean stack, STACK_S3=s3rver to keep them"
            )
    mark = time.monotonic()
    # MLflow and Prefect migrate their databases on first start: start both, then wait for both
    mlflow_pid, prefect_pid = _start_mlflow(stack, env), _start_prefect_server(stack, env)
    if mlflow_pid is not None:
        _wait(stack, "mlflow", mlflow_pid, lambda: _healthy(f"{stack.url('mlflow')}/health"))
        timings["mlflow"] = time.monotonic() - mark
        _say(f"mlflow on {stack.url('mlflow')} (store postgresql/mlflow, artifacts {MLFLOW_ARTIFACTS})")
    if prefect_pid is not None:
        _wait(stack, "prefect-server", prefect_pid, lambda: _healthy(f"{stack.url('prefect-server')}/api/health"))
        timings["prefect-server"] = time.monotonic() - mark
        _say(f"prefect server on {stack.url('prefect-server')} (database postgresql/prefect)")
    mark = time.monotonic()
    if ensure_work_pool(stack, env):
        _say(f"created the process work pool {WORK_POOL}")
    if _start_worker(stack, env):
        timings["prefect-worker"] = time.monotonic() - mark
        _say(f"process worker on pool {WORK_POOL}")
    write_env_file(stack)
    _say(f"up in {time.monotonic() - start:.1f} s; clients: set -a; source {stack.env_file}; set +a")
    return timings


def down(stack: Stack, *, purge: bool = False) -> list[str]:
    """Stop everything ``up`` started (reverse order); ``purge`` also removes ``STACK_DIR``. The services stopped."""
    stopped = _stop_groups(stack, ["prefect-worker", "prefect-server", "mlflow", "s3"])
    if stop_postgres(stack):
        stopped.append("postgres")
    _say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    stack.env_file.unlink(missing_ok=True)
    if purge and stack.root.exists():
        shutil.rmtree(stack.root)
        _say(f"removed {stack.root}")
    return stopped


def status(stack: Stack) -> dict[str, bool]:
    states = health(stack)
    for name, ok in states.items():
        port = stack.ports.get(name)
        where = f"127.0.0.1:{port}" if port else f"pool {WORK_POOL}"
        print(f"{name:15s} {'up' if ok else 'down':5s} {where:22s} log {stack.log_file(name)}")
    return states


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """``up`` on enter, ``down`` on exit (tests)."""
    try:
        up(stack)
        yield stack
    finally:
        down(stack)


def exec_with_env(stack: Stack, command: list[str]) -> int:
    """Run ``command`` with ``stack.env`` applied (the stack wins); refuse when the stack is not up."""
    if not stack.env_file.exists():
        raise StackError(f"the server stack is not up ({stack.env_file} missing): run make stack-up first")
    states = health(stack)
    down_now = [name for name, ok in states.items() if not ok]
    if down_now:
        raise StackError(f"the server stack is not healthy ({', '.join(down_now)} down): make stack-up")
    os.environ.update(read_env_file(stack.env_file))
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 1  # pragma: no cover, execvp does not return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start PostgreSQL, S3, MLflow, Prefect server + worker on 127.0.0.1 (idempotent)")
    stop = sub.add_parser("down", help="stop what up started (idempotent)")
    stop.add_argument("--purge", action="store_true", help=f"also remove STACK_DIR (the cluster, logs, {BUCKETS})")
    sub.add_parser("status", help="each service: up or down, address, log; exit 1 when any is down")
    sub.add_parser("env", help="print stack.env (eval-able with set -a)")
    run = sub.add_parser("exec", help="run a command with stack.env in its environment")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        stack = Stack.from_env()
        if args.command == "up":
            up(stack)
        elif args.command == "down":
            down(stack, purge=args.purge)
        elif args.command == "status":
            return 0 if all(status(stack).values()) else 1
        elif args.command == "env":
            if not stack.env_file.exists():
                raise StackError(f"{stack.env_file} missing: run make stack-up first")
            print(stack.env_file.read_text(), end="")
        else:
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                parser.error("exec needs a command")
            return exec_with_env(stack, cmd)
    except StackError as error:
        print(f"stack: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
