"""The export check: a faithful artifact passes, a collapsed one fails and names both numbers.

A model trained for seconds scores ~0 on real labels, which cannot show a drop. So the failing case runs on
*pseudo-labels*: the PyTorch model's own top boxes on the golden images, where PyTorch scores high by
construction and an artifact whose boxes drift loses mAP. Faithfulness itself is checked on raw outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tasks import evaluate, export, train, world
from tasks.boxes import xyxy_to_xywhn
from tasks.config import Params
from tasks.dataset import list_images, load_rgb
from tasks.inference import InferenceSettings, load_detector, predict_images
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


def write_pseudo_labels(params: Params, weights: Path, target: Path, *, top: int = 3) -> None:
    """Copy golden images to ``target`` with the model's own top boxes as YOLO labels."""
    detector = load_detector(weights, InferenceSettings(imgsz=params.base.imgsz, conf=0.0, max_det=top))
    (target / "images").mkdir(parents=True)
    (target / "labels").mkdir()
    for path in list_images(params.base.paths.golden / "images"):
        rgb = load_rgb(path)
        (det,), _ = predict_images(detector, [rgb])
        h, w = rgb.shape[:2]
        keep = ((det.boxes_xyxy[:, 2] - det.boxes_xyxy[:, 0]) > 1) & ((det.boxes_xyxy[:, 3] - det.boxes_xyxy[:, 1]) > 1)
        boxes = xyxy_to_xywhn(det.boxes_xyxy[keep], width=w, height=h)
        lines = [f"{c} {' '.join(f'{v:.6f}' for v in b)}" for c, b in zip(det.class_id[keep], boxes, strict=True)]
        os.link(path, target / "images" / path.name)
        (target / "labels" / f"{path.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Params:
    root = tmp_path_factory.mktemp("export-gate")
    params = Params.model_validate(tiny_params_dict(root, export={"max_map_drop": 0.005}))
    world.run(params)
    train.run(params)
    evaluate.run(params)
    return params


@pytest.fixture(scope="module")
def pseudo_params(trained) -> Params:
    pseudo = trained.base.paths.models.parent / "pseudo-golden"
    write_pseudo_labels(trained, evaluate.default_model_path(trained), pseudo, top=1)
    data = trained.model_dump(mode="json")
    data["base"]["paths"]["golden"] = str(pseudo)
    data["base"]["paths"]["reports"] = str(pseudo.parent / "pseudo-reports")
    params = Params.model_validate(data)
    assert evaluate.run(params).map50_95("golden") > 0.5, "PyTorch should score high on its own boxes"
    return params


class HalvedBoxesOnnx:
    """A collapsed export: the real ONNX export with every output box scaled by 0.5."""

    name = "onnx"

    def build(self, weights: Path, *, out_dir: Path, params: Params) -> Path:
        path = export.OnnxTarget().build(weights, out_dir=out_dir, params=params)
        model = onnx.load(str(path))
        graph = model.graph
        out = graph.output[0].name
        for node in graph.node:
            node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
        scale = numpy_helper.from_array(np.array([0.5, 0.5, 0.5, 0.5, 1, 1], np.float32), "halve_boxes")
        graph.initializer.append(scale)
        graph.node.append(helper.make_node("Mul", [f"{out}_raw", "halve_boxes"], [out]))
        onnx.save(model, str(path))
        return path


def golden_batch(params: Params) -> np.ndarray:
    from tasks.inference import letterbox

    paths = list_images(params.base.paths.golden / "images")[:4]
    return np.stack([letterbox(load_rgb(p), params.base.imgsz)[0] for p in paths])


def assert_same_detections(actual: np.ndarray, expected: np.ndarray) -> None:
    """Both ``(B, K, 6)`` end-to-end outputs hold the same boxes; rows with tied scores may swap places."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(np.sort(actual[..., 4], axis=1), np.sort(expected[..., 4], axis=1), atol=1e-4)
    for got, want in zip(actual, expected, strict=True):
        for row in got[: len(got) // 2]:  # rows near the top-k cut-off may legitimately differ
            close = (want[:, 5] == row[5]) & (np.abs(want[:, 4] - row[4]) < 1e-4)
            close &= np.abs(want[:, :4] - row[:4]).max(axis=1) < 1e-2
            assert close.any(), f"no matching detection for {row}"


def test_faithful_onnx_export_passes_and_matches_pytorch(trained):
    (check,) = export.run(trained)
    assert check.passed and Path(check.path).name == "model.onnx" and check.size_mb > 0
    settings = evaluate.inference_settings(trained)
    batch = golden_batch(trained)
    torch_out = load_detector(evaluate.default_model_path(trained), settings).forward(batch)
    onnx_out = load_detector(Path(check.path), settings).forward(batch)
    assert_same_detections(onnx_out, torch_out)


def test_collapsed_export_fails_with_both_numbers(pseudo_params, monkeypatch):
    reference = evaluate.run(pseudo_params).map50_95("golden")
    monkeypatch.setitem(export.TARGETS, "onnx", HalvedBoxesOnnx())
    with pytest.raises(export.ExportCheckError) as err:
        export.run(pseudo_params)
    message = str(err.value)
    assert f"vs PyTorch {{'golden': {reference}}}" in message
    assert "mAP50-95 {'golden': 0" in message and "allowed drop 0.005" in message


def test_openvino_model_scores_and_predicts_like_onnx(trained, tmp_path):
    import openvino as ov

    onnx_path = trained.base.paths.models / "export" / "model.onnx"
    if not onnx_path.exists():
        export.run(trained)
    ov.save_model(ov.convert_model(str(onnx_path)), str(tmp_path / "model.xml"))
    settings = evaluate.inference_settings(trained)
    batch = golden_batch(trained)
    assert_same_detections(
        load_detector(tmp_path / "model.xml", settings).forward(batch),
        load_detector(onnx_path, settings).forward(batch),
    )
    by_ov = evaluate.evaluate_set(
        tmp_path, trained.base.paths.golden, classes=trained.base.classes, settings=settings, batch=4
    )
    by_onnx = evaluate.evaluate_set(
        onnx_path, trained.base.paths.golden, classes=trained.base.classes, settings=settings, batch=4
    )
    assert by_ov.map50_95 == pytest.approx(by_onnx.map50_95, abs=1e-3)


@pytest.mark.parametrize(
    ("reference", "measured", "max_drop", "passed"),
    [
        pytest.param({"golden": 0.5}, {"golden": 0.5}, 0.0, True, id="equal"),
        pytest.param({"golden": 0.5}, {"golden": 0.496}, 0.005, True, id="within-tolerance"),
        pytest.param({"golden": 0.5}, {"golden": 0.494}, 0.005, False, id="beyond-tolerance"),
        pytest.param({"golden": 0.5}, {"golden": 0.7}, 0.0, True, id="better"),
        pytest.param({"golden": 0.5, "val": 0.4}, {"golden": 0.5, "val": 0.3}, 0.01, False, id="one-set-fails"),
        pytest.param({}, {}, 0.0, True, id="no-sets"),
    ],
)
def test_check_artifact_table(tmp_path, reference, measured, max_drop, passed):
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"x" * 1024)
    check = export.check_artifact(
        target="onnx", artifact=artifact, reference=reference, measured=measured, max_drop=max_drop
    )
    assert check.passed is passed
