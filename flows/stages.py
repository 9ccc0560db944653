"""Prefect task wrappers of the stage functions: retries, timeouts, cache policy. Nothing else.

One task per stage, named like the stage, calling the very function ``python -m tasks.<stage>`` (and so
``dvc repro``) calls. Stage code never imports Prefect; this is the only module that wraps it.

Retries only where running the stage again after a failure half-way is safe and gives the same result (idempotent):
``registry`` (a re-run finds the version its training run already has instead of registering a second one) and
``champion`` (downloads land complete or not at all; the parent checkpoint is written atomically). Nothing else
retries here: ``label`` talks to Label Studio through ``tasks.adapters.labelstudio``, which already retries each
request (a second loop around it would multiply the attempts and the waiting); ``promote`` and ``rollback`` append
to the audit trail, so a retry after the append would record the moves twice; ``train`` would start a second MLflow
run; the other stages are long computations where a retry repeats the same failure.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

import tasks.adapters.dvc
import tasks.adapters.mlflow
import tasks.compress
import tasks.cycle
import tasks.doctor
import tasks.evaluate
import tasks.export
import tasks.forget
import tasks.gate
import tasks.ingest
import tasks.label
import tasks.merge
import tasks.monitor
import tasks.predict
import tasks.promote
import tasks.registry
import tasks.sample
import tasks.train
import tasks.validate
import tasks.world
from tasks.config import Params
from tasks.contracts.deployed import Deployed
from tasks.contracts.predict_plan import PredictPlan, PredictShard, ShardResult
from tasks.contracts.reports.compress import CompressReport
from tasks.contracts.reports.cycle import CycleReport
from tasks.contracts.reports.doctor import DoctorReport
from tasks.contracts.reports.evaluate import EvaluateReport
from tasks.contracts.reports.export import ExportReport
from tasks.contracts.reports.gate import GateReport
from tasks.contracts.reports.ingest import IngestReport
from tasks.contracts.reports.label import LabelResult
from tasks.contracts.reports.merge import MergeResult
from tasks.contracts.reports.monitor import MonitorReport
from tasks.contracts.reports.predict import PredictResult
from tasks.contracts.reports.promote import PromoteResult
from tasks.contracts.reports.registry import RegistryResult
from tasks.contracts.reports.sample import SampleResult
from tasks.contracts.reports.train import TrainResult

# No task tags: Prefect looks up the concurrency limits of a task's tags through the API at every task start once
# its 5 s "no limits" cache has expired, ~2 s per stage start here (benchmarks/cycle.py; a toy flow: 1.9-2.1 s gaps
# with a tag, 0.01 s without). The deployments carry the ``visionloop`` tag (prefect.yaml), so runs stay findable.
_COMMON: dict[str, Any] = {"cache_policy": NO_CACHE}


@task(name="forget", **_COMMON)
def forget(params: Params, image: str | None = None, retention: bool = False) -> tasks.forget.ForgetReport:
    return tasks.forget.run(params, image=image, retention=retention)


@task(name="world", **_COMMON)
def world(params: Params) -> tasks.world.WorldResult:
    return tasks.world.run(params)


@task(name="train", **_COMMON)
def train(params: Params) -> TrainResult:
    return tasks.train.run(params)


@task(name="compress", **_COMMON)
def compress(params: Params) -> CompressReport:
    return tasks.compress.run(params)


@task(name="evaluate", **_COMMON)
def evaluate(params: Params, model_path: Path | None = None) -> EvaluateReport:
    return tasks.evaluate.run(params, model_path=model_path)


# The shards of a fanned-out evaluation (flows/fanout.py): plan and combine run in the flow, each shard on a worker.
@task(name="evaluate_plan", **_COMMON)
def evaluate_plan(
    params: Params, model_path: Path | None = None, threads: int | None = None
) -> tasks.evaluate.EvaluatePlan:
    return tasks.evaluate.plan(params, model_path=model_path, threads=threads)


@task(name="evaluate_shard", **_COMMON)
def evaluate_shard(
    params: Params, plan: tasks.evaluate.EvaluatePlan, shard: tasks.evaluate.EvaluateShard
) -> tasks.evaluate.ShardDetections:
    return tasks.evaluate.run_shard(params, plan, shard)


@task(name="evaluate_combine", **_COMMON)
def evaluate_combine(
    params: Params, plan: tasks.evaluate.EvaluatePlan, results: list[tasks.evaluate.ShardDetections]
) -> EvaluateReport:
    return tasks.evaluate.combine(params, plan, results)


@task(name="export", **_COMMON)
def export(params: Params) -> ExportReport:
    return tasks.export.run(params)


@task(name="registry", retries=2, retry_delay_seconds=5, **_COMMON)  # idempotent: one version per training run
def registry(
    params: Params, extra_lineage: dict[str, str] | None = None, extra_reports: dict[str, Path] | None = None
) -> RegistryResult:
    return tasks.registry.run(params, extra_lineage=extra_lineage, extra_reports=extra_reports)


@task(name="dvc_pin", **_COMMON)  # no retries: a failed push is retried by the next pin, the version says so
def dvc_pin(params: Params, version: str) -> dict[str, str]:
    return tasks.registry.pin(params, version, name=f"{params.registry.model_name}-v{version}")


@task(name="restore", **_COMMON)  # no retries: a failed restore names what is missing; running it again is the fix
def restore(params: Params, version: str) -> tasks.registry.Restored:
    return tasks.registry.restore(params, version)


@task(name="promote", **_COMMON)  # no retries: the audit trail is appended once per call
def promote(
    params: Params,
    version: str,
    decision: tasks.promote.Action,
    reasons: list[str],
    who: str | None = None,
    expected_champion: tasks.promote.Expected = tasks.promote.ANY,
) -> PromoteResult:
    return tasks.promote.run(
        params, version=version, decision=decision, reasons=reasons, who=who, expected_champion=expected_champion
    )


@task(name="rollback", **_COMMON)  # no retries: a second try finds the target already champion
def rollback(
    params: Params,
    to_version: str | None,
    why: str,
    who: str | None = None,
    expected_champion: tasks.promote.Expected = tasks.promote.ANY,
) -> PromoteResult:
    return tasks.promote.rollback(params, to_version=to_version, why=why, who=who, expected_champion=expected_champion)


@task(name="predict", **_COMMON)
def predict(params: Params, batches: list[str] | None = None, alias: str | None = None) -> PredictResult:
    return tasks.predict.run(params, batches=batches, alias=alias)


# The shards of a fanned-out prediction (flows/fanout.py): plan and combine run in the flow, each shard on a worker;
# only combine writes the log.
@task(name="predict_plan", **_COMMON)
def predict_plan(
    params: Params, batches: list[str] | None = None, alias: str | None = None, threads: int | None = None
) -> PredictPlan:
    return tasks.predict.plan(params, batches=batches, alias=alias, threads=threads)


@task(name="predict_shard", **_COMMON)
def predict_shard(params: Params, plan: PredictPlan, shard: PredictShard) -> ShardResult:
    return tasks.predict.run_shard(params, plan, shard)


@task(name="predict_combine", **_COMMON)
def predict_combine(params: Params, plan: PredictPlan, results: list[ShardResult]) -> PredictResult:
    return tasks.predict.combine(params, plan, results)


@task(name="gate", **_COMMON)
def gate(
    params: Params,
    candidate: Path,
    champion: Path | None,
    candidate_deployed: Deployed | None = None,
    champion_deployed: Deployed | None = None,
) -> GateReport:
    return tasks.gate.run(
        params,
        candidate=candidate,
        champion=champion,
        candidate_deployed=candidate_deployed,
        champion_deployed=champion_deployed,
    )


@task(name="label", **_COMMON)  # no retries: the Label Studio adapter retries each request
def label(params: Params, cycle: str) -> LabelResult:
    return tasks.label.run(params, cycle=cycle)


@task(name="validate", **_COMMON)
def validate(params: Params, cycle: str) -> tasks.validate.ValidateResult:
    return tasks.validate.run(params, cycle=cycle)


@task(name="sample", **_COMMON)
def sample(params: Params, cycle: str) -> SampleResult:
    return tasks.sample.run(params, cycle=cycle)


@task(name="merge", **_COMMON)
def merge(params: Params, cycle: str | None) -> MergeResult:
    return tasks.merge.run(params, cycle=cycle)


@task(name="dvc_record", **_COMMON)  # no retries: the adapter waits for DVC's lock itself
def dvc_record(params: Params, ran: list[str]) -> tasks.adapters.dvc.Recorded:
    return tasks.adapters.dvc.record(params, ran)


@task(name="cycle_start", **_COMMON)
def cycle_start(params: Params, cycle: str | None = None) -> tasks.cycle.CycleState:
    return tasks.cycle.start(params, cycle=cycle)


@task(name="cycle_finish", **_COMMON)
def cycle_finish(
    params: Params, state: tasks.cycle.CycleState, status: tasks.cycle.Status, outcome: str
) -> tasks.cycle.CycleState:
    return tasks.cycle.finish(params, state, status=status, outcome=outcome)


@task(name="champion", retries=2, retry_delay_seconds=5, **_COMMON)  # idempotent: atomic downloads and writes
def champion(params: Params) -> tasks.cycle.ChampionFiles | None:
    return tasks.cycle.fetch_champion(params)


@task(name="cycle", **_COMMON)
def cycle(params: Params, cycle: str, outcome: str, since: dt.datetime | None = None) -> CycleReport:
    return tasks.cycle.run(params, cycle=cycle, outcome=outcome, since=since)


@task(name="monitor", **_COMMON)  # no retries: it decides; the monitor flow acts and records what it did
def monitor(params: Params, cycle_open: str | None = None) -> MonitorReport:
    return tasks.monitor.run(params, cycle_open=cycle_open)


@task(name="ingest", **_COMMON)  # no retries: a second run of the same file adds nothing, but a failure repeats
def ingest(params: Params, path: Path) -> IngestReport:
    return tasks.ingest.run(params, path=path)


@task(name="baseline", **_COMMON)
def baseline(params: Params, version: str) -> str:
    """The promoted version's monitoring baseline, stored with it (``monitor/baseline.parquet``)."""
    info = tasks.adapters.mlflow.get_version(params, version)
    return tasks.monitor.ensure_baseline(params, info)[1]


@task(name="doctor", **_COMMON)  # read-only: reports inconsistencies between the stores, repairs nothing
def doctor(params: Params) -> DoctorReport:
    return tasks.doctor.run(params)
