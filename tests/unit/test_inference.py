"""Pre/post-processing shared by every runtime: letterbox geometry and both output layouts."""

import numpy as np
import pytest

from tasks.runtimes.detectors import InferenceSettings, Letterbox, decode_output, letterbox, load_detector

S = InferenceSettings(imgsz=64, conf=0.25, iou=0.5, max_det=10)
IDENTITY = Letterbox(scale=1.0, pad_x=0, pad_y=0, width=64, height=64)


@pytest.mark.parametrize(
    ("hw", "scale", "pad"),
    [
        pytest.param((64, 64), 1.0, (0, 0), id="same-size"),
        pytest.param((32, 64), 1.0, (0, 16), id="wide"),
        pytest.param((128, 64), 0.5, (16, 0), id="tall-downscaled"),
        pytest.param((30, 30), 64 / 30, (0, 0), id="upscaled"),
    ],
)
def test_letterbox_geometry(hw, scale, pad):
    chw, box = letterbox(np.full((*hw, 3), 200, np.uint8), 64)
    assert chw.shape == (3, 64, 64) and chw.dtype == np.float32
    assert box.scale == pytest.approx(scale)
    assert (box.pad_x, box.pad_y) == pad
    assert (box.width, box.height) == (hw[1], hw[0])
    if pad != (0, 0):
        assert chw[0, 0, 0] == pytest.approx(114 / 255)


def end2end(rows):
    return np.asarray([rows], np.float32).reshape(1, -1, 6)


@pytest.mark.parametrize(
    ("rows", "expected_scores"),
    [
        pytest.param(np.zeros((0, 6)), [], id="empty"),
        pytest.param([[0, 0, 10, 10, 0.1, 1]], [], id="below-conf"),
        pytest.param([[0, 0, 10, 10, 0.3, 1], [5, 5, 20, 20, 0.9, 2]], [0.9, 0.3], id="sorted-by-score"),
        pytest.param([[0, 0, 10, 10, 0.5, 0]] * 12, [0.5] * 10, id="max-det"),
    ],
)
def test_end2end_decoding(rows, expected_scores):
    (det,) = decode_output(end2end(rows), [IDENTITY], S)
    np.testing.assert_allclose(det.confidence, expected_scores, atol=1e-6)
    assert det.boxes_xyxy.shape == (len(expected_scores), 4)


def test_end2end_maps_back_to_original_pixels():
    box = Letterbox(scale=0.5, pad_x=16, pad_y=0, width=64, height=128)
    (det,) = decode_output(end2end([[16, 0, 48, 64, 0.9, 3]]), [box], S)
    np.testing.assert_allclose(det.boxes_xyxy, [[0, 0, 64, 128]])
    assert det.class_id.tolist() == [3]


@pytest.mark.parametrize(
    "row",
    [
        pytest.param([30, 10, 10, 20, 0.9, 0], id="x2-before-x1"),
        pytest.param([10, 30, 20, 10, 0.9, 0], id="y2-before-y1"),
        pytest.param([70, 10, 90, 20, 0.9, 0], id="clipped-to-nothing-beyond-the-right-edge"),
    ],
)
def test_inverted_or_empty_boxes_are_no_detections(row):
    (det,) = decode_output(end2end([row, [10, 10, 20, 20, 0.5, 1]]), [IDENTITY], S)
    np.testing.assert_allclose(det.boxes_xyxy, [[10, 10, 20, 20]])
    assert det.class_id.tolist() == [1]
    np.testing.assert_allclose(det.confidence, [0.5])


def raw(boxes_cxcywh, scores):
    """(1, 4 + nc, A) raw layout from per-anchor boxes and per-class scores."""
    return np.concatenate([np.asarray(boxes_cxcywh, np.float32).T, np.asarray(scores, np.float32).T])[None]


@pytest.mark.parametrize(
    ("boxes", "scores", "kept_classes"),
    [
        pytest.param([[20, 20, 10, 10]], [[0.1, 0.1]], [], id="nothing-above-conf"),
        pytest.param([[20, 20, 10, 10], [21, 20, 10, 10]], [[0.9, 0.0], [0.8, 0.0]], [0], id="overlap-same-class"),
        pytest.param([[20, 20, 10, 10], [21, 20, 10, 10]], [[0.9, 0.0], [0.0, 0.8]], [0, 1], id="overlap-other-class"),
        pytest.param([[10, 10, 8, 8], [50, 50, 8, 8]], [[0.9, 0.0], [0.7, 0.0]], [0, 0], id="apart-same-class"),
    ],
)
def test_raw_layout_runs_class_aware_nms(boxes, scores, kept_classes):
    (det,) = decode_output(raw(boxes, scores), [IDENTITY], S)
    assert det.class_id.tolist() == kept_classes
    assert list(det.confidence) == sorted(det.confidence, reverse=True)


@pytest.mark.parametrize("name", ["model.tflite", "weights.bin"])
def test_unknown_artifact_format(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown model format"):
        load_detector(path, S)


def test_missing_artifact(tmp_path):
    with pytest.raises(FileNotFoundError, match="model artifact not found"):
        load_detector(tmp_path / "nope.onnx", S)


def test_onnx_file_that_fails_to_load(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"definitely not protobuf")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load"):
        load_detector(path, S)


@pytest.mark.parametrize(
    "hw",
    [
        pytest.param((64, 64), id="same-size"),
        pytest.param((32, 64), id="wide-padded"),
        pytest.param((128, 37), id="tall-downscaled-odd-pad"),
        pytest.param((30, 30), id="upscaled"),
    ],
)
def test_letterbox_one_pass_equals_the_two_pass_conversion(hw):
    """The one-pass uint8 -> float32 / 255 gives exactly the values of ``astype(float32)`` then ``/ 255.0``."""
    rgb = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8)
    chw, _ = letterbox(rgb, 64)
    padded = np.rint(chw * 255).astype(np.uint8).transpose(1, 2, 0)  # the uint8 letterbox it came from
    reference = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32) / 255.0
    assert chw.flags.c_contiguous and chw.dtype == np.float32 and np.array_equal(chw, reference)


def tiny_openvino(folder):
    """A two-op OpenVINO IR with a dynamic batch: ``(B, 3, 64, 64)`` -> ``(B, 6, 64)`` (no trained model needed)."""
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([-1, 3, 64, 64], np.float32, name="images")
    rows = ops.reduce_mean(ops.reshape(image, [0, 3, 64, 64], special_zero=True), [2], keep_dims=False)
    out = ops.concat([rows, rows], 1)
    ov.save_model(ov.Model([out], [image]), str(folder / "model.xml"))
    return folder / "model.xml"


@pytest.mark.parametrize(
    ("static_shapes", "batches", "compiled"),
    [
        pytest.param(True, [], [], id="static-open-compiles-nothing"),
        pytest.param(True, [2, 2, 3], [(2, 3, 64, 64), (3, 3, 64, 64)], id="static-one-per-batch-size"),
        pytest.param(False, [2, 3], [None], id="dynamic-once"),
    ],
)
def test_openvino_compiles_only_what_it_runs(tmp_path, static_shapes, batches, compiled):
    """Static shapes never pay for the dynamic compilation (it used to be compiled at open and never used)."""
    detector = load_detector(tiny_openvino(tmp_path), InferenceSettings(imgsz=64, static_shapes=static_shapes))
    for batch in batches:
        assert detector.forward(np.ones((batch, 3, 64, 64), np.float32)).shape == (batch, 6, 64)
    assert list(detector._compiled) == compiled
