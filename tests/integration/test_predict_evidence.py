"""Predict logs the sampler's evidence from a real ONNX model, and the sample stage selects on it.

Tiny real ONNX graphs with constant outputs (run by ONNX Runtime, settings from ``predict.shard_settings``, as the
stage builds them): a raw one-to-many head ``(N, 4 + nc, A)`` whose class scores give a known margin, one
sub-threshold box apart, one weaker duplicate and one box below ``predict.evidence_conf``; and an end-to-end head
``(N, K, 6)`` (no class vector: no margin). The log holds ``margin``, ``evidence_max`` and ``evidence_count``; with
them ``low_confidence`` has candidates where it had none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tasks import predict, sample
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.decisions import sampling
from tasks.runtimes.detectors import load_detector
from tests.conftest import tiny_params_dict
from tests.integration.test_predict_shadow import BATCH, info, write_batch
from tests.onnx_models import constant_detector

pytestmark = pytest.mark.integration

# anchors (columns) of the raw head: cx, cy, w, h in letterboxed pixels, then 3 class scores
RAW = np.asarray(
    [
        [16, 48, 17, 40],  # cx
        [16, 48, 16, 10],  # cy
        [10, 8, 10, 6],  # w
        [10, 8, 10, 6],  # h
        [0.9, 0.0, 0.2, 0.01],  # class 0: a detection; a weaker duplicate of it; one below evidence_conf
        [0.3, 0.15, 0.0, 0.0],  # class 1: the detection's runner-up (margin 0.6); a sub-threshold box apart
        [0.0, 0.0, 0.0, 0.0],
    ],
    np.float32,
)


def constant_model(path: Path, output: np.ndarray) -> Path:
    """``images (N, 3, 64, 64)`` -> ``output`` broadcast to every image (any layout)."""
    table = output[None]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["per_image"]),
        helper.make_node("Mul", ["per_image", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", *output.shape])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 1, 1]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def params_for(root: Path, **predict_section: object) -> Params:
    data = tiny_params_dict(root, predict={"batch_size": 3, "conf": 0.25, **predict_section})
    data["sample"].update(budget=2, max_per_day=None)
    data["sample"]["strategies"] = {name: None for name in sampling.STRATEGIES} | {
        "low_confidence": {"weight": 1.0, "budget": 2, "band": [0.25, 0.5]}
    }
    return Params.model_validate(data)


def predicted_rows(params: Params, model_path: Path) -> list[dict]:
    write_batch(params, good=3)  # 3 images, a truncated one, a dangling link
    detector = load_detector(model_path, predict.shard_settings(params, 1))
    predict.predict_batch(detector, params=params, info=info("1"), alias="champion", batch=BATCH)
    return prediction_log.read(params.base.paths.predictions).to_pylist()


def test_raw_head_logs_margin_and_evidence_and_the_sampler_selects_on_it(tmp_path: Path) -> None:
    params = params_for(tmp_path)
    rows = predicted_rows(params, constant_model(tmp_path / "raw.onnx", RAW))
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 3 and all(r["n_detections"] == 1 for r in good)
    assert all(r["margin"] == pytest.approx(0.6) for r in good)
    assert all((r["evidence_max"], r["evidence_count"]) == (pytest.approx(0.15), 1) for r in good)
    errors = [r for r in rows if r["error"] is not None]
    assert len(errors) == 2
    assert all((r["margin"], r["evidence_max"], r["evidence_count"]) == (None, None, 0) for r in errors)

    result = sample.run(params, cycle="c1")
    assert (result.by_strategy["low_confidence"].candidates, result.selected) == (3, 2)


def test_without_evidence_the_same_log_gives_low_confidence_nothing(tmp_path: Path) -> None:
    params = params_for(tmp_path, evidence_conf=None)
    rows = predicted_rows(params, constant_model(tmp_path / "raw.onnx", RAW))
    assert all((r["evidence_max"], r["evidence_count"]) == (None, 0) for r in rows)
    assert all(r["margin"] == pytest.approx(0.6) for r in rows if r["error"] is None)  # the margin stays
    result = sample.run(params, cycle="c1")
    assert (result.by_strategy["low_confidence"].candidates, result.selected) == (0, 0)


def test_end_to_end_head_logs_evidence_but_no_margin(tmp_path: Path) -> None:
    params = params_for(tmp_path)
    e2e = [[8, 8, 24, 24, 0.9, 1], [30, 30, 60, 50, 0.2, 0], [40, 4, 50, 12, 0.01, 2]]
    rows = predicted_rows(params, constant_detector(tmp_path / "e2e.onnx", e2e))
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 3 and all(r["margin"] is None for r in good)
    assert all((r["evidence_max"], r["evidence_count"]) == (pytest.approx(0.2), 1) for r in good)
