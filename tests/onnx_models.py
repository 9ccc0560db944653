"""Small real ONNX models for timing tests: built in milliseconds, run by every runtime that reads ONNX."""

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
