"""``benchmarks/dvc_scale.py --quick``: both layouts push to a real moto_server and pull back byte for byte."""

from __future__ import annotations

import io
import json
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from tasks.env import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import dvc_scale

pytestmark = pytest.mark.integration


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("index", [0, 7, 99_999], ids=["first", "small", "last-of-100k"])
def test_a_tagged_copy_has_the_same_pixels_and_other_bytes(index):
    original = png(1)
    copy = dvc_scale.png_variant(original, index)
    assert copy != original and copy != dvc_scale.png_variant(original, index + 1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(copy))), np.asarray(Image.open(io.BytesIO(original))))
    start = copy.index(b"tEXt") - 4
    length = int.from_bytes(copy[start : start + 4], "big")
    body = copy[start + 4 : start + 8 + length]
    assert int.from_bytes(copy[start + 8 + length : start + 12 + length], "big") == zlib.crc32(body)
    assert Image.open(io.BytesIO(copy)).text == {"visionloop-copy": str(index)}


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a" + b"\0" * 40, png(2)[:8] + b"\0\0\0\x0dIEND"], ids=["empty", "gif", "no-ihdr"]
)
def test_not_a_png_is_refused(data):
    with pytest.raises(ValueError, match="not a PNG"):
        dvc_scale.png_variant(data, 1)


@pytest.mark.slow  # a moto_server, 600 + 1 files pushed and pulled: 14 s alone, 23 s beside other runs
def test_quick_run_pushes_both_layouts_and_pulls_them_byte_identical(tmp_path):
    out = tmp_path / "dvc_scale.json"
    report = dvc_scale.main(["--quick", "--root", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = {row["layout"]: row for row in report["rows"]}
    assert set(rows) == {"sharded", "flat"}
    for row in rows.values():
        assert row["byte_identical"], row
        assert row["distinct_image_hashes"] == row["images"] == 300, "every image is its own file and hash"
        assert row["repush_objects"] == 0, "a second push sends nothing"
    assert rows["sharded"]["files"] == 1 and rows["sharded"]["objects_pushed"] == 2  # one shard + the .dir listing
    # 300 images + 100 distinct label texts (copies share their scene's label) + the .dir listing
    assert rows["flat"]["files"] == 600 and rows["flat"]["objects_pushed"] == 401
    assert report["host"]["cores"] and "load_before" in report["host"]
