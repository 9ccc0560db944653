"""Decoded images as the models see them: ``(H, W, 3)`` uint8 RGB, whatever the file's pixel format.

Pillow's ``convert("RGB")`` handles palette, grayscale, alpha (dropped) and CMYK, but it clips 16-bit and 32-bit
integer grayscale at 255 (a 16-bit image becomes all white). :func:`to_rgb` scales those to 8 bits first.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image) -> npt.NDArray[np.uint8]:
    """The image as ``(H, W, 3)`` uint8 RGB.

    16-bit grayscale (``I;16*``) keeps its top 8 bits; 32-bit integer grayscale (``I``) is read as 16-bit when any
    value exceeds 255 (how 16-bit files decode in some Pillow versions) and as 8-bit otherwise; float grayscale
    (``F``) is clipped to [0, 255].
    """
    if img.mode in _WIDE_GRAY or img.mode == "F":
        values = np.asarray(img)
        if img.mode == "F":
            gray = np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
        elif img.mode != "I" or values.max(initial=0) > 255:
            gray = (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        else:
            gray = np.clip(values, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))
