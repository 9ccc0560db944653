"""Start a continuous-learning cycle through its Prefect deployment, with the drifted batches flagged.

:func:`start_cycle` creates a flow run of ``monitor.trigger.deployment`` (``continuous_learning/retrain`` by
default) with ``run_deployment(..., timeout=0)``: the run is created Scheduled and a worker on the deployment's pool
runs it (``make deploy``); nothing here waits for it. The batches go in as the flow parameter ``drift_batches``,
which the cycle adds to ``sample.drift_batches``.

The Prefect client retries (``PREFECT_CLIENT_MAX_RETRIES``, ``PREFECT_API_REQUEST_TIMEOUT`` each) 502/503/429 and
timeouts; each trigger sends one idempotency key, so a create whose answer was lost is not a second cycle. An API
that is down, hangs or keeps failing is a :class:`TriggerError` naming the API URL and ``make deploy``.

Whether to trigger at all (confirmed drift, cool-down, a cycle already open) is decided elsewhere, by a pure
function; the demo, which has no worker, calls the cycle in-process on the same decision instead.
"""

from __future__ import annotations

import uuid

import httpx
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound, PrefectException
from prefect.settings import PREFECT_API_URL

from tasks.config import Params, VisionloopError


class TriggerError(VisionloopError, RuntimeError):
    """The cycle's deployment could not be started: the Prefect API is down, or the deployment does not exist."""


def _api_url() -> str:
    url = PREFECT_API_URL.value()
    return str(url) if url else "(PREFECT_API_URL unset: a temporary local server)"


def start_cycle(params_path: str | list[str], params: Params, batches: list[str]) -> str:
    """Create a flow run of the cycle's deployment for ``batches``; return its flow run id.

    Args:
        params_path: the params file(s) the cycle reads (the flow parameter ``params_path``).
        params: ``monitor.trigger.deployment`` names the deployment (``<flow name>/<deployment name>``).
        batches: the drifted batches, passed as the flow parameter ``drift_batches``.

    Raises:
        TriggerError: the deployment does not exist, or the Prefect API cannot be reached or refused the run
            (names the deployment and the API URL).
    """
    name = params.monitor.trigger.deployment
    try:
        flow_run: FlowRun = run_deployment(  # type: ignore[call-arg,assignment]  # _sync: async_dispatch's keyword
            name=name,
            parameters={"params_path": params_path, "drift_batches": list(batches)},
            timeout=0,
            # The Prefect client retries a create whose answer was lost (a 503 or a dropped connection after the
            # server committed it): one key per trigger makes the server answer the retry with the same run.
            idempotency_key=f"visionloop-trigger-{uuid.uuid4()}",
            _sync=True,
        )
    except ObjectNotFound as exc:
        raise TriggerError(
            f"deployment {name!r} not found on the Prefect API at {_api_url()}: register it with `make deploy` "
            "(prefect.yaml) or set monitor.trigger.deployment"
        ) from exc
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code >= 500:  # still failing after the Prefect client's own retries
            raise TriggerError(_unreachable(name, f"HTTP {exc.response.status_code}")) from exc
        # the server answered: it refused the run (e.g. parameters off-schema)
        raise TriggerError(f"the Prefect API at {_api_url()} refused a run of deployment {name!r}: {exc}") from exc
    except (httpx.HTTPError, PrefectException, RuntimeError) as exc:  # RuntimeError: "Failed to reach API at ..."
        raise TriggerError(_unreachable(name, f"{type(exc).__name__}: {exc}")) from exc
    return str(flow_run.id)


def _unreachable(name: str, why: str) -> str:
    return (
        f"could not start deployment {name!r}: the Prefect API at {_api_url()} cannot be reached ({why}; "
        "PREFECT_CLIENT_MAX_RETRIES retries, PREFECT_API_REQUEST_TIMEOUT s each); is the Prefect server up? "
        "make deploy"
    )
