"""A store that does not answer is said to be down, never mistaken for "nothing there".

Before: with ``MLFLOW_TRACKING_URI`` pointing at an MLflow server that was down, resolving the champion failed
(after minutes of MLflow's HTTP retries) as "no 'champion' alias; create the first champion with the bootstrap
flow", an invitation to register a second first champion. Now it is a ``RegistryUnavailableError`` naming the store
and the fix, and ``find_alias`` (which treats "no alias" as None) no longer swallows it.
"""

from __future__ import annotations

import socket
import time

import pytest

from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tests.conftest import tiny_params_dict


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
    yield Params.model_validate(data)
    mlflow_adapter._user_tracking_uri.cache_clear()


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
