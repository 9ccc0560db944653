"""Dask fan-out of predict and evaluate (flows/fanout.py): the same log rows and the same mAP as one process.

The world is the tiny one (tests/conftest.py); the model is a tiny real ONNX detector whose boxes and scores move with
each image's brightness (so rows or detections handed to the wrong image would show), registered twice in a real
MLflow SQLite store (champion and a shadow). Shards run as Prefect tasks on a real Dask LocalCluster of 2 worker
processes × 1 thread on 127.0.0.1: one started by the task runner (the default), one started here and reached by its
address (the ``base.dask.address`` path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pytest
import yaml
from onnx import TensorProto, helper

from tasks import evaluate, predict, world
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts import prediction_log
from tests.conftest import tiny_params_dict
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 64
TIMING = ["ts", "latency_ms"]  # the only columns two runs may differ in


def brightness_detector(path: Path, *, boxes: int = 48, seed: int = 0) -> Path:
    """An end-to-end ONNX detector (``images (N, 3, 64, 64)`` -> ``(N, boxes, 6)``) on a seeded grid of boxes whose
    scores and x positions move with the image's mean brightness: every image gets its own answer."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(9, 22, boxes)
    x1, y1 = rng.uniform(0, SIZE - size), rng.uniform(0, SIZE - size)
    rows = np.stack([x1, y1, x1 + size, y1 + size, rng.uniform(0.05, 0.3, boxes), rng.integers(0, 6, boxes)], 1)
    mask = np.zeros((1, boxes, 6))
    mask[0, :, 4] = rng.uniform(0.3, 0.6, boxes)  # score += mean * this
    mask[0, :, 0] = mask[0, :, 2] = rng.uniform(-6, 6, boxes)  # the box slides with the brightness
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["per_image"]),
        helper.make_node("Mul", ["per_image", "mask"], ["moved"]),
        helper.make_node("Add", ["rows", "moved"], ["output0"]),
    ]

    def constant(name: str, values: np.ndarray) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, values.shape, values.astype(np.float32).ravel().tolist())

    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", boxes, 6])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 1, 1]),
            constant("mask", mask),
            constant("rows", rows[None]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny world (2 production batches of 6 images, golden and val of 8) and a registry: v1 champion, v2."""
    root = tmp_path_factory.mktemp("fanout")
    params = Params.model_validate(tiny_params_dict(root))
    world.run(params)
    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    for version in ("1", "2"):
        source = brightness_detector(root / "sources" / f"v{version}" / "model.onnx", seed=int(version)).parent
        assert str(client.create_model_version(params.registry.model_name, source=str(source)).version) == version
    mlflow_adapter.set_alias(params, "champion", "1")
    return root


def run_params(world: Path, root: Path, **sections: dict) -> dict:
    """params.yaml content on the tiny world's images and registry, with its own log and reports under ``root``."""
    data = tiny_params_dict(world)
    data["base"]["paths"].update(predictions=str(root / "predictions"), reports=str(root / "reports"))
    data["predict"].update(batch_size=2, shadow={"alias": "2", "share": 0.5})  # 3 chunks a batch
    data["evaluate"].update(sets=["golden", "val"], batch=3)  # 3 + 3 + 2 images a set
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return data


def write_params(data: dict, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def log_table(params: Params) -> pa.Table:
    return prediction_log.read(params.base.paths.predictions).drop_columns(TIMING)


@contextlib.contextmanager
def local_cluster() -> Iterator[str]:
    """A Dask LocalCluster of 2 worker processes × 1 thread on 127.0.0.1, no dashboard; yields its address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_sharded_predict_on_dask_writes_the_single_process_rows(tiny_world, tmp_path, prefect_harness, monkeypatch):
    from flows.predict import predict as predict_flow

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    single = Params.model_validate(run_params(tiny_world, tmp_path / "single"))
    alone = predict.run(single)
    assert single.predict.shards == 1 and len(alone.batches) == 2

    sharded_file = write_params(run_params(tiny_world, tmp_path / "sharded"), tmp_path / "sharded")
    sharded = Params.model_validate(yaml.safe_load(sharded_file.read_text()))
    plan = predict.plan(sharded.model_copy(update={"predict": sharded.predict.model_copy(update={"shards": 2})}))
    assert [len(s.chunks) for s in plan.shards] == [3, 3]  # 2 shards of 3 chunks of 2 images: never one per image
    fanned = predict_flow(params_path=str(sharded_file), shards=2)  # the flow parameter switches it on

    expected, got = log_table(single), log_table(sharded)
    assert got.num_rows == expected.num_rows > 12 and got.equals(expected), "same rows, same order"
    assert pa.compute.any(got["shadow"]).as_py(), "the shadow's share is in the log too"
    assert [Path(f).name for b in fanned.batches for f in b.files + b.shadow_files] == [
        Path(f).name for b in alone.batches for f in b.files + b.shadow_files
    ]
    assert [(b.batch, b.images, b.detections, b.errors, b.shadow_images) for b in fanned.batches] == [
        (b.batch, b.images, b.detections, b.errors, b.shadow_images) for b in alone.batches
    ]
    assert (fanned.model_version, fanned.target, fanned.shadow) == (alone.model_version, alone.target, alone.shadow)


def test_sharded_evaluate_on_a_cluster_by_address_gives_the_single_process_map(
    tiny_world, tmp_path, prefect_harness, monkeypatch
):
    from prefect import flow

    from flows import fanout

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    model = tiny_world / "sources" / "v1" / "model.onnx"
    single = Params.model_validate(run_params(tiny_world, tmp_path / "single"))
    alone = evaluate.run(single, model_path=model)
    assert alone.sets["golden"].map50_95 > 0 and alone.sets["val"].map50_95 > 0, "a score that can differ"

    @flow(name="evaluate-fanout-test")
    def sharded_evaluate(params: Params) -> evaluate.EvaluateReport:
        return fanout.evaluate(params, model_path=model)

    with local_cluster() as address:
        # cache off: the single run's entries would be read back and no shard would run on Dask
        data = run_params(tiny_world, tmp_path / "sharded", evaluate={"shards": 4, "cache": False})
        data["base"]["dask"] = {**data["base"].get("dask", {}), "address": address}
        sharded = Params.model_validate(data)
        assert [len(s.chunks) for s in evaluate.plan(sharded, model_path=model).shards] == [
            2,
            2,
            1,
            1,
        ]  # whole chunks, across sets
        fanned = sharded_evaluate(sharded)
    for name in ("golden", "val"):
        got, expected = fanned.sets[name], alone.sets[name]
        assert (got.map50_95, got.map50, got.stats, got.per_class_ap, got.images, got.boxes) == (
            expected.map50_95,
            expected.map50,
            expected.stats,
            expected.per_class_ap,
            expected.images,
            expected.boxes,
        )


@pytest.mark.parametrize("where", ["params", "env"])
def test_a_scheduler_that_cannot_be_reached_is_named_and_nothing_is_written(
    tiny_world, tmp_path, prefect_harness, monkeypatch, where
):
    from prefect import flow

    from flows import fanout

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    data = run_params(tiny_world, tmp_path, predict={"shards": 2})
    data["base"]["dask"] = {**data["base"].get("dask", {}), "timeout_s": 1}
    if where == "params":
        monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
        data["base"]["dask"]["address"] = address
    else:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    params = Params.model_validate(data)

    @flow(name="predict-fanout-unreachable-test")
    def sharded_predict(params: Params) -> None:
        fanout.predict(params)

    origin = "params base.dask.address" if where == "params" else "environment variable DASK_SCHEDULER_ADDRESS"
    with pytest.raises(fanout.FanOutError, match=rf"cannot reach the Dask scheduler at '{address}' \(from {origin}\)"):
        sharded_predict(params)
    assert not list(params.base.paths.predictions.rglob("*.parquet")), "nothing half-written"
