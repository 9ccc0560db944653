"""Bad labeled data fails loudly, naming the file and line; nothing is changed on disk."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.contracts.yolo_labels import DatasetError, read_label_file, read_labeled_set


def make_set(root: Path, labels: dict[str, str | None], *, size=(32, 24)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, text in labels.items():
        Image.new("RGB", size, (10, 20, 30)).save(root / "images" / f"{stem}.png")
        if text is not None:
            (root / "labels" / f"{stem}.txt").write_text(text)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("7 0.5 0.5 0.2 0.2\n", "line 1: class 7 not in classes [0..2]", id="class-out-of-range"),
        pytest.param("-1 0.5 0.5 0.2 0.2\n", "line 1: class -1 not in classes", id="negative-class"),
        pytest.param("0 0.5 0.5 0.2 0.2\n1 0.95 0.5 0.2 0.2\n", "line 2: box", id="box-outside-right"),
        pytest.param("0 1.5 0.5 0.2 0.2\n", "lies outside [0, 1]", id="pixel-coordinates"),
        pytest.param("0 0.5 0.5 0.0 0.2\n", "line 1: zero-area box", id="zero-width"),
        pytest.param("0 0.5 0.5 0.2 -0.1\n", "line 1: zero-area box", id="negative-height"),
        pytest.param("0 0.5 0.5 0.2\n", "line 1: expected 'class cx cy w h'", id="missing-field"),
        pytest.param("0 a b c d\n", "line 1: not numbers", id="not-numbers"),
    ],
)
def test_bad_label_names_file_and_line(tmp_path, text, message):
    root = make_set(tmp_path / "set", {"ok": "0 0.5 0.5 0.2 0.2\n", "bad": text})
    before = snapshot(root)
    with pytest.raises(DatasetError) as err:
        read_labeled_set(root, num_classes=3)
    assert str(root / "labels" / "bad.txt") in str(err.value)
    assert message in str(err.value)
    assert snapshot(root) == before


def test_empty_label_file_means_no_objects(tmp_path):
    root = make_set(tmp_path / "set", {"empty": "", "blank-lines": "\n\n", "one": "2 0.5 0.5 0.5 0.5\n"})
    items = {item.image_id: item for item in read_labeled_set(root, num_classes=3)}
    assert items["empty"].class_id.shape == (0,)
    assert items["empty"].boxes_xywhn.shape == (0, 4)
    assert items["blank-lines"].class_id.shape == (0,)
    np.testing.assert_array_equal(items["one"].class_id, [2])
    assert (items["one"].width, items["one"].height) == (32, 24)


def test_missing_label_file_is_an_error(tmp_path):
    root = make_set(tmp_path / "set", {"labeled": "", "unlabeled": None})
    with pytest.raises(DatasetError, match=r"unlabeled\.txt: label file missing"):
        read_labeled_set(root, num_classes=3)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b"not an image at all"), id="garbage"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty-file"),
    ],
)
def test_corrupt_image_names_the_file(tmp_path, corrupt):
    root = make_set(tmp_path / "set", {"good": "", "broken": ""}, size=(64, 64))
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(root / "images" / "broken.png")
    corrupt(root / "images" / "broken.png")
    with pytest.raises(DatasetError, match=r"broken\.png: unreadable or truncated image"):
        read_labeled_set(root, num_classes=3)


def test_no_images_is_an_error(tmp_path):
    root = make_set(tmp_path / "set", {})
    with pytest.raises(DatasetError, match="no images found"):
        read_labeled_set(root, num_classes=3)


def test_label_file_alone(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("1 0.25 0.25 0.5 0.5\n0 0.75 0.75 0.1 0.1\n")
    cls, boxes = read_label_file(path, num_classes=2)
    np.testing.assert_array_equal(cls, [1, 0])
    assert boxes.shape == (2, 4)
