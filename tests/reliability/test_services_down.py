"""Services down or slow: Label Studio, an MLflow server and the Prefect API behind a fault-injecting proxy.

Each service is reached through :class:`tests.reliability.faultproxy.FaultProxy` (the adapters read its URL from
``LABEL_STUDIO_URL``, ``registry.tracking_uri`` / ``MLFLOW_TRACKING_URI`` and ``PREFECT_API_URL``), which refuses
connections, hangs, or answers 503 to the one request an operation is about. For every service × fault the test
checks the adapter's retry policy (the attempts the proxy saw), success when the service recovers within it, and
otherwise a :class:`~tasks.config.VisionloopError` that names the service, the URL and the command to run, within
a bounded time, with the ledger, the label files, the registry and the audit log as they were before.

Retry policies under test (short timeouts set here through the settings each client already reads):

- Label Studio: ``label.retries`` retries of connection failures, timeouts and 5xx (``label.timeout_s`` each);
- MLflow: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` retries (urllib3 in MLflow), ``MLFLOW_HTTP_REQUEST_TIMEOUT`` each;
- Prefect: ``PREFECT_CLIENT_MAX_RETRIES`` retries of 502/503/429 and timeouts, ``PREFECT_API_REQUEST_TIMEOUT``.

A request that is not idempotent (a task import, a model version, a flow run) that reached the service but whose
answer was lost (``forward-503``) must not make a second one when it is retried.

Before (the MLflow case of the first version of this file): with ``MLFLOW_TRACKING_URI`` pointing at an MLflow
server that was down, resolving the champion failed as "no 'champion' alias; create the first champion with the
bootstrap flow". Now it is a ``RegistryUnavailableError`` naming the store and the fix.
"""

# ruff: noqa: F811 - the session fixtures of tests/integration are imported below and then requested by name

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tasks import label, registry
from tasks.adapters import labelstudio
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params, VisionloopError
from tasks.contracts.ledger import ledger_path, read_ledger
from tasks.contracts.reports import report_path, write_report
from tasks.contracts.reports.train import TrainResult
from tasks.sim import annotator
from tests.conftest import tiny_params_dict
from tests.integration.conftest import (  # noqa: F401 - the session fixtures, used by name
    CYCLE,
    Server,
    build_cycle,
    free_port,
    labelstudio_env,
    make_params,
    prefect_harness,
    server,
)
from tests.mlflow_server import mlflow_server as start_mlflow_server
from tests.reliability.faultproxy import FaultProxy

RETRIES = 2  # every client below: 2 retries, so 3 attempts
TIMEOUT_S = 3  # per request; the services answer the tiny requests here well within it

FAULTS = {
    "refused": (),
    "timeout": ("hang",),
    "5xx-then-success": ("503", "503", "forward"),
    "5xx-forever": ("503",),
}


def expected_attempts(fault: str) -> int:
    return 0 if fault == "refused" else RETRIES + 1  # a refused connection never reaches the proxy to be counted


def arm(proxy: FaultProxy, fault: str, pattern: str) -> int:
    """Make the proxy fail requests matching ``pattern`` as ``fault`` says; the count of such requests so far."""
    if fault == "refused":
        proxy.refuse()
    else:
        proxy.script(pattern, *FAULTS[fault])
    return proxy.count(pattern)


def files_under(*roots: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file below ``roots`` with its bytes (names in ``skip`` and lock files left out)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*") if root.is_dir() else [root] if root.is_file() else []):
            if path.is_file() and path.name not in skip and not path.name.endswith(".lock"):
                found[str(path)] = path.read_bytes()
    return found


def assert_clear_error(error: BaseException, *, service: str, url: str, command: str) -> None:
    message = str(error)
    assert isinstance(error, VisionloopError), f"{type(error).__name__}: {message}"
    assert service in message and url in message and command in message, message
    assert "Traceback" not in message and len(message) < 2000, message


@pytest.fixture
def proxy_for() -> Iterator:
    """A factory of proxies in front of an upstream URL; every proxy closes at the end of the test."""
    made: list[FaultProxy] = []

    def make(upstream: str) -> FaultProxy:
        made.append(FaultProxy(upstream, lifetime_s=300))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


# ============================================================ Label Studio

LS_OPERATIONS = {
    "import": r"^POST /api/projects/\d+/import",
    "collect": r"^GET /api/tasks/?\?.*fields=all",
}


@pytest.fixture(scope="module")
def ls_world(server: Server, labelstudio_env: Server) -> Path:
    """One tiny world, prediction log and sample manifest for every Label Studio case (read only)."""
    root = server.root / "services-down"
    build_cycle(make_params(root, title="services-down"))
    return root


def ls_params(root: Path, case: str) -> Params:
    """Each case: its own project title and labels folder (ledger), the shared world; short timeouts."""
    params = make_params(root, title=f"down-{case}-{uuid.uuid4().hex[:6]}"[:50], labels=f"labels-{case}")
    fast = params.label.model_copy(update={"retries": RETRIES, "retry_delay_s": 0.1, "timeout_s": TIMEOUT_S})
    return params.model_copy(update={"label": fast})


def label_state(params: Params) -> dict[str, bytes]:
    """The ledger, label files and report (the project record is not the cycle's state: it names a real project)."""
    return files_under(
        params.base.paths.labels, report_path(params.base.paths.reports, "label"), skip=("projects.json",)
    )


def server_tasks(server: Server, project_id: int) -> list[dict]:
    answer = httpx.get(
        f"{server.url}/api/tasks/",
        params={"project": project_id, "page_size": 1000, "fields": "task_only"},
        headers={"Authorization": f"Token {os.environ[labelstudio.TOKEN_ENV]}"},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()["tasks"]


@pytest.mark.integration
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("operation", list(LS_OPERATIONS))
def test_label_studio_down_or_slow(server, ls_world, proxy_for, monkeypatch, operation, fault):
    params = ls_params(ls_world, f"{operation}-{fault}")
    proxy = proxy_for(server.url)
    monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
    if operation == "collect":  # something to collect: the cycle queued, some tasks answered
        label.run(params, cycle=CYCLE)
        annotator.run(params, limit=4)
    before = label_state(params)
    earlier = arm(proxy, fault, LS_OPERATIONS[operation])

    started = time.monotonic()
    if fault == "5xx-then-success":
        result = label.run(params, cycle=CYCLE)
        assert (result.imported if operation == "import" else result.collected) > 0
        assert label_state(params) != before
    else:
        with pytest.raises(labelstudio.LabelStudioUnavailable) as raised:
            label.run(params, cycle=CYCLE)
        assert_clear_error(raised.value, service="Label Studio", url=proxy.url, command="make labelstudio-up")
        assert label_state(params) == before, "a failed label run changed the ledger or the label files"
    assert proxy.count(LS_OPERATIONS[operation]) - earlier == expected_attempts(fault)
    assert time.monotonic() - started < (RETRIES + 1) * TIMEOUT_S + 20


@pytest.mark.integration
def test_a_label_studio_import_whose_answer_is_lost_is_not_imported_twice(server, ls_world, proxy_for, monkeypatch):
    params = ls_params(ls_world, "import-lost")
    proxy = proxy_for(server.url)
    monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
    proxy.script(LS_OPERATIONS["import"], "forward-503", "forward")
    result = label.run(params, cycle=CYCLE)
    tasks = server_tasks(server, result.project_id)
    ledger = read_ledger(ledger_path(params))
    assert proxy.count(LS_OPERATIONS["import"]) == 1  # the retry re-listed the project and found them
    assert len(tasks) == len({t["data"]["image_sha256"] for t in tasks}) == len(ledger) == result.pending > 0
    assert {r["task_id"] for r in ledger.values()} == {t["id"] for t in tasks}


@pytest.mark.integration
def test_a_storage_whose_answer_is_lost_is_not_registered_twice(server, ls_world, proxy_for, monkeypatch):
    params = ls_params(ls_world, "storage-lost")
    proxy = proxy_for(server.url)
    monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
    pattern = r"^POST /api/storages/localfiles/?(\?|$)"
    proxy.script(pattern, "forward-503", "forward")
    result = label.run(params, cycle=CYCLE)
    answer = httpx.get(
        f"{server.url}/api/storages/localfiles/",
        params={"project": result.project_id},
        headers={"Authorization": f"Token {os.environ[labelstudio.TOKEN_ENV]}"},
        timeout=30,
    )
    paths = [s["path"] for s in answer.json()]
    assert proxy.count(pattern) >= 1 and len(paths) == len(set(paths)) > 0, f"storages {paths}"


@pytest.mark.integration
def test_an_annotation_whose_answer_is_lost_is_not_made_twice(server, ls_world, proxy_for, monkeypatch):
    params = ls_params(ls_world, "annotation-lost")
    proxy = proxy_for(server.url)
    monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
    result = label.run(params, cycle=CYCLE)
    pattern = r"^POST /api/tasks/\d+/annotations"
    proxy.script(pattern, "forward-503", "forward")
    answered = annotator.run(params, limit=2)
    assert answered.answered == 2 and proxy.count(pattern) >= 1
    answer = httpx.get(
        f"{server.url}/api/tasks/",
        params={"project": result.project_id, "page_size": 1000, "fields": "all"},
        headers={"Authorization": f"Token {os.environ[labelstudio.TOKEN_ENV]}"},
        timeout=30,
    )
    counts = {t["id"]: len(t["annotations"]) for t in answer.json()["tasks"] if t["annotations"]}
    assert counts == dict.fromkeys(answered.task_ids, 1), f"annotations per task {counts}"


# ============================================================ MLflow server

MLFLOW_OPERATIONS = {
    "register": r"^POST /api/2.0/mlflow/model-versions/create",
    "alias": r"^GET /api/2.0/mlflow/registered-models/alias",
}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (SQLite store, served artifacts) in a temp dir; its URL."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def mlflow_env(monkeypatch) -> Iterator[None]:
    """MLflow's own HTTP client: 2 retries, no back-off sleep, short timeouts; the store URI read afresh."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(RETRIES))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(TIMEOUT_S))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow_adapter._user_tracking_uri.cache_clear()
    mlflow_adapter._user_env.cache_clear()
    yield
    mlflow_adapter._user_tracking_uri.cache_clear()
    mlflow_adapter._user_env.cache_clear()


def mlflow_params(tmp_path: Path, store: str, monkeypatch) -> Params:
    data = tiny_params_dict(tmp_path)
    data["registry"].update(tracking_uri=store, model_name=f"down-{uuid.uuid4().hex[:8]}")
    # mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI: set it here so that the monkeypatch puts it back after
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow_adapter._user_tracking_uri.cache_clear()
    return Params.model_validate(data)


def candidate(params: Params) -> Params:
    """A trained and exported candidate as the registry stage finds it (files stand in for the models)."""
    paths = params.base.paths
    weights = paths.models / "train" / "best.pt"
    onnx = paths.models / "export" / "model.onnx"
    for file, content in ((weights, b"checkpoint"), (onnx, b"onnx"), (paths.train / "images" / "a.png", b"png")):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content)
    with mlflow_adapter.mlflow_run(params, run_name="train-down") as run_id:
        pass
    trained = TrainResult(
        weights=str(weights),
        family="yolo",
        license="AGPL-3.0",
        base_weights="scratch:test.yaml",
        epochs=1,
        final_metrics={},
        mlflow_run_id=run_id,
        wall_s=0.0,
    )
    write_report(paths.reports, "train", trained, params)
    return params


def registry_state(params: Params, store: str) -> tuple:
    """The versions (with aliases) of the model on the real server, the registry report and the audit log."""
    from mlflow import MlflowClient

    direct = MlflowClient(tracking_uri=store, registry_uri=store)
    name = params.registry.model_name
    versions = sorted((int(v.version), v.run_id) for v in direct.search_model_versions(f"name='{name}'"))
    aliases = {}
    if versions:
        aliases = dict(direct.get_registered_model(name).aliases or {})
    files = files_under(report_path(params.base.paths.reports, "registry"), params.promote.audit_log)
    return versions, aliases, files


@pytest.mark.integration
@pytest.mark.parametrize(
    ("operation", "fault"),
    [
        # a registration that times out uploads the whole model first (~20 s): the alias read times out in the fast part
        pytest.param(
            op, fault, id=f"{op}-{fault}", marks=[pytest.mark.slow] if (op, fault) == ("register", "timeout") else []
        )
        for op in MLFLOW_OPERATIONS
        for fault in FAULTS
    ],
)
def test_mlflow_server_down_or_slow(mlflow_server, mlflow_env, proxy_for, tmp_path, monkeypatch, operation, fault):
    proxy = proxy_for(mlflow_server)
    params = mlflow_params(tmp_path, proxy.url, monkeypatch)
    if operation == "register":
        candidate(params)
    else:
        registry.run(candidate(params))
        mlflow_adapter.set_alias(params, "champion", "1")
    before = registry_state(params, mlflow_server)
    earlier = arm(proxy, fault, MLFLOW_OPERATIONS[operation])

    started = time.monotonic()
    if fault == "5xx-then-success":
        if operation == "register":
            assert registry.run(params).version == "1"
            assert len(registry_state(params, mlflow_server)[0]) == 1
        else:
            assert mlflow_adapter.get_alias(params, "champion").version == "1"
    else:
        with pytest.raises(mlflow_adapter.RegistryUnavailableError) as raised:
            registry.run(params) if operation == "register" else mlflow_adapter.get_alias(params, "champion")
        assert_clear_error(raised.value, service="MLflow", url=proxy.url, command="make mlflow-ui")
        assert registry_state(params, mlflow_server) == before, "a failed registry call changed the registry"
    assert proxy.count(MLFLOW_OPERATIONS[operation]) - earlier == expected_attempts(fault)
    # bounded: the retries' timeouts plus the call's own work (a registration uploads the model: ~40 s on a busy host)
    assert time.monotonic() - started < (RETRIES + 1) * TIMEOUT_S + 60


@pytest.mark.integration
@pytest.mark.timeout(90)  # MLflow's own defaults (120 s per request, 7 retries) would hang here for ~20 min
def test_the_registry_params_bound_an_mlflow_server_that_hangs(mlflow_server, proxy_for, tmp_path, monkeypatch):
    for name in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR", "BACKOFF_JITTER"):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", "")  # so that the monkeypatch removes what the adapter sets
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}")  # unset: registry.timeout_s and .retries apply
    mlflow_adapter._user_env.cache_clear()
    proxy = proxy_for(mlflow_server)
    data = tiny_params_dict(tmp_path)
    data["registry"].update(tracking_uri=proxy.url, timeout_s=2, retries=1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)  # put back after the test (the adapter sets it)
    mlflow_adapter._user_tracking_uri.cache_clear()
    params = Params.model_validate(data)
    pattern = MLFLOW_OPERATIONS["alias"]
    proxy.script(pattern, "hang")
    started = time.monotonic()
    with pytest.raises(mlflow_adapter.RegistryUnavailableError) as raised:
        mlflow_adapter.get_alias(params, "champion")
    assert_clear_error(raised.value, service="MLflow", url=proxy.url, command="make mlflow-ui")
    assert proxy.count(pattern) == 2 and time.monotonic() - started < 30
    mlflow_adapter._user_env.cache_clear()


@pytest.mark.integration
def test_a_model_version_whose_answer_is_lost_is_not_registered_twice(
    mlflow_server, mlflow_env, proxy_for, tmp_path, monkeypatch
):
    proxy = proxy_for(mlflow_server)
    params = candidate(mlflow_params(tmp_path, proxy.url, monkeypatch))
    proxy.script(MLFLOW_OPERATIONS["register"], "forward-503", "forward")
    result = registry.run(params)  # MLflow's client retries the create: the server makes a second version
    versions, _, _ = registry_state(params, mlflow_server)
    assert proxy.count(MLFLOW_OPERATIONS["register"]) == 2
    assert [v for v, _ in versions] == [int(result.version)] == [1], f"one training run, versions {versions}"


# ============================================================ Prefect API

PREFECT_OPERATIONS = {"start-deployment": r"^POST /api/deployments/[0-9a-f-]+/create_flow_run"}


@pytest.fixture(scope="module")
def deployment(prefect_harness) -> uuid.UUID:
    """``continuous_learning/retrain`` registered on the harness server (no worker runs it)."""
    from prefect.client.orchestration import get_client

    from flows.continuous_learning import continuous_learning
    from tests.integration.test_trigger_deployment import retrain_parameters

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("continuous_learning")
        return client.create_deployment(
            flow_id=flow_id,
            name="retrain",
            entrypoint="flows/continuous_learning.py:continuous_learning",
            parameters=retrain_parameters(),
            parameter_openapi_schema=continuous_learning.parameters.model_dump(),
            enforce_parameter_schema=True,
        )


def flow_runs(deployment: uuid.UUID, api: str) -> list[str]:
    """The deployment's flow runs, read from the harness server itself (``api``), not through the proxy."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])))
    return sorted(str(r.id) for r in runs)


@pytest.fixture
def via_proxy(deployment, proxy_for) -> Iterator[FaultProxy]:
    """The Prefect API URL pointed at a proxy in front of the harness server; short client timeouts."""
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    harness = str(PREFECT_API_URL.value())
    proxy = proxy_for(harness.removesuffix("/api"))
    settings = {
        PREFECT_API_URL: f"{proxy.url}/api",
        PREFECT_CLIENT_MAX_RETRIES: RETRIES,
        PREFECT_API_REQUEST_TIMEOUT: TIMEOUT_S,
    }
    with temporary_settings(settings):
        yield proxy


@pytest.mark.integration
@pytest.mark.parametrize("fault", list(FAULTS))
def test_prefect_api_down_or_slow_at_the_trigger(deployment, via_proxy, tmp_path, fault):
    from flows.trigger import TriggerError, start_cycle

    params = Params.model_validate(tiny_params_dict(tmp_path))
    pattern = PREFECT_OPERATIONS["start-deployment"]
    before = flow_runs(deployment, f"{via_proxy.upstream}/api")
    arm(via_proxy, fault, pattern)

    started = time.monotonic()
    if fault == "5xx-then-success":
        run_id = start_cycle("params.yaml", params, ["2026-11-02"])
        assert flow_runs(deployment, f"{via_proxy.upstream}/api") == sorted([*before, run_id])
    else:
        with pytest.raises(TriggerError) as raised:
            start_cycle("params.yaml", params, ["2026-11-02"])
        assert_clear_error(raised.value, service="Prefect API", url=via_proxy.url, command="make deploy")
        assert flow_runs(deployment, f"{via_proxy.upstream}/api") == before, "a failed trigger left a flow run behind"
    assert via_proxy.count(pattern) == expected_attempts(fault)
    assert time.monotonic() - started < (RETRIES + 1) * TIMEOUT_S + 20


@pytest.mark.integration
def test_a_trigger_whose_answer_is_lost_starts_one_cycle(deployment, via_proxy, tmp_path):
    from flows.trigger import start_cycle

    params = Params.model_validate(tiny_params_dict(tmp_path))
    pattern = PREFECT_OPERATIONS["start-deployment"]
    before = flow_runs(deployment, f"{via_proxy.upstream}/api")
    via_proxy.script(pattern, "forward-503", "forward")
    run_id = start_cycle("params.yaml", params, ["2026-11-02"])
    assert via_proxy.count(pattern) == 2
    assert flow_runs(deployment, f"{via_proxy.upstream}/api") == sorted([*before, run_id]), (
        "the retried create made a second flow run"
    )


# ============================================================================ a store that does not answer


@pytest.fixture
def down(tmp_path, monkeypatch) -> Params:
    with socket.socket() as sock:  # a port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tiny_params_dict(tmp_path)
    data["registry"]["tracking_uri"] = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the retries are MLflow's; the verdict is ours
    # mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI: set it here so that the monkeypatch puts it back after
    monkeypatch.setenv("MLFLOW_TRACKING_URI", data["registry"]["tracking_uri"])
    mlflow_adapter._user_tracking_uri.cache_clear()
    mlflow_adapter._user_env.cache_clear()
    yield Params.model_validate(data)
    mlflow_adapter._user_tracking_uri.cache_clear()
    mlflow_adapter._user_env.cache_clear()


@pytest.mark.parametrize("call", ["get_alias", "find_alias"])
def test_a_registry_server_that_is_down_is_not_a_missing_champion(down, call):
    started = time.monotonic()
    with pytest.raises(mlflow_adapter.RegistryUnavailableError) as raised:
        getattr(mlflow_adapter, call)(down, "champion")
    message = str(raised.value)
    assert down.registry.tracking_uri in message and "did not answer" in message and "make mlflow-ui" in message
    assert "bootstrap" not in message
    assert time.monotonic() - started < 30


def test_deleting_an_alias_on_a_server_that_is_down_fails_loudly(down):
    with pytest.raises(mlflow_adapter.RegistryUnavailableError):
        mlflow_adapter.delete_alias(down, "challenger")


def test_a_missing_alias_is_still_a_missing_alias(tmp_path, monkeypatch):
    data = tiny_params_dict(tmp_path)
    data["registry"]["model_name"] = "services-down-missing-alias"
    params = Params.model_validate(data)
    # this test's own store, whatever an earlier test left in MLFLOW_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", params.registry.tracking_uri)
    mlflow_adapter._user_tracking_uri.cache_clear()
    mlflow_adapter.client(params).create_registered_model(params.registry.model_name)
    with pytest.raises(mlflow_adapter.AliasNotFoundError, match="create the first champion"):
        mlflow_adapter.get_alias(params, "champion")
    assert mlflow_adapter.find_alias(params, "champion") is None
    mlflow_adapter.delete_alias(params, "challenger")  # not set: nothing to do, no error
    mlflow_adapter._user_tracking_uri.cache_clear()
