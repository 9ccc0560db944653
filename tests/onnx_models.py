"""Small real ONNX models for tests: built in milliseconds, run by every runtime that reads ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_conv_stack(path: Path, convs: int, *, imgsz: int, channels: int, relu: bool = False) -> Path:
    """Write ``images (B, 3, imgsz, imgsz)`` -> ``convs`` 3x3 convolutions of ``channels`` channels (0 = identity).

    Args:
        path: the ``.onnx`` file to write.
        convs: how many convolutions (the model's cost grows with it).
        imgsz: input height and width.
        channels: output channels of every convolution.
        relu: a ReLU after each convolution.

    Returns:
        ``path``.
    """
    rng = np.random.default_rng(0)
    nodes, inits, current, width = [], [], "images", 3
    for i in range(convs):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (channels, width, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        current, width = f"c{i}", channels
        if relu:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["output"]))
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def constant_detector(path: Path, rows: list[list[float]], *, imgsz: int = 64) -> Path:
    """An end-to-end ONNX detector (``images (N, 3, imgsz, imgsz)`` -> ``(N, K, 6)``) returning ``rows`` (``x1, y1,
    x2, y2, score, class`` in letterboxed pixels) for every image: a model whose answers a test knows."""
    table = np.asarray([rows], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["per_image"]),
        helper.make_node("Mul", ["per_image", "zero"], ["nothing"]),
        helper.make_node("Add", ["rows", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", len(rows), 6])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 1, 1]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("rows", TensorProto.FLOAT, table.shape, table.ravel().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
