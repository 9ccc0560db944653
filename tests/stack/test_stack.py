"""The local server stack, started for real (``python -m deploy.local.stack up``) on free ports and stopped again.

The stock clients talk to it the way flows do with ``stack.env`` applied: MLflow logs a run and an artifact through
the server and the artifact lands in S3 (boto3 against moto); Prefect's client sees the process work pool and its
worker; PostgreSQL holds both servers' records; ``down`` leaves no process behind. ~60 s cold: marked slow.
Under ``CI=true`` a stack that cannot start fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local import stack
from tasks.env import PROJECT_ROOT
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def run_stack(
    command: str, env: dict[str, str], timeout: float = 400
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "deploy.local.stack", command],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - start


@pytest.fixture(scope="module")
def settings() -> Iterator[dict[str, str]]:
    # Below the project, not pytest's tmp (mode 0700): as root the cluster runs as the postgres user, who must
    # reach its folder.
    root = Path(tempfile.mkdtemp(prefix="stack-test-", dir=PROJECT_ROOT / ".cache"))
    root.chmod(0o755)
    env = {"STACK_DIR": str(root), "STACK_S3": "moto"}
    for name in stack.SERVICES:
        variable = stack.SERVICES[name].port_env
        if variable:
            env[variable] = str(free_port())
    yield env
    run_stack("down", env)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local(settings: dict[str, str]) -> stack.Stack:
    done, seconds = run_stack("up", settings)
    if done.returncode != 0:
        why = f"the local stack did not start ({seconds:.0f} s): {(done.stdout + done.stderr)[-2000:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    print(f"stack up (cold) {seconds:.1f} s:\n{done.stdout}")
    return stack.Stack.from_env(settings)


@pytest.fixture
def client_env(local: stack.Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = stack.read_env_file(local.env_file)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def pg(local: stack.Stack, database: str, query: str, *args: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(local.database_url(database, driver="psycopg").replace("+psycopg", "")) as conn:
        return conn.execute(query, args).fetchall()


def test_up_again_is_a_noop(local: stack.Stack, settings: dict[str, str]):
    done, seconds = run_stack("up", settings, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stdout
    assert seconds < 15
    status, _ = run_stack("status", settings, timeout=60)
    assert status.returncode == 0, status.stdout


def test_mlflow_logs_through_the_server_into_s3_and_postgres(local: stack.Stack, client_env, tmp_path: Path):
    import mlflow
    from mlflow import MlflowClient

    assert client_env["MLFLOW_TRACKING_URI"] == local.url("mlflow")
    client = MlflowClient(tracking_uri=client_env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment(f"stack-{time.time_ns()}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "map50_95", 0.5)
    artifact = tmp_path / "report.json"
    artifact.write_text('{"ok": true}')
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id)

    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "clients upload through the server"
    key = f"mlartifacts/{experiment}/{run.info.run_id}/artifacts/report.json"
    body = stack.s3_client(local).get_object(Bucket=stack.BUCKETS["mlflow"], Key=key)["Body"].read()
    assert body == b'{"ok": true}'
    mlflow.set_tracking_uri(client_env["MLFLOW_TRACKING_URI"])
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["report.json"]
    # PostgreSQL is MLflow's backend store
    rows = pg(local, "mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run.info.run_id)
    assert rows == [("FINISHED",)]
    assert pg(local, "mlflow", "SELECT value FROM metrics WHERE run_uuid = %s", run.info.run_id) == [(0.5,)]


def test_prefect_client_sees_the_work_pool_and_its_worker(local: stack.Stack, client_env):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: client_env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        pool = client.read_work_pool(stack.WORK_POOL)
        workers = client.read_workers_for_work_pool(stack.WORK_POOL)
    assert pool.type == "process"
    assert [worker.name for worker in workers] == [f"{stack.WORK_POOL}-worker"]
    # PostgreSQL is Prefect's database
    assert pg(local, "prefect", "SELECT type FROM work_pool WHERE name = %s", stack.WORK_POOL) == [("process",)]
    assert pg(local, "prefect", "SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'") == [("pg_trgm",)]


def test_the_stack_listens_on_127_0_0_1_only(local: stack.Stack):
    import psutil

    pids = [int(local.pid_file(name).read_text()) for name in ("s3", "mlflow", "prefect-server")]
    pids.append(int((local.pg_data / "postmaster.pid").read_text().splitlines()[0]))
    listening = set()
    for pid in pids:
        for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            listening |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def test_an_embedded_project_moves_onto_the_stack_keeping_its_ids(local: stack.Stack, client_env, tmp_path: Path):
    """tasks/adapters/migration.py into a fresh database of the stack's PostgreSQL and its S3: ids, numbers and
    aliases kept, every row and artifact checked, and PostgreSQL's sequences moved past the copied ids."""
    import psycopg
    from mlflow import MlflowClient

    from tasks.adapters import migration, s3
    from tests.integration.test_migration import MODEL, make_source

    database = f"migrated_{time.time_ns()}"
    admin = local.database_url("postgres").replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    target = local.database_url(database)
    MlflowClient(
        target, registry_uri=target
    ).search_experiments()  # what mlflow server does on its first start: tables, default experiment
    source, artifacts, runs = make_source(tmp_path)
    destination = f"s3://{stack.BUCKETS['mlflow']}/{database}"
    result = migration.migrate(
        source_url=source, target_url=target, artifact_root=artifacts, conn=s3.connect(), trees={artifacts: destination}
    )
    assert result.ok, result.problems + result.trees[0].problems
    moved = MlflowClient(target, registry_uri=target)
    champion = moved.get_model_version_by_alias(MODEL, "champion")
    assert (str(champion.version), champion.run_id) == ("2", runs[1])
    assert moved.get_run(runs[0]).info.artifact_uri == f"mlflow-artifacts:/{runs[0]}/artifacts"
    copied = [int(e.experiment_id) for e in moved.search_experiments()]
    assert int(moved.create_experiment("after-the-move")) > max(copied)  # the sequence moved past the copied ids
    new = moved.create_model_version(MODEL, source=f"mlflow-artifacts:/{runs[0]}/artifacts/weights", run_id=runs[0])
    assert str(new.version) == "4"


def test_postgres_down_when_a_flow_starts_stops_it_before_anything_is_written(
    local: stack.Stack, client_env, tmp_path: Path
):
    """Both servers still answer their health checks; the flow's preflight asks what needs the database."""
    predictions = tmp_path / "predictions"
    overlay = tmp_path / "paths.yaml"
    overlay.write_text(f"base:\n  paths:\n    predictions: {predictions}\n")
    assert stack.stop_postgres(local)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flows.predict", "--params", "params.yaml", "--params", str(overlay)],
            cwd=PROJECT_ROOT,
            env={**os.environ, **client_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stack.start_postgres(local)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "answers 503 to" in done.stderr and "Database is not available" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not predictions.exists()


def test_the_postgres_password_is_a_canary_no_store_log_or_command_line_holds(local: stack.Stack, client_env):
    """The generated password lives in secrets.env (mode 600) and in the servers' environment only: not in
    stack.env, a log, a command line, a row of either database (MLflow runs, Prefect runs) or an S3 object."""
    import psutil

    password = stack.read_env_file(local.secrets_file)["POSTGRES_PASSWORD"]
    assert len(password) >= 16 and (local.secrets_file.stat().st_mode & 0o077) == 0
    assert password not in local.env_file.read_text() and password not in json.dumps(client_env)
    logs = [p for p in local.root.joinpath("logs").rglob("*") if p.is_file()]
    assert logs and not [p.name for p in logs if password.encode() in p.read_bytes()]
    groups = [int(local.pid_file(name).read_text()) for name in ("s3", "mlflow", "prefect-server", "prefect-worker")]
    for pid in [member for pgid in groups for member in stack._group_members(pgid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            assert password not in " ".join(psutil.Process(pid).cmdline()), f"pid {pid} has it on its command line"
    for database in ("mlflow", "prefect"):
        dump = subprocess.run(
            [
                str(local.pg_bin / "pg_dump"),
                "-h",
                "127.0.0.1",
                "-p",
                str(local.ports["postgres"]),
                "-U",
                "visionloop",
                "--data-only",
                database,
            ],
            env={**os.environ, "PGPASSWORD": password},
            capture_output=True,
            timeout=120,
        )
        assert dump.returncode == 0 and len(dump.stdout) > 1000, dump.stderr[-500:]
        assert password.encode() not in dump.stdout, f"the {database} database holds the password"
    client = stack.s3_client(local)
    for bucket in stack.BUCKETS.values():
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                assert password.encode() not in body, f"s3://{bucket}/{item['Key']} holds the password"


def test_the_stacks_mlflow_and_prefect_uis_show_the_champion_and_the_last_cycle(
    local: stack.Stack, client_env, tmp_path: Path
):
    """Issue 14 item 5 on the stack itself: a cycle's champion registered, promoted and reported through the stack's
    MLflow (PostgreSQL, artifacts in S3 through the server) and published to its Prefect (PostgreSQL), then seen in
    headless Chromium by tests/browser/pages.py: the champion's row (alias, reviewer's tags, fits 1366×768), the
    latest version's lineage and cycle report, the last cycle's flow run and its report artifact. Screenshots:
    reports/test-artifacts/browser/stack-*.png. Placed before ``down``, which stops the module's stack."""
    from mlflow import MlflowClient

    from tasks.config import Params
    from tests.browser import loop_data, pages
    from tests.conftest import tiny_params_dict

    start = time.monotonic()
    mlflow_url = client_env["MLFLOW_TRACKING_URI"]
    prefect_api = client_env["PREFECT_API_URL"]
    model = f"ui-detector-{time.time_ns()}"  # the module's other tests share the stack's registry
    params = Params.model_validate(
        tiny_params_dict(
            tmp_path / "project",
            registry={"tracking_uri": mlflow_url, "model_name": model, "experiment": f"ui-{time.time_ns()}"},
        )
    )
    cycle = "c-stack-ui-0001"
    made = loop_data.make_cycle(params, cycle_name=cycle, prefect_api=lambda: prefect_api, home=tmp_path)
    made_s = time.monotonic() - start
    # the cycle report went through the server into S3
    experiment = MlflowClient(mlflow_url).get_run(made.run_id).info.experiment_id
    key = f"mlartifacts/{experiment}/{made.run_id}/artifacts/cycles/{cycle}/report.md"
    body = stack.s3_client(local).get_object(Bucket=stack.BUCKETS["mlflow"], Key=key)["Body"].read()
    assert body.startswith(f"# Cycle {cycle}: promote".encode())

    shots = PROJECT_ROOT / "reports" / "test-artifacts" / "browser"
    try:
        outcome = pages.check_stack(mlflow_url, prefect_api, model, shots, prefix="stack-")
    except FileNotFoundError as error:  # no Chromium: CI fails, a laptop skips
        if os.environ.get("CI") == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))
    print(f"ui on the stack: data {made_s:.1f} s, browser {time.monotonic() - start - made_s:.1f} s")
    for name, what in outcome.found.items():
        print(f"  {name}: {what}")
    assert outcome.missing == {}, outcome.missing
    assert set(outcome.found) == {
        "mlflow-champion-row",
        "mlflow-latest-version",
        "mlflow-cycle-report",
        "prefect-cycle-run",
    }
    assert f"version {made.champion}: @champion" in outcome.found["mlflow-champion-row"]
    assert f"flow run {made.flow_run['name']} (newest first: #0)" in outcome.found["prefect-cycle-run"]
    assert all(shot.is_file() for shot in outcome.shots), outcome.shots


def test_down_stops_every_process_it_started(local: stack.Stack, settings: dict[str, str]):
    groups = [int(local.pid_file(name).read_text()) for name in ("s3", "mlflow", "prefect-server", "prefect-worker")]
    postmaster = int((local.pg_data / "postmaster.pid").read_text().splitlines()[0])
    done, seconds = run_stack("down", settings, timeout=120)
    assert done.returncode == 0, done.stderr
    print(f"stack down {seconds:.1f} s: {done.stdout}")
    assert [pgid for pgid in groups if stack._group_alive(pgid)] == []
    assert not stack._alive(postmaster)
    assert all(stack._port_free(port) for port in local.ports.values())
    assert not local.env_file.exists()
    again, _ = run_stack("down", settings, timeout=60)
    assert again.returncode == 0 and "nothing was running" in again.stdout
