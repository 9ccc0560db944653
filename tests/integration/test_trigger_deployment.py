"""Starting a cycle through its deployment (``run_deployment``) on the Prefect test harness; no worker runs it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import yaml

from tasks.config import Params
from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def retrain_parameters() -> dict:
    """The ``retrain`` deployment's default parameters, as prefect.yaml declares them."""
    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    (retrain,) = [d for d in deployments if d["name"] == "retrain"]
    return retrain["parameters"]


@pytest.fixture(scope="module")
def deployment_id(prefect_harness) -> uuid.UUID:
    """``continuous_learning/retrain`` registered on the harness server with the flow's own parameter schema, enforced
    (so a parameter the flow does not declare would be refused)."""
    from prefect.client.orchestration import get_client

    from flows.continuous_learning import continuous_learning

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


@pytest.fixture
def params(tmp_path: Path) -> Params:
    return Params.model_validate(tiny_params_dict(tmp_path))


def test_prefect_yaml_passes_drift_batches_to_the_retrain_deployment():
    assert "drift_batches" in retrain_parameters() and retrain_parameters()["drift_batches"] is None


def test_start_cycle_creates_a_scheduled_run_of_the_deployment_with_the_batches(deployment_id, params, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.trigger import start_cycle

    params_path = str(tmp_path / "params.yaml")
    run_id = start_cycle(params_path, params, ["2026-11-02"])

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(run_id))
    assert run.deployment_id == deployment_id
    assert run.state is not None and run.state.type.value in {"SCHEDULED", "PENDING"}
    assert run.parameters["drift_batches"] == ["2026-11-02"]
    assert run.parameters["params_path"] == params_path
    assert run.parameters["epochs"] is None  # the deployment's defaults merged in


def test_a_missing_deployment_is_a_trigger_error_naming_it(deployment_id, params, tmp_path):
    from flows.trigger import TriggerError, start_cycle

    data = tiny_params_dict(tmp_path)
    data["monitor"]["trigger"]["deployment"] = "continuous_learning/not-deployed"
    missing = Params.model_validate(data)
    with pytest.raises(TriggerError, match=r"deployment 'continuous_learning/not-deployed' not found .*make deploy"):
        start_cycle("params.yaml", missing, ["2026-11-02"])


def test_prefect_api_down_is_a_fast_clear_trigger_error(params):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.trigger import TriggerError, start_cycle

    down = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: down}), pytest.raises(TriggerError) as raised:
        start_cycle("params.yaml", params, ["2026-11-02"])
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "continuous_learning/retrain" in message and down in message
    assert "is the Prefect server up? make deploy" in message


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(None, ["2026-11-01", "2026-11-02"], id="none-keeps-the-params-batches"),
        pytest.param([], ["2026-11-01", "2026-11-02"], id="empty-keeps-the-params-batches"),
        pytest.param(["2026-11-02", "2026-11-03"], ["2026-11-01", "2026-11-02", "2026-11-03"], id="union-in-order"),
    ],
)
def test_the_flow_parameter_drift_batches_is_added_to_the_params_ones(tmp_path, given, expected):
    from flows.continuous_learning import _load

    data = tiny_params_dict(tmp_path, sample={"drift_batches": ["2026-11-01", "2026-11-02"]})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    params = _load(str(params_file), {"cycle": {"epochs": 2}, "label": {"wait_timeout_s": None}}, given)
    assert params.sample.drift_batches == expected
    assert params.cycle.epochs == 2  # the other overrides still apply
