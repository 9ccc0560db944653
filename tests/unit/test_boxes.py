import numpy as np
import pytest

from tasks.core.boxes import clip_xyxy, xywhn_to_xyxy, xyxy_to_xywh, xyxy_to_xywhn, xyxy_to_xyxyn

W, H = 200, 100

CASES = [
    pytest.param(np.zeros((0, 4)), np.zeros((0, 4)), id="empty"),
    pytest.param([[0.5, 0.5, 1.0, 1.0]], [[0, 0, 200, 100]], id="full-image"),
    pytest.param([[0.25, 0.5, 0.1, 0.2]], [[40, 40, 60, 60]], id="centred-small"),
    pytest.param([[0.0, 0.0, 0.0, 0.0]], [[0, 0, 0, 0]], id="degenerate-point"),
    pytest.param([[0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]], [[0, 0, 200, 100], [0, 0, 40, 20]], id="two-boxes"),
]


@pytest.mark.parametrize(("xywhn", "xyxy"), CASES)
def test_xywhn_xyxy_round_trip(xywhn, xyxy):
    np.testing.assert_allclose(xywhn_to_xyxy(xywhn, width=W, height=H), np.asarray(xyxy, float).reshape(-1, 4))
    np.testing.assert_allclose(xyxy_to_xywhn(xyxy, width=W, height=H), np.asarray(xywhn, float).reshape(-1, 4))


@pytest.mark.parametrize(
    ("xyxy", "xywh"),
    [
        pytest.param(np.zeros((0, 4)), np.zeros((0, 4)), id="empty"),
        pytest.param([[10, 20, 30, 60]], [[10, 20, 20, 40]], id="one"),
        pytest.param([[5, 5, 5, 5]], [[5, 5, 0, 0]], id="zero-area"),
    ],
)
def test_xyxy_to_coco_xywh(xyxy, xywh):
    np.testing.assert_allclose(xyxy_to_xywh(xyxy), np.asarray(xywh, float).reshape(-1, 4))


@pytest.mark.parametrize(
    ("xyxy", "expected"),
    [
        pytest.param(np.zeros((0, 4)), np.zeros((0, 4)), id="empty"),
        pytest.param([[-10, -5, 250, 50]], [[0, 0, 1, 0.5]], id="clipped"),
        pytest.param([[50, 25, 100, 75]], [[0.25, 0.25, 0.5, 0.75]], id="inside"),
    ],
)
def test_normalise_clips(xyxy, expected):
    np.testing.assert_allclose(xyxy_to_xyxyn(xyxy, width=W, height=H), np.asarray(expected, float).reshape(-1, 4))


def test_clip_and_inputs_not_mutated():
    boxes = np.array([[-1.0, -1.0, 300.0, 50.0]])
    before = boxes.copy()
    np.testing.assert_allclose(clip_xyxy(boxes, width=W, height=H), [[0, 0, 200, 50]])
    np.testing.assert_array_equal(boxes, before)


@pytest.mark.parametrize("bad", [np.zeros((3,)), np.zeros((2, 5))], ids=["1d", "five-columns"])
def test_wrong_shape_rejected(bad):
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        xyxy_to_xywh(bad)
