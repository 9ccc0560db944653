"""tasks.core.image_stats: the per-image input statistics equal a plain numpy reference and are cheap."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from tasks.core.image_stats import STAT_NAMES, ImageStats, image_stats


def reference(rgb: np.ndarray) -> dict[str, float]:
    """The statistics in float64 numpy: BT.601 luma, its mean/std, the 4-neighbour Laplacian with reflected borders."""
    pixels = rgb.astype(np.float64)
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    padded = np.pad(luma, 1, mode="reflect")  # OpenCV's BORDER_REFLECT_101
    laplacian = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * luma
    return {
        "brightness": luma.mean(),
        "contrast": luma.std(),
        "sharpness": laplacian.var(),
        "mean_r": pixels[..., 0].mean(),
        "mean_g": pixels[..., 1].mean(),
        "mean_b": pixels[..., 2].mean(),
    }


def noise(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def gradient() -> np.ndarray:
    """(30, 40, 3): red grows left to right, green top to bottom, blue constant."""
    red = np.broadcast_to(np.linspace(0, 255, 40)[None, :], (30, 40))
    green = np.broadcast_to(np.linspace(0, 255, 30)[:, None], (30, 40))
    return np.stack([red, green, np.full((30, 40), 128.0)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    "rgb",
    [
        pytest.param(noise((160, 160)), id="noise-160"),
        pytest.param(noise((31, 47), seed=1), id="noise-odd-size"),
        pytest.param(gradient(), id="smooth-gradient"),
        pytest.param(np.full((8, 8, 3), (200, 100, 50), np.uint8), id="flat-colour"),
        pytest.param(np.full((1, 1, 3), 77, np.uint8), id="one-pixel"),
        pytest.param(noise((20, 30), seed=2)[:, ::2], id="strided-view"),
    ],
)
def test_stats_equal_the_numpy_reference(rgb: np.ndarray) -> None:
    before = rgb.copy()
    got = image_stats(rgb).as_dict()
    assert list(got) == list(STAT_NAMES) == ["brightness", "contrast", "sharpness", "mean_r", "mean_g", "mean_b"]
    want = reference(rgb)
    for name in STAT_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-3), name
    np.testing.assert_array_equal(rgb, before)  # input not modified


def test_flat_image_has_no_contrast_and_no_sharpness_and_blur_lowers_sharpness() -> None:
    flat = image_stats(np.full((16, 16, 3), 90, np.uint8))
    assert (flat.brightness, flat.contrast, flat.sharpness) == pytest.approx((90.0, 0.0, 0.0), abs=1e-4)
    sharp = noise((64, 64))
    blurred = ((sharp[:-1, :-1].astype(np.uint16) + sharp[1:, 1:] + sharp[:-1, 1:] + sharp[1:, :-1]) // 4).astype(
        np.uint8
    )
    assert image_stats(blurred).sharpness < image_stats(sharp).sharpness / 4


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param(np.zeros((4, 4), np.uint8), "(H, W, 3) uint8", id="grayscale"),
        pytest.param(np.zeros((4, 4, 4), np.uint8), "(H, W, 3) uint8", id="rgba"),
        pytest.param(np.zeros((4, 4, 3), np.float32), "(H, W, 3) uint8", id="float"),
        pytest.param([[[0, 0, 0]]], "(H, W, 3) uint8", id="a-list"),
        pytest.param(np.zeros((0, 4, 3), np.uint8), "non-empty", id="empty"),
    ],
)
def test_bad_input_is_named(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        image_stats(value)  # type: ignore[arg-type]


def test_stats_are_cheap_at_the_models_input_size() -> None:
    rgb = noise((160, 160))
    image_stats(rgb)
    runs = []
    for _ in range(20):
        start = time.perf_counter()
        image_stats(rgb)
        runs.append(time.perf_counter() - start)
    # ~0.25 ms here; the bound leaves room for a busy shared host
    assert sorted(runs)[len(runs) // 2] < 0.01


def test_image_stats_is_a_frozen_record() -> None:
    stats = image_stats(noise((4, 4)))
    assert isinstance(stats, ImageStats)
    with pytest.raises(AttributeError):
        stats.brightness = 1.0  # type: ignore[misc]
