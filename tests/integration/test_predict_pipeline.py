"""The predict loop reads, decodes and letterboxes the next chunks on reader threads while the model runs.

Same tiny real ONNX detectors and production batch as ``test_predict_shadow.py``: a model that sleeps in its call
(a real ONNX Runtime session behind it) shows the overlap in the stage's own counters; the records are the ones the
model call alone gives on the same pixels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tasks import predict
from tasks.runtimes.detectors import letterbox, predict_images
from tasks.targets.chunk_inference import infer_chunk, prepare_image, read_image
from tests.integration.test_predict_shadow import BATCH, CHAMPION_ROWS, detector, make_params, write_batch
from tests.onnx_models import constant_detector

pytestmark = pytest.mark.integration

MODEL_CALL_S = 0.2  # far longer than reading three 64 px PNGs, even on a loaded host


class SlowModel:
    """A real ONNX detector whose every call takes :data:`MODEL_CALL_S` longer (a slow network)."""

    def __init__(self, inner) -> None:
        self.inner, self.settings, self.path = inner, inner.settings, inner.path

    def forward(self, batch):
        time.sleep(MODEL_CALL_S)
        return self.inner.forward(batch)


def test_the_next_chunks_are_read_while_the_model_runs(tmp_path: Path) -> None:
    params = make_params(tmp_path)  # chunks of 3
    write_batch(params, good=9)  # 9 images, a truncated one, a dangling link: 4 chunks
    model = SlowModel(detector(constant_detector(tmp_path / "m.onnx", CHAMPION_ROWS)))
    chunks = predict.batch_chunks(params, BATCH)
    done = list(predict.predict_chunks(model, chunks, seed=7, timeout_s=None))

    assert [{r.image_id for r in c.records} for c in done] == [{Path(p).stem for p in c.paths} for c in chunks]
    decoded = [r.image_id for c in done for r in c.records if r.error is None]
    assert decoded == [f"img_{i}" for i in range(9)], "every image once, in listing order"
    for c in done[1:]:  # read ahead: the loop did not wait for the reads and decodes it did not overlap
        assert c.decode_s > 0 and c.read_s < c.decode_s, (c.read_s, c.decode_s)
    for c in done:
        decoded = [r for r in c.records if r.error is None]
        assert c.preprocess_s > 0 and c.network_s >= MODEL_CALL_S * (1 if decoded else 0)


@pytest.mark.parametrize("prepared", [64, 32, None], ids=["prepared-for-it", "prepared-for-another-size", "not"])
def test_detections_are_the_model_calls_own(tmp_path: Path, prepared: int | None) -> None:
    params = make_params(tmp_path)
    paths = write_batch(params, good=5)  # 64 x 64 and 56 x 64 images: two letterboxes
    model = detector(constant_detector(tmp_path / "m.onnx", CHAMPION_ROWS))  # a 64 px model
    images = [read_image(p, source="default") for p in paths]
    expected, _ = predict_images(model, [image.rgb for image in images])
    if prepared is not None:  # a shadow of another input size gets images prepared for the champion's
        images = [prepare_image(image, prepared) for image in images]
    inferred = infer_chunk(model, images, pool=None, timeout_s=None)
    assert inferred.detections is not None and inferred.error is None
    for got, want in zip(inferred.detections, expected, strict=True):
        np.testing.assert_array_equal(got.boxes_xyxy, want.boxes_xyxy)
        np.testing.assert_array_equal(got.confidence, want.confidence)
        np.testing.assert_array_equal(got.class_id, want.class_id)
    steps = inferred.preprocess_ms + inferred.network_ms + inferred.postprocess_ms
    assert inferred.ms == pytest.approx(steps) and inferred.network_ms > 0


def test_prepare_is_the_model_calls_letterbox(tmp_path: Path) -> None:
    params = make_params(tmp_path)
    path = write_batch(params, good=2)[1]  # 56 x 64: padded
    image = read_image(path, source="default")
    prepared = prepare_image(image, 64).prepared
    assert prepared is not None and prepared.imgsz == 64 and prepared.seconds > 0
    tensor, box = letterbox(image.rgb, 64)
    np.testing.assert_array_equal(prepared.tensor, tensor)
    assert prepared.box == box
    unread = read_image(tmp_path / "missing.png", source="default")
    assert prepare_image(unread, 64) is unread, "nothing to letterbox: the error row is made as before"
