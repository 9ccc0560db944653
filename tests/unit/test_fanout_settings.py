"""Where flows/fanout.py sends shards (env over params over a LocalCluster) and how an unreachable scheduler fails."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from flows import fanout
from tasks.config import Params
from tasks.contracts.predict_plan import ImageChunk, PredictPlan, PredictShard
from tasks.contracts.yolo_labels import LabeledImage
from tasks.evaluate import EvaluatePlan, EvaluateShard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_dask(params: Params, **dask: object) -> Params:
    base = params.base.model_copy(update={"dask": params.base.dask.model_copy(update=dask)})
    return params.model_copy(update={"base": base})


@pytest.mark.parametrize(
    ("env", "in_params", "expected"),
    [
        pytest.param(None, None, (None, "a LocalCluster on 127.0.0.1"), id="neither-local-cluster"),
        pytest.param(None, "tcp://10.0.0.5:8786", ("tcp://10.0.0.5:8786", "params base.dask.address"), id="params"),
        pytest.param(
            "tcp://10.0.0.6:8786",
            "tcp://10.0.0.5:8786",
            ("tcp://10.0.0.6:8786", "environment variable DASK_SCHEDULER_ADDRESS"),
            id="env-wins",
        ),
        pytest.param("", "tcp://10.0.0.5:8786", ("tcp://10.0.0.5:8786", "params base.dask.address"), id="empty-env"),
    ],
)
def test_scheduler_address(tiny_params, monkeypatch, env, in_params, expected) -> None:
    if env is None:
        monkeypatch.delenv(fanout.ADDRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(fanout.ADDRESS_ENV, env)
    assert fanout.scheduler_address(with_dask(tiny_params, address=in_params)) == expected


def test_the_local_cluster_binds_127_0_0_1_without_a_dashboard(tiny_params, monkeypatch) -> None:
    monkeypatch.delenv(fanout.ADDRESS_ENV, raising=False)
    runner = fanout.dask_runner(with_dask(tiny_params, workers=3))
    assert runner.address is None and runner.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }


@pytest.mark.parametrize("where", ["params", "env"])
def test_an_unreachable_scheduler_is_named_with_its_origin(tiny_params, monkeypatch, where) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    params = with_dask(tiny_params, timeout_s=1.0, address=address if where == "params" else None)
    if where == "env":
        monkeypatch.setenv(fanout.ADDRESS_ENV, address)
    else:
        monkeypatch.delenv(fanout.ADDRESS_ENV, raising=False)
    origin = "params base.dask.address" if where == "params" else "environment variable DASK_SCHEDULER_ADDRESS"
    with (
        pytest.raises(fanout.FanOutError, match=rf"cannot reach the Dask scheduler at '{address}' \(from {origin}\)"),
        fanout.started_runner(params),
    ):
        pass


def test_no_shards_start_no_cluster(tiny_params, monkeypatch) -> None:
    monkeypatch.setenv(fanout.ADDRESS_ENV, f"tcp://127.0.0.1:{free_port()}")  # would fail if it were reached
    plan = EvaluatePlan(model_path=Path("best.onnx"), threads=1, sets={}, shards=(), started=0.0)
    assert fanout.map_shards(tiny_params, fanout.stages.evaluate_shard, plan) == []


def test_each_shard_gets_the_plan_without_the_shards() -> None:
    shards = (EvaluateShard(index=0, chunks=(("golden", ()),)), EvaluateShard(index=1, chunks=(("val", ()),)))
    sets: dict[str, tuple[Path, tuple[LabeledImage, ...]]] = {"golden": (Path("g"), ()), "val": (Path("v"), ())}
    plan = EvaluatePlan(model_path=Path("best.onnx"), threads=2, sets=sets, shards=shards, started=1.0, keys={"g": "k"})
    shared = plan.for_shards()
    assert (shared.shards, shared.sets, shared.keys, shared.cached) == ((), {}, {}, {})
    assert (shared.model_path, shared.threads) == (plan.model_path, plan.threads), "what run_shard reads"
    chunk = ImageChunk(batch="b1", paths=(Path("a.png"),), sources=("cam",))
    predict_plan = PredictPlan(
        info=None,  # type: ignore[arg-type]
        alias="champion",
        deployed=None,  # type: ignore[arg-type]
        shadow=None,
        threads=1,
        batches=("b1",),
        shards=(PredictShard(index=0, chunks=(chunk,)),),
        started=1.0,
    )
    shared_predict = predict_plan.for_shards()
    assert shared_predict.shards == ()
    assert dataclasses.replace(shared_predict, shards=predict_plan.shards) == predict_plan, "nothing else dropped"
