"""Bad labeled data fails loudly, naming the file and line; nothing is changed on disk."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.contracts.yolo_labels import (
    DatasetError,
    format_label_text,
    read_label_file,
    read_label_lines,
    read_labeled_set,
)


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
        pytest.param("0 a b c d\n", "line 1: box 'a b c d' is not four numbers", id="not-numbers"),
        pytest.param("0.5 0.5 0.5 0.2 0.2\n", "line 1: class '0.5' is not an integer", id="float-class"),
        pytest.param("0 0.5 nan 0.2 0.2\n", "line 1: box [0.5, nan, 0.2, 0.2] is not finite", id="nan"),
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


@pytest.mark.parametrize(
    ("class_id", "boxes", "text"),
    [
        pytest.param([], np.zeros((0, 4)), "", id="no-objects"),
        pytest.param([2], [[0.5, 0.5, 0.25, 0.125]], "2 0.500000 0.500000 0.250000 0.125000\n", id="one-box"),
        pytest.param(
            np.array([0, 1]), [[0.1, 0.2, 0.1, 0.2], [1 / 3, 0.5, 0.2, 0.2]],
            "0 0.100000 0.200000 0.100000 0.200000\n1 0.333333 0.500000 0.200000 0.200000\n",
            id="two-boxes-6-decimals",
        ),
    ],
)  # fmt: skip
def test_the_one_writer_round_trips_through_the_strict_reader(tmp_path, class_id, boxes, text):
    path = tmp_path / "x.txt"
    path.write_text(format_label_text(class_id, boxes))
    assert path.read_text() == text
    cls, read = read_label_file(path, num_classes=3)
    np.testing.assert_array_equal(cls, class_id)
    np.testing.assert_allclose(read, np.asarray(boxes, dtype=float).reshape(-1, 4), atol=5e-7)


def test_lenient_parser_reports_every_bad_line(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("0 0.5 0.5 0.2 0.2\n0 0.5\n\nx 0.5 0.5 0.2 0.2\n")
    lines = read_label_lines(path)
    assert [(item.line, item.error is None) for item in lines] == [(1, True), (2, False), (4, False)]
    path.write_bytes(b"\xff\xfe0 0.5")
    (only,) = read_label_lines(path)
    assert only.line == 1 and "not UTF-8" in str(only.error)
    with pytest.raises(DatasetError, match=r"x\.txt line 1: not UTF-8"):
        read_label_file(path, num_classes=3)
