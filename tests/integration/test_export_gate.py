"""The export stage: every target built or skipped with a reason, re-checked, and only a re-checked one ships.

A model trained for seconds scores ~0 on real labels, which cannot show a drop. So the failing cases run on
*pseudo-labels*: the PyTorch model's own top boxes on the golden images, where PyTorch scores high by
construction and an artifact whose boxes drift loses mAP. Faithfulness itself is checked on raw outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tasks import evaluate, export, gate, train, world
from tasks.config import Params
from tasks.contracts.reports import load_report
from tasks.contracts.reports.export import ArtifactCheck, ExportReport
from tasks.contracts.yolo_labels import list_images, load_rgb
from tasks.core.boxes import xyxy_to_xywhn
from tasks.models import yolo
from tasks.runtimes.detectors import InferenceSettings, letterbox, load_detector, predict_images
from tasks.targets import builders, calibration, parity, quantize, scoring
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration

ALL_TARGETS = ["onnx", "onnx_int8", "openvino", "openvino_int8", "tensorrt_fp16", "tensorrt_int8"]
QUICK_SPEED = {"runs": 5, "batch_runs": 2, "warmup": 1, "batch": 4}


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


def variant(params: Params, root: Path, **export_overrides) -> Params:
    """``params`` with its own models/reports folders under ``root`` (the trained checkpoint linked in)."""
    data = params.model_dump(mode="json")
    data["base"]["paths"].update(models=str(root / "models"), reports=str(root / "reports"))
    data["export"].update(export_overrides)
    out = Params.model_validate(data)
    (out.base.paths.models / "train").mkdir(parents=True, exist_ok=True)
    if not scoring.default_model_path(out).exists():
        os.link(scoring.default_model_path(params), scoring.default_model_path(out))
    trained_report = params.base.paths.reports / "train.json"  # records the checkpoint's hash: it stays trusted
    if trained_report.exists() and not (out.base.paths.reports / "train.json").exists():
        out.base.paths.reports.mkdir(parents=True, exist_ok=True)
        shutil.copy2(trained_report, out.base.paths.reports / "train.json")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Params:
    root = tmp_path_factory.mktemp("export-gate")
    export_section = {"max_map_drop": 0.005, "targets": ALL_TARGETS, "speed": QUICK_SPEED}
    params = Params.model_validate(tiny_params_dict(root, export=export_section))
    world.run(params)
    train.run(params)
    evaluate.run(params)
    return params


@pytest.fixture(scope="module")
def exported(trained) -> ExportReport:
    """Every target of the tiny model, exported once for the module (TensorRT is skipped without CUDA)."""
    return export.run(trained)


@pytest.fixture(scope="module")
def pseudo_params(trained, tmp_path_factory) -> Params:
    root = tmp_path_factory.mktemp("pseudo")
    write_pseudo_labels(trained, scoring.default_model_path(trained), root / "golden", top=1)
    params = variant(trained, root, targets=["onnx"])
    data = params.model_dump(mode="json")
    data["base"]["paths"]["golden"] = str(root / "golden")
    params = Params.model_validate(data)
    assert evaluate.run(params).map50_95("golden") > 0.5, "PyTorch should score high on its own boxes"
    return params


def halve_boxes(path: Path) -> None:
    """Rewrite an exported ONNX so every output box is scaled by 0.5: a collapsed export."""
    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
    dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    if dims[-1] == 6:  # NMS-free rows (B, K, 6): x1 y1 x2 y2 score class
        factors = np.array([0.5, 0.5, 0.5, 0.5, 1, 1], np.float32)
    else:  # one-to-many (B, 4 + nc, A): cx cy w h, then class scores
        factors = np.array([0.5] * 4 + [1.0] * (dims[1] - 4), np.float32).reshape(1, -1, 1)
    scale = numpy_helper.from_array(factors, "halve_boxes")
    graph.initializer.append(scale)
    graph.node.append(helper.make_node("Mul", [f"{out}_raw", "halve_boxes"], [out]))
    onnx.save(model, str(path))


class HalvedBoxesOnnx(builders.OnnxTarget):
    """A collapsed FP32 export."""

    def build(self, inputs: builders.ExportInputs, *, out_dir: Path, params: Params) -> builders.Built:
        built = super().build(inputs, out_dir=out_dir, params=params)
        halve_boxes(built.path)
        return built


class HalvedBoxesInt8(builders.OnnxInt8Target):
    """A deliberately broken quantization: the real INT8 model with its boxes halved."""

    def build(self, inputs: builders.ExportInputs, *, out_dir: Path, params: Params) -> builders.Built:
        built = super().build(inputs, out_dir=out_dir, params=params)
        halve_boxes(built.path)
        return built


class UnloadableInt8(builders.OnnxInt8Target):
    """An INT8 build that writes a file ONNX Runtime cannot read."""

    def build(self, inputs: builders.ExportInputs, *, out_dir: Path, params: Params) -> builders.Built:
        path = out_dir / "model_int8.onnx"
        path.write_bytes(b"definitely not protobuf")
        return builders.Built(path)


def golden_batch(params: Params) -> np.ndarray:
    paths = list_images(params.base.paths.golden / "images")[:4]
    return np.stack([letterbox(load_rgb(p), params.base.imgsz)[0] for p in paths])


def assert_same_detections(actual: np.ndarray, expected: np.ndarray) -> None:
    """Both outputs hold the same boxes: one-to-many ``(B, 4 + nc, A)`` anchor by anchor; NMS-free ``(B, K, 6)``
    row by row, where rows with tied scores may swap places."""
    assert actual.shape == expected.shape
    if actual.shape[-1] != 6:
        np.testing.assert_allclose(actual[:, 4:], expected[:, 4:], atol=1e-4)  # class scores
        np.testing.assert_allclose(actual[:, :4], expected[:, :4], atol=1e-2)  # boxes, input pixels
        return
    np.testing.assert_allclose(np.sort(actual[..., 4], axis=1), np.sort(expected[..., 4], axis=1), atol=1e-4)
    for got, want in zip(actual, expected, strict=True):
        for row in got[: len(got) // 2]:  # rows near the top-k cut-off may legitimately differ
            close = (want[:, 5] == row[5]) & (np.abs(want[:, 4] - row[4]) < 1e-4)
            close &= np.abs(want[:, :4] - row[:4]).max(axis=1) < 1e-2
            assert close.any(), f"no matching detection for {row}"


def by_target(report: ExportReport) -> dict[str, ArtifactCheck]:
    return {c.target: c for c in report.artifacts}


# --------------------------------------------------------------------------------------------- the stage


def test_every_target_is_built_and_rechecked_or_skipped_with_a_reason(trained, exported):
    checks = by_target(exported)
    assert list(checks) == ALL_TARGETS
    trt_reason = quantize.tensorrt_unavailable()
    for name, check in checks.items():
        if name.startswith("tensorrt") and trt_reason:
            assert check.status == "skipped" and check.reason == trt_reason and check.path == ""
            assert exported.selection[name] == f"skipped: {trt_reason}"
            continue
        assert check.status == "built", f"{name}: {check.reason}"
        assert Path(check.path).is_file() and check.size_mb > 0
        assert set(check.map50_95) == {"golden"}
        assert check.max_drop == trained.export.max_map_drop.of(check.precision)
        assert check.parity is not None and check.parity.reference > 0
        speed = check.speed
        assert speed is not None and speed.threads == 2 and speed.batch == 4
        assert 0 < speed.latency_ms["p50"] <= speed.latency_ms["p95"] <= speed.latency_ms["p99"]
        assert speed.throughput_ips > 0 and speed.peak_rss_mb >= 0
    report = json.loads((trained.base.paths.reports / "export.json").read_text())
    assert report["selected"] == exported.selected and set(report["selected"]) == {"target", "path", "reason"}
    assert set(report["selection"]) == set(ALL_TARGETS)
    assert report["params"]["digest"] == exported.params_digest
    assert load_report(trained.base.paths.reports, "export") == exported  # typed round trip
    chosen = checks[exported.selected["target"]]
    assert chosen.passed and chosen.parity.passed and "cpu" in chosen.hardware


def test_int8_lineage_is_recorded(trained, exported):
    lineage = exported.lineage
    sample = lineage["calibration"]
    train_images = [p.name for p in list_images(trained.base.paths.train / "images")]
    assert sample["seed"] == trained.base.seed and sample["count"] == len(train_images)  # 24 < 64
    assert sorted(sample["image_ids"]) == train_images
    assert lineage["quantization"]["keep_head_fp32"] is True
    assert lineage["versions"]["onnxruntime"] and lineage["versions"]["nncf"] and lineage["versions"]["openvino"]
    checks = by_target(exported)
    ort_kept = checks["onnx_int8"].details["fp32_nodes"]
    ov_kept = checks["openvino_int8"].details["fp32_ops"]
    assert ort_kept and ov_kept
    model = onnx.load(checks["onnx"].path)
    prefix = yolo.head_prefix(n.name for n in model.graph.node)
    assert all(name.startswith(prefix) for name in ort_kept + ov_kept)
    quantized = onnx.load(checks["onnx_int8"].path)
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)


def test_faithful_onnx_export_passes_and_matches_pytorch(trained, exported):
    check = by_target(exported)["onnx"]
    assert check.passed and Path(check.path).name == "model.onnx" and check.parity.matched == check.parity.reference
    settings = scoring.inference_settings(trained)
    batch = golden_batch(trained)
    torch_out = load_detector(scoring.default_model_path(trained), settings).forward(batch)
    onnx_out = load_detector(Path(check.path), settings).forward(batch)
    assert_same_detections(onnx_out, torch_out)
    assert load_detector(Path(check.path), settings).forward(batch[:1]).shape[0] == 1, "dynamic batch"


@pytest.mark.parametrize("nms_free", [False, True], ids=["one-to-many", "nms-free"])
def test_yolo_nms_free_chooses_the_head_of_pytorch_and_of_the_export(trained, tmp_path, nms_free):
    params = variant(trained, tmp_path, targets=["onnx"])
    data = params.model_dump(mode="json")
    data["train"]["yolo"]["nms_free"] = nms_free
    params = Params.model_validate(data)
    report = export.run(params)
    check = by_target(report)["onnx"]
    assert check.passed and check.parity.matched == check.parity.reference
    settings = scoring.inference_settings(params)
    batch = golden_batch(params)
    torch_out = load_detector(scoring.default_model_path(params), settings).forward(batch)
    onnx_out = load_detector(Path(check.path), settings).forward(batch)
    anchors = (params.base.imgsz // 8) ** 2 * 21 // 16  # strides 8, 16 and 32
    expected = (min(300, anchors), 6) if nms_free else (4 + len(params.base.classes), anchors)
    assert torch_out.shape[1:] == expected
    assert_same_detections(onnx_out, torch_out)


def test_openvino_model_scores_and_predicts_like_onnx(trained, exported):
    checks = by_target(exported)
    settings = scoring.inference_settings(trained)
    batch = golden_batch(trained)
    ov_xml, onnx_path = Path(checks["openvino"].path), Path(checks["onnx"].path)
    assert_same_detections(
        load_detector(ov_xml, settings).forward(batch), load_detector(onnx_path, settings).forward(batch)
    )
    by_ov = scoring.evaluate_set(
        ov_xml.parent, trained.base.paths.golden, classes=trained.base.classes, settings=settings, batch=4
    )
    assert by_ov.map50_95 == pytest.approx(checks["onnx"].map50_95["golden"], abs=1e-3)


def test_a_cycle_detects_each_model_once_per_set(trained, exported, tmp_path):
    """evaluate stored best.pt's golden detections, export each artifact's: evaluate again and the gate reuse them."""
    first: dict = json.loads((trained.base.paths.reports / "evaluate.json").read_text())
    assert (first["cache_hits"], first["cache_misses"]) == (0, 1)
    built = [c for c in exported.artifacts if c.status == "built"]
    assert (exported.cache_hits, exported.cache_misses) == (0, len(built)), "reference from evaluate.json"
    again = evaluate.run(trained, report_path=tmp_path / "evaluate.json")
    assert (again.cache_hits, again.cache_misses) == (1, 0)
    assert again.sets["golden"].map50_95 == first["sets"]["golden"]["map50_95"], "a hit's mAP to the last digit"
    assert again.sets["golden"].per_class_ap == first["sets"]["golden"]["per_class_ap"]
    candidate = Path(by_target(exported)["onnx"].path)
    champion = tmp_path / "champion" / "model.onnx"  # the same bytes elsewhere (a registered copy): the same key
    champion.parent.mkdir()
    shutil.copyfile(candidate, champion)
    gated = gate.run(trained, candidate=candidate, champion=champion, report_path=tmp_path / "gate.json")
    assert (gated.cache_hits, gated.cache_misses) == (2, 0), "golden of both models, from the export's re-check"
    assert gated.sets["golden"].candidate_map50_95 == by_target(exported)["onnx"].map50_95["golden"]
    assert gated.sets["golden"].champion_map50_95 == gated.sets["golden"].candidate_map50_95


def test_collapsed_export_fails_with_both_numbers(pseudo_params, monkeypatch):
    reference = evaluate.run(pseudo_params).map50_95("golden")
    monkeypatch.setitem(builders.TARGETS, "onnx", HalvedBoxesOnnx())
    with pytest.raises(export.ExportCheckError) as err:
        export.run(pseudo_params)
    message = str(err.value)
    assert f"vs PyTorch {{'golden': {reference}}}" in message
    assert "mAP50-95 {'golden': 0" in message and "allowed drop 0.005" in message
    assert "collapsed against PyTorch" in message
    report = json.loads((pseudo_params.base.paths.reports / "export.json").read_text())
    assert report["selected"] is None and report["artifacts"][0]["passed"] is False


def test_broken_quantization_is_refused_and_fp32_ships(pseudo_params, tmp_path, monkeypatch):
    params = variant(pseudo_params, tmp_path, targets=["onnx", "onnx_int8"])
    monkeypatch.setitem(builders.TARGETS, "onnx_int8", HalvedBoxesInt8())
    report = export.run(params)
    int8 = by_target(report)["onnx_int8"]
    assert int8.status == "built" and not int8.passed and not int8.parity.passed
    assert report.selection["onnx_int8"].startswith("refused: mAP50-95 golden 0.")
    assert report.selected["target"] == "onnx" and "fallback" in report.selected["reason"]


def test_int8_head_is_what_breaks_quantization(pseudo_params, tmp_path):
    """The real quantizer with the whole head in INT8 (KNOWN.md: mAP collapses); the gate refuses it."""
    params = variant(pseudo_params, tmp_path, targets=["onnx", "onnx_int8"], quantization={"keep_head_fp32": False})
    report = export.run(params)
    int8 = by_target(report)["onnx_int8"]
    assert int8.status == "built" and int8.details["fp32_nodes"] == []
    assert report.selection["onnx_int8"].startswith("refused: "), report.selection["onnx_int8"]
    assert report.selected["target"] == "onnx"


def test_unloadable_int8_artifact_is_recorded_not_fatal(trained, tmp_path, monkeypatch):
    params = variant(trained, tmp_path, targets=["onnx", "onnx_int8"])
    monkeypatch.setitem(builders.TARGETS, "onnx_int8", UnloadableInt8())
    report = export.run(params)
    int8 = by_target(report)["onnx_int8"]
    assert int8.status == "failed" and "ONNX Runtime cannot load" in int8.reason and "model_int8.onnx" in int8.reason
    assert report.selection["onnx_int8"].startswith("failed: ValueError:")
    assert report.selected["target"] == "onnx"


def test_unloadable_fp32_onnx_fails_the_stage(trained, tmp_path, monkeypatch):
    class UnloadableOnnx(builders.OnnxTarget):
        def build(self, inputs, *, out_dir, params):
            (out_dir / "model.onnx").write_bytes(b"not an onnx model")
            return builders.Built(out_dir / "model.onnx")

    monkeypatch.setitem(builders.TARGETS, "onnx", UnloadableOnnx())
    with pytest.raises(ValueError, match=r"model\.onnx: ONNX Runtime cannot load"):
        export.run(variant(trained, tmp_path, targets=["onnx"]))


@pytest.mark.parametrize(
    ("images", "match"),
    [
        pytest.param(None, "folder not found", id="no-folder"),
        pytest.param(0, "0 image", id="empty"),
        pytest.param(3, "3 image", id="below-minimum"),
    ],
)
def test_calibration_set_too_small_is_a_clear_error(trained, tmp_path, images, match):
    params = variant(trained, tmp_path, targets=["onnx", "openvino_int8"], calibration={"images": 8, "min_images": 4})
    data = params.model_dump(mode="json")
    data["base"]["paths"]["train"] = str(tmp_path / "train")
    params = Params.model_validate(data)
    if images is not None:
        (tmp_path / "train" / "images").mkdir(parents=True)
        for path in list_images(trained.base.paths.train / "images")[:images]:
            shutil.copy(path, tmp_path / "train" / "images" / path.name)
    with pytest.raises(calibration.CalibrationError, match=match) as err:
        export.run(params)
    assert str(tmp_path / "train" / "images") in str(err.value) and "min_images is 4" in str(err.value)
    assert not (params.base.paths.models / "export" / "model.onnx").exists(), "fails before building anything"


def test_calibration_sample_is_seeded_and_sized(trained):
    first, again = calibration.load_calibration(trained), calibration.load_calibration(trained)
    assert first.image_ids == again.image_ids and np.array_equal(first.images, again.images)
    data = trained.model_dump(mode="json")
    data["export"]["calibration"] = {"images": 16, "min_images": 4, "seed": 1}
    sixteen = calibration.load_calibration(Params.model_validate(data))
    assert len(sixteen.image_ids) == 16 and sixteen.images.shape == (16, 3, 64, 64) and sixteen.seed == 1
    assert set(sixteen.image_ids) <= set(first.image_ids)


def test_tensorrt_engines_build_on_a_cuda_host(trained, tmp_path):
    reason = quantize.tensorrt_unavailable()
    if reason:
        pytest.skip(f"TensorRT cannot run here: {reason}")
    data = variant(trained, tmp_path, targets=["onnx", "tensorrt_fp16", "tensorrt_int8"]).model_dump(mode="json")
    data["base"]["device"] = "cuda:0"
    data["export"]["target_hardware"] = "cuda"
    report = export.run(Params.model_validate(data))
    checks = by_target(report)
    for name, precision in (("tensorrt_fp16", "fp16"), ("tensorrt_int8", "int8")):
        assert checks[name].status == "built", checks[name].reason
        assert checks[name].details["built_precision"] == precision
        assert checks[name].details["layer_precisions"]


# --------------------------------------------------------------------------------------------- pure checks


def end2end(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(1, -1, 6)


REF = [[10, 10, 30, 30, 0.9, 1], [40, 40, 60, 60, 0.8, 2], [5, 5, 15, 15, 0.1, 0]]


@pytest.mark.parametrize(
    ("candidate", "matched", "passed"),
    [
        pytest.param(REF, 3, True, id="identical"),
        pytest.param(REF[::-1], 3, True, id="order-ignored"),
        pytest.param([[*r[:4], r[4] + 0.005, r[5]] for r in REF], 3, True, id="within-score-tolerance"),
        pytest.param([[*r[:4], r[4] - 0.05, r[5]] for r in REF], 0, False, id="scores-drifted"),
        pytest.param([[*(v + 0.4 for v in r[:4]), *r[4:]] for r in REF], 3, True, id="within-box-tolerance"),
        pytest.param([[*(v * 0.5 for v in r[:4]), *r[4:]] for r in REF], 0, False, id="halved-boxes"),
        pytest.param([[*r[:5], (r[5] + 1) % 6] for r in REF], 0, False, id="classes-swapped"),
        pytest.param([REF[0], REF[1], [5, 5, 15, 15, 0.1, 3]], 2, True, id="one-miss-above-min-match"),
    ],
)
def test_parity_table(candidate, matched, passed):
    result = parity.check_parity(
        end2end(REF), end2end(candidate), imgsz=64, top_k=3, score_atol=0.01, box_atol_px=0.5, min_match=0.6
    )
    assert (result.reference, result.matched, result.passed) == (3, matched, passed)


def test_parity_with_nothing_to_compare_passes():
    empty = np.zeros((1, 0, 6), np.float32)
    result = parity.check_parity(empty, empty, imgsz=64, top_k=3, score_atol=0.01, box_atol_px=0.5, min_match=0.8)
    assert result.reference == 0 and result.passed and result.worst_box_diff_px is None


@pytest.mark.parametrize(
    ("reference", "measured", "max_drop", "passed"),
    [
        pytest.param({"golden": 0.5}, {"golden": 0.5}, 0.0, True, id="equal"),
        pytest.param({"golden": 0.5}, {"golden": 0.496}, 0.005, True, id="within-tolerance"),
        pytest.param({"golden": 0.5}, {"golden": 0.494}, 0.005, False, id="beyond-tolerance"),
        pytest.param({"golden": 0.5}, {"golden": 0.7}, 0.0, True, id="better"),
        pytest.param({"golden": 0.5, "val": 0.4}, {"golden": 0.5, "val": 0.3}, 0.01, False, id="one-set-fails"),
        pytest.param({"golden": 0.5}, {}, 1.0, False, id="set-not-measured"),
        pytest.param({}, {}, 0.0, True, id="no-sets"),
    ],
)
def test_check_artifact_table(tmp_path, reference, measured, max_drop, passed):
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"x" * 1024)
    check = parity.check_artifact(
        target="onnx", artifact=artifact, reference=reference, measured=measured, max_drop=max_drop
    )
    assert check.passed is passed and check.size_mb == pytest.approx(1024 / 2**20, abs=1e-3)


def test_openvino_size_counts_the_weights(tmp_path):
    (tmp_path / "model.xml").write_bytes(b"x" * 1000)
    (tmp_path / "model.bin").write_bytes(b"x" * 3000)
    check = parity.check_artifact(
        target="openvino", artifact=tmp_path / "model.xml", reference={}, measured={}, max_drop=0
    )
    assert check.size_mb == pytest.approx(4000 / 2**20, abs=1e-3)
