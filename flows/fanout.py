"""Fan-out of the ``predict`` and ``evaluate`` stages over Dask (prefect-dask), switched on by ``<stage>.shards`` > 1.

With ``shards`` 1 (the default) a flow runs the stage's Prefect task as it always did. Above 1 it runs the stage's
plan in the flow, maps its shard function over a :class:`prefect_dask.DaskTaskRunner` (one Prefect task per shard,
never one per image), and combines the results in the flow: the combine step is the only one that writes, in image
order, so the log rows and the mAP are the single-process run's.

Where the shards run (``base.dask``): the scheduler at ``DASK_SCHEDULER_ADDRESS`` when set, else at
``base.dask.address``; with neither, a LocalCluster of ``base.dask.workers`` processes (one task thread each, bound
to 127.0.0.1, no dashboard) that lives for the fan-out (~4 s to start). Each shard's inference session runs
``base.dask.threads`` intra-op threads, so that workers × threads matches the cores.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import dask
from prefect.tasks import Task
from prefect.utilities.annotations import quote, unmapped
from prefect_dask import DaskTaskRunner

from flows import stages
from tasks.config import Params, VisionloopError
from tasks.contracts.predict_plan import PredictPlan
from tasks.contracts.reports.evaluate import EvaluateReport
from tasks.contracts.reports.predict import PredictResult
from tasks.evaluate import EvaluatePlan

ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
T = TypeVar("T")
Plan = TypeVar("Plan", PredictPlan, EvaluatePlan)

# Dask settings a LocalCluster's workers start with (the nannies hand the parent's config to them):
# - no statistical profiler: it samples every thread's stack each 10 ms under the GIL; a shard runs 8 read threads
#   beside its inference, and on busy cores the sampling starved the worker's event loop until a heartbeat missed
#   the scheduler's worker-ttl and the worker, with the shard results it held, was restarted. Nothing reads it.
# - glibc's own malloc trim threshold, not Dask's 64 KiB (MALLOC_TRIM_THRESHOLD_, set to return memory to the OS
#   early): with it, every decoded image and input tensor went back to the OS and was faulted in again; measured on
#   2 000 production images (Sapphire Rapids), PNG decode + letterbox +30-60 % CPU, inference +10-15 %. A shard's
#   memory is freed when it ends either way.
LOCAL_WORKER_CONFIG: dict[str, object] = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


class FanOutError(VisionloopError, RuntimeError):
    """The Dask scheduler the shards should run on cannot be reached or started."""


def scheduler_address(params: Params) -> tuple[str | None, str]:
    """The scheduler address the shards go to, and where it came from (None: a LocalCluster is started)."""
    if os.environ.get(ADDRESS_ENV):
        return os.environ[ADDRESS_ENV], f"environment variable {ADDRESS_ENV}"
    if params.base.dask.address:
        return params.base.dask.address, "params base.dask.address"
    return None, "a LocalCluster on 127.0.0.1"


def dask_runner(params: Params) -> DaskTaskRunner:
    """The task runner the shards go to: an existing scheduler, or a LocalCluster on 127.0.0.1 (``base.dask``)."""
    address, _ = scheduler_address(params)
    if address:
        return DaskTaskRunner(address=address, client_kwargs={"timeout": params.base.dask.timeout_s})
    cluster = {
        "n_workers": params.base.dask.workers,
        "threads_per_worker": 1,  # one shard at a time per worker: its session has base.dask.threads
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster)


@contextlib.contextmanager
def started_runner(params: Params) -> Iterator[DaskTaskRunner]:
    """The started runner, connected (a scheduler that cannot be reached fails here, naming its address)."""
    address, origin = scheduler_address(params)
    runner = dask_runner(params)
    with dask.config.set(LOCAL_WORKER_CONFIG if address is None else {}), runner:
        try:
            runner.client  # noqa: B018 (connects now: a bad address fails before any shard is submitted)
        except (OSError, TimeoutError, ValueError) as exc:
            where = f"the Dask scheduler at {address!r} (from {origin})" if address else origin
            fix = f"start it, or fix base.dask.address / unset {ADDRESS_ENV}" if address else "check base.dask"
            raise FanOutError(f"cannot reach {where}: {type(exc).__name__}: {exc}; {fix}") from exc
        yield runner


def unwalked(value: T) -> T:
    """``value`` as a task parameter Prefect does not walk (``quote``; the task receives ``value`` itself).

    Prefect visits every element of a task's parameters looking for futures to resolve. The plan and the shards'
    results hold every image of the run and never a future: at the combine, walking them cost ~7 s per 20 k images
    (benchmarks/scale.py: 0.4 s for the same combine called directly), for nothing. Only for tasks called in the
    flow: prefect-dask's submissions walk their parameters whatever the annotation.
    """
    return cast(T, quote(value))


def map_shards(params: Params, task: Task[..., Any], plan: Plan) -> list[Any]:
    """Run ``task(params, plan.for_shards(), shard)`` for every shard of ``plan`` on Dask; the results in shard order
    (failures raise).

    Each shard gets the plan without every shard's images: prefect-dask walks and pickles each submission's
    parameters, so an unmapped plan is walked once per shard (20 submissions of a 20 000-image plan cost ~4.5 s of
    the flow's CPU in a probe on a busy 2-core host, 0.0 s without).
    """
    if not plan.shards:
        return []
    with started_runner(params) as runner:
        # not unwalked: prefect-dask walks (and rebuilds) every submitted parameter itself, quoted or not
        mapped = {"params": unmapped(params), "plan": unmapped(plan.for_shards()), "shard": list(plan.shards)}
        futures = runner.map(task, mapped)
        return [future.result() for future in futures]


def predict(params: Params, *, batches: list[str] | None = None, alias: str | None = None) -> PredictResult:
    """The ``predict`` stage, fanned out over Dask when ``predict.shards`` > 1 (else its one Prefect task)."""
    if params.predict.shards <= 1:
        return stages.predict(params, batches=batches, alias=alias)
    plan = stages.predict_plan(params, batches=batches, alias=alias, threads=params.base.dask.threads)
    results = map_shards(params, stages.predict_shard, plan)
    return stages.predict_combine(params, unwalked(plan), unwalked(results))


def evaluate(params: Params, *, model_path: Path | None = None) -> EvaluateReport:
    """The ``evaluate`` stage, fanned out over Dask when ``evaluate.shards`` > 1 (else its one Prefect task)."""
    if params.evaluate.shards <= 1:
        return stages.evaluate(params, model_path=model_path)
    plan = stages.evaluate_plan(params, model_path=model_path, threads=params.base.dask.threads)
    results = map_shards(params, stages.evaluate_shard, plan)
    return stages.evaluate_combine(params, unwalked(plan), unwalked(results))
