"""GX-free parts of the validate stage: label parsing, leakage search, size declarations, safe moves, the share rule,
the expectations table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tasks.config import Params, ValidateParams
from tasks.contracts.frozen_images import FrozenImageIndex, nearest_test_images
from tasks.contracts.quarantine import move_file
from tasks.contracts.validation_frames import FrameError, read_declared_sizes
from tasks.contracts.yolo_labels import LabelLine, parse_label_text
from tasks.decisions import expectations
from tasks.decisions.quarantine import judge_share, top_reasons
from tests.conftest import tiny_params_dict


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("\n  \n", [], id="blank-lines"),
        pytest.param("2 0.5 0.5 0.1 0.2\n", [LabelLine(1, 2, (0.5, 0.5, 0.1, 0.2))], id="one-box"),
        pytest.param("\n1 0 0 0 0", [LabelLine(2, 1, (0.0, 0.0, 0.0, 0.0))], id="line-numbers-count-blanks"),
        pytest.param(
            "0 1 2 3\n", [LabelLine(1, None, None, "expected 'class cx cy w h', got 4 field(s)")], id="4-fields"
        ),
        pytest.param("0 1 2 3 4 5\n", [LabelLine(1, None, None, "expected 'class cx cy w h', got 6 field(s)")], id="6"),
        pytest.param("1.0 .5 .5 .1 .1", [LabelLine(1, None, None, "class '1.0' is not an integer")], id="float-class"),
        pytest.param("0 a .5 .1 .1", [LabelLine(1, None, None, "box 'a .5 .1 .1' is not four numbers")], id="text-box"),
    ],
)
def test_parse_label_text(text: str, expected: list[LabelLine]) -> None:
    assert parse_label_text(text) == expected


def test_parse_label_text_keeps_nan_for_the_null_check() -> None:
    (line,) = parse_label_text("0 0.5 nan 0.2 0.2")
    assert line.error is None and line.xywhn is not None and math.isnan(line.xywhn[1])


def _index(bits: np.ndarray) -> FrozenImageIndex:
    names = [f"t{i}" for i in range(len(bits))]
    return FrozenImageIndex(names=names, sha256={}, phash_bits=bits, phash_names=names)


@pytest.mark.parametrize(("n_new", "n_test"), [(0, 3), (3, 0), (5, 7), (40, 30)], ids=str)
def test_nearest_test_images_matches_brute_force(n_new: int, n_test: int) -> None:
    rng = np.random.default_rng(0)
    new = rng.integers(0, 256, (n_new, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 32), dtype=np.uint8)
    distance, nearest = nearest_test_images(new, _index(test))
    if n_test == 0:
        assert distance.tolist() == [-1] * n_new and nearest == [None] * n_new
        return
    brute = np.unpackbits(new[:, None, :] ^ test[None, :, :], axis=2).sum(axis=2)
    np.testing.assert_array_equal(distance, brute.min(axis=1))
    assert nearest == [f"t{i}" for i in brute.argmin(axis=1)]


@pytest.mark.parametrize(
    ("name", "write"),
    [
        pytest.param(
            "m.json", lambda p: p.write_text(json.dumps([{"image_id": "a", "width": 4, "height": 3}])), id="json"
        ),
        pytest.param(
            "m.json",
            lambda p: p.write_text(json.dumps({"images": [{"image": "a.png", "width": 4, "height": 3}]})),
            id="obj",
        ),
        pytest.param("m.csv", lambda p: p.write_text("image_id,image_width,image_height\na,4,3\n"), id="csv"),
        pytest.param(
            "m.parquet",
            lambda p: pd.DataFrame({"image_id": ["a"], "width": [4], "height": [3]}).to_parquet(p),
            id="parquet",
        ),
    ],
)
def test_read_manifest_formats(tmp_path: Path, name: str, write) -> None:
    path = tmp_path / name
    write(path)
    assert read_declared_sizes(path) == {"a": (4, 3)}


def test_read_manifest_missing_and_bad(tmp_path: Path) -> None:
    assert read_declared_sizes(tmp_path / "none.json") == {}
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": "a", "w": 4}]))
    with pytest.raises(FrameError, match=r"bad\.json: a manifest needs columns"):
        read_declared_sizes(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(FrameError, match=r"broken\.json: unreadable manifest"):
        read_declared_sizes(tmp_path / "broken.json")


def test_move_file_never_overwrites(tmp_path: Path) -> None:
    source, target = tmp_path / "a.png", tmp_path / "q" / "a.png"
    source.write_bytes(b"new")
    target.parent.mkdir()
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        move_file(source, target)
    assert (source.read_bytes(), target.read_bytes()) == (b"new", b"old")
    move_file(source, tmp_path / "q" / "b.png")
    assert not source.exists() and (tmp_path / "q" / "b.png").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"boxes_per_image": [5, 1]}, "need min <= max", id="boxes-min-above-max"),
        pytest.param({"phash_size": 8, "leak_max_distance": 64}, "flags every image", id="leak-distance-too-large"),
        pytest.param({"max_quarantine_share": 1.5}, "less than or equal to 1", id="share-above-one"),
    ],
)
def test_validate_params_reject_impossible_settings(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ValidateParams.model_validate(settings)


@pytest.mark.parametrize(
    ("checked", "quarantined", "max_share", "share", "refused"),
    [
        pytest.param(0, 0, 0.0, 0.0, False, id="empty-cycle"),
        pytest.param(10, 0, 0.0, 0.0, False, id="all-pass-zero-allowed"),
        pytest.param(10, 1, 0.0, 0.1, True, id="one-fails-zero-allowed"),
        pytest.param(10, 2, 0.2, 0.2, False, id="at-the-limit-passes"),
        pytest.param(10, 3, 0.2, 0.3, True, id="above-the-limit"),
        pytest.param(4, 4, 1.0, 1.0, False, id="all-fail-all-allowed"),
    ],
)
def test_quarantine_share_rule(checked: int, quarantined: int, max_share: float, share: float, refused: bool) -> None:
    decision = judge_share(checked=checked, quarantined=quarantined, max_share=max_share)
    assert decision.share == pytest.approx(share) and decision.refused is refused


def test_top_reasons() -> None:
    from collections import Counter

    assert top_reasons(Counter()) == "none"
    assert top_reasons(Counter({"a": 1, "b": 3}), n=1) == "b (3)"


def test_the_expectations_table_expands_with_params(tmp_path: Path) -> None:
    params = Params.model_validate(tiny_params_dict(tmp_path))
    values = expectations.expectation_values(params)
    expanded: dict[str, list[dict]] = {}
    for spec in expectations.EXPECTATIONS:
        expanded.setdefault(spec.suite, []).extend(kwargs for kwargs, _ in expectations.expand(spec, values))
    # one expectation per column, every "$value" filled in, no placeholder left
    assert sum(1 for k in expanded["labels"] if k.get("column") in ("x1n", "y1n", "x2n", "y2n")) == 4
    filled = [v for ks in expanded.values() for k in ks for key, v in k.items() if key != "regex"]
    assert all("$" not in str(v) and "{" not in str(v) for v in filled)
    not_null = [
        kwargs["column"]
        for spec in expectations.EXPECTATIONS
        if spec.check == "log_not_null"
        for kwargs, _ in expectations.expand(spec, values)
    ]
    assert not_null == values["not_nullable"]
    assert {"source", "shadow"} <= set(not_null)
    pair = [k for k in expanded["images"] if "column_A" in k]
    assert [(k["column_A"], k["column_B"]) for k in pair] == [
        ("width", "declared_width"),
        ("height", "declared_height"),
    ]
