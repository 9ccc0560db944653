"""Decoded images as the models see them: ``(H, W, 3)`` uint8 RGB, whatever the file's pixel format.

Pillow's ``convert("RGB")`` handles palette, grayscale, alpha (dropped) and CMYK, but it clips 16-bit and 32-bit
integer grayscale at 255 (a 16-bit image becomes all white). :func:`to_rgb` scales those to 8 bits first.

Orientation: a camera stores a photo as the sensor read it and writes how to turn it in the EXIF ``Orientation``
tag. Ultralytics trains on what OpenCV decodes (``cv2.imread``/``imdecode`` apply the tag unless told
``IMREAD_IGNORE_ORIENTATION``; its label checks use ``exif_size``) and Label Studio shows the image in a browser
(CSS ``image-orientation: from-image``, the default): both see the photo upright. So every decode here turns it
upright too (:func:`upright`, :func:`upright_size`); otherwise predictions, label sizes and statistics of a rotated
photo would be in other coordinates than its labels.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ORIENTATION = 0x0112  # EXIF tag: 1 upright, 2-8 mirrored and/or rotated; 5-8 swap width and height
_SWAPS_SIDES = (5, 6, 7, 8)


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1 when it has none or an invalid one)."""
    try:
        value = int(img.getexif().get(_ORIENTATION, 1))
    except (TypeError, ValueError):  # a malformed tag: shown as stored, as browsers and OpenCV do
        return 1
    return value if 1 <= value <= 8 else 1


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (the image itself when it is upright already)."""
    if orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)


def upright_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the image as shown: stored sides swapped for orientations 5-8 (no decode needed)."""
    width, height = img.size
    return (height, width) if orientation(img) in _SWAPS_SIDES else (width, height)


def to_rgb(img: Image.Image) -> npt.NDArray[np.uint8]:
    """The image as ``(H, W, 3)`` uint8 RGB, upright (:func:`upright`: its EXIF orientation applied).

    16-bit grayscale (``I;16*``) keeps its top 8 bits; 32-bit integer grayscale (``I``) is read as 16-bit when any
    value exceeds 255 (how 16-bit files decode in some Pillow versions) and as 8-bit otherwise; float grayscale
    (``F``) is clipped to [0, 255].
    """
    img = upright(img)
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
