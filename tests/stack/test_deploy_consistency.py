"""The server stack's descriptions agree, without starting anything (no Docker here to start the compose file).

``deploy/local/stack.py`` (the local stack), ``deploy/compose.yaml`` + ``deploy/.env.example`` (a real deployment),
the Makefile (``stack-up``, ``STACK_*_PORT``) and ``prefect.yaml`` (work pool and its variants) name the same
services, ports, buckets and environment variables.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local import stack
from tasks.config import load_params
from tasks.env import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
ENV_EXAMPLE = (DEPLOY / ".env.example").read_text()
README = (DEPLOY / "README.md").read_text()
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()
PREFECT = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
PORTED = [name for name, service in stack.SERVICES.items() if service.port_env]
# compose services the local stack has no process for, and why
COMPOSE_ONLY = {
    "buckets": "one-shot bucket creation: stack.create_buckets at every up",
    "labelstudio": "the local Label Studio is make labelstudio-up (make demo starts it)",
}
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "ACCESS_KEY")


def makefile_defaults() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z0-9_]+) \?= *(.*)$", MAKEFILE, flags=re.MULTILINE))


def published(service: str) -> list[str]:
    return [str(port) for port in COMPOSE["services"][service].get("ports", [])]


def literal_secrets(compose: dict[str, Any]) -> list[str]:
    """``service.VAR`` for each secret-looking variable whose value is written in the file, not ``${...}``."""
    found = []
    for name, service in compose.get("services", {}).items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            literal = str(value).lower() not in ("", "none", "true", "false") and "${" not in str(value)
            if any(word in key for word in SECRET_WORDS) and literal:
                found.append(f"{name}.{key}")
    return found


@pytest.mark.parametrize("service", list(stack.SERVICES), ids=str)
def test_every_local_service_is_a_compose_service(service):
    assert stack.SERVICES[service].compose in COMPOSE["services"]


def test_compose_has_no_service_the_local_stack_lacks():
    local = {service.compose for service in stack.SERVICES.values()}
    assert set(COMPOSE["services"]) - local == set(COMPOSE_ONLY)


@pytest.mark.parametrize("service", PORTED, ids=str)
def test_ports_agree(service):
    spec = stack.SERVICES[service]
    assert makefile_defaults()[str(spec.port_env)] == str(spec.default_port), "Makefile default"
    assert any(f"127.0.0.1:${{{spec.port_env}:-{spec.default_port}}}:" in port for port in published(spec.compose))
    assert stack.Stack.from_env({}).ports[service] == spec.default_port
    assert f"`{spec.port_env}` ({spec.default_port})" in README


def test_label_studio_port_agrees_with_the_makefile():
    port = makefile_defaults()["LABEL_STUDIO_PORT"]
    assert any(f"127.0.0.1:${{LABEL_STUDIO_PORT:-{port}}}:8080" in p for p in published("labelstudio"))


def test_makefile_exports_the_stack_variables():
    exported = re.search(r"^export (STACK_DIR .*)$", MAKEFILE, flags=re.MULTILINE)
    assert exported, "Makefile: export STACK_* so deploy.local.stack reads the same values"
    names = set(exported.group(1).split())
    assert {str(stack.SERVICES[s].port_env) for s in PORTED} | {"STACK_DIR", "STACK_S3"} <= names


@pytest.mark.parametrize(
    ("target", "command"),
    [("stack-up", "deploy.local.stack up"), ("stack-down", "deploy.local.stack down")],
    ids=["up", "down"],
)
def test_makefile_targets_start_and_stop_the_local_stack(target, command):
    recipe = re.search(rf"^{target}:[^\n]*## [^\n]+\n((?:\t[^\n]*\n)+)", MAKEFILE, flags=re.MULTILINE)
    assert recipe, f"Makefile: {target} with a ## help text"
    assert command in recipe.group(1)


def test_stack_server_switch_layers_the_overlay_and_the_env():
    assert "PARAMS_ARGS += --params params.server.yaml" in MAKEFILE
    assert "-m deploy.local.stack exec -- $(RUN)" in MAKEFILE


def test_client_env_is_the_same_everywhere():
    assert tuple(stack.Stack.from_env({}).client_env()) == stack.CLIENT_ENV
    worker = COMPOSE["services"]["prefect-worker"]["environment"]
    assert set(stack.CLIENT_ENV) <= set(worker), "compose prefect-worker lacks client variables"
    for name in stack.CLIENT_ENV:
        assert name in ENV_EXAMPLE, f"deploy/.env.example does not name {name}"


def test_every_compose_variable_is_listed_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "compose.yaml").read_text()))
    listed = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE, flags=re.MULTILINE))
    assert used - listed == set()


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, []),
        ({"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set it}"}, []),
        ({"SENTRY_DSN": ""}, []),
        ({"LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}, []),
        ({"POSTGRES_PASSWORD": "hunter2"}, ["db.POSTGRES_PASSWORD"]),
        (
            {"AWS_SECRET_ACCESS_KEY": "minioadmin", "AWS_ACCESS_KEY_ID": "${AWS_ACCESS_KEY_ID}"},
            ["db.AWS_SECRET_ACCESS_KEY"],
        ),
    ],
    ids=["empty", "interpolated", "blank", "a-switch", "literal-password", "literal-key"],
)
def test_literal_secrets_are_found(environment, expected):
    assert literal_secrets({"services": {"db": {"environment": environment}}}) == expected


def test_compose_has_no_literal_secret():
    assert literal_secrets(COMPOSE) == []


def test_compose_servers_use_the_local_stacks_stores():
    mlflow = COMPOSE["services"]["mlflow"]["environment"]
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == stack.MLFLOW_ARTIFACTS
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].endswith("/mlflow")
    prefect = COMPOSE["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect.startswith("postgresql+asyncpg://") and prefect.endswith("/prefect")
    assert set(stack.DATABASES) <= {
        "mlflow",
        *re.findall(r"CREATE DATABASE (\w+)", (DEPLOY / "postgres-init.sql").read_text()),
    }
    buckets = " ".join(COMPOSE["services"]["buckets"]["command"])
    for bucket in stack.BUCKETS.values():
        assert f"stack/{bucket}" in buckets
    assert COMPOSE["services"]["prefect-worker"]["environment"]["VISIONLOOP_DVC_REMOTE"] == stack.DVC_REMOTE


def test_work_pool_variants_are_documented_and_the_default_is_unchanged():
    pools = PREFECT["definitions"]["work_pools"]
    assert set(pools) == {"process", "docker", "kubernetes"}
    assert pools["process"]["name"] == stack.WORK_POOL
    for deployment in PREFECT["deployments"]:
        assert deployment["work_pool"]["name"] == stack.WORK_POOL, deployment["name"]
    command = COMPOSE["services"]["prefect-worker"]["command"]
    assert command[command.index("--pool") + 1] == stack.WORK_POOL
    for kind in ("docker", "kubernetes"):
        assert pools[kind]["job_variables"]["image"], kind
        assert f"prefect work-pool create {pools[kind]['name']} --type {kind}" in README


def test_the_server_overlay_points_at_the_stacks_mlflow():
    params = load_params([PROJECT_ROOT / "params.yaml", PROJECT_ROOT / "params.server.yaml"])
    assert params.registry.tracking_uri == f"http://127.0.0.1:{stack.SERVICES['mlflow'].default_port}"


# ------------------------------------------------------------------ the launcher without servers


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {"postgres": 25432, "s3": 29000, "mlflow": 25000, "prefect-server": 24200}),
        ({"STACK_MLFLOW_PORT": "6123"}, {"postgres": 25432, "s3": 29000, "mlflow": 6123, "prefect-server": 24200}),
    ],
    ids=["defaults", "override"],
)
def test_ports_from_the_environment(environ, expected):
    assert stack.Stack.from_env(environ).ports == expected


def test_default_ports_avoid_the_ephemeral_range():
    """An outgoing connection may hold a port of 32768-60999 for a moment: a default there fails to start at random."""
    defaults = {name: s.default_port for name, s in stack.SERVICES.items() if s.default_port is not None}
    inside = {name: port for name, port in defaults.items() if port >= stack.EPHEMERAL_START}
    assert not inside, f"default ports inside the ephemeral range: {inside}"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"STACK_PG_PORT": "postgres"}, "STACK_PG_PORT='postgres': not a TCP port"),
        ({"STACK_S3_PORT": "70000"}, "STACK_S3_PORT='70000': not a TCP port"),
        ({"STACK_S3": "minio"}, "STACK_S3='minio': choose one of moto, s3rver"),
    ],
    ids=["not-a-number", "out-of-range", "unknown-s3"],
)
def test_bad_settings_are_refused_by_name(environ, message):
    with pytest.raises(stack.StackError, match=re.escape(message)):
        stack.Stack.from_env(environ)


@pytest.mark.parametrize("backend", stack.S3_BACKENDS, ids=str)
def test_env_file_has_the_client_variables_and_no_password(tmp_path: Path, backend):
    local = stack.Stack.from_env({"STACK_DIR": str(tmp_path), "STACK_S3": backend})
    values = stack.read_env_file(stack.write_env_file(local))
    assert set(stack.CLIENT_ENV) <= set(values)
    assert values["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:25000"
    assert values["PREFECT_API_URL"] == "http://127.0.0.1:24200/api"
    assert values["AWS_ENDPOINT_URL_S3"] == values["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:29000"
    assert not any("POSTGRES" in key for key in values)
    # the DVC remote moves onto the stack only where the S3 endpoint persists
    assert ("VISIONLOOP_DVC_REMOTE" in values) == (backend == "s3rver")


def test_a_taken_port_is_refused_naming_the_variable(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        local = stack.Stack.from_env({"STACK_DIR": str(tmp_path), "STACK_MLFLOW_PORT": str(port)})
        with pytest.raises(stack.StackError, match=f"port {port} on 127.0.0.1 is taken.*STACK_MLFLOW_PORT"):
            stack._check_port(local, "mlflow")


def test_missing_postgres_without_root_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(stack, "_as_root", lambda: False)
    local = stack.Stack.from_env({"STACK_DIR": str(tmp_path), "STACK_PG_BIN": str(tmp_path / "no-pg")})
    with pytest.raises(stack.StackError, match="apt-get install -y postgresql-15"):
        stack.ensure_postgres_installed(local)


@pytest.mark.parametrize(
    ("command", "code", "stream", "message"),
    [
        (["status"], 1, "out", "mlflow          down"),
        (["env"], 1, "err", "run make stack-up first"),
        (["exec", "--", "true"], 1, "err", "the server stack is not up"),
    ],
    ids=["status", "env", "exec"],
)
def test_commands_on_a_stack_that_is_not_up(tmp_path: Path, monkeypatch, capsys, command, code, stream, message):
    monkeypatch.setenv("STACK_DIR", str(tmp_path))
    assert stack.main(command) == code
    assert message in getattr(capsys.readouterr(), stream)


def test_down_on_a_stack_never_started_is_a_noop(tmp_path: Path, capsys):
    assert stack.down(stack.Stack.from_env({"STACK_DIR": str(tmp_path)})) == []
    assert "nothing was running" in capsys.readouterr().out
