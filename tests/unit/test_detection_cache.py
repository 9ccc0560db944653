"""The detection cache: a hit gives a miss's numbers to the last digit; any change of model, set or settings misses.

Real ONNX models (:func:`tests.onnx_models.constant_detector`, built in milliseconds) run through the real scoring
code on real image folders; the cache files are the real ones under the params' ``.cache/detections``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks import evaluate
from tasks.config import Params
from tasks.contracts import detection_cache
from tasks.contracts.yolo_labels import read_labeled_set
from tasks.targets import gate_scoring, scoring
from tests.conftest import tiny_params_dict
from tests.onnx_models import constant_detector

# x1 y1 x2 y2 score class in letterboxed pixels (64 px images: the image's own pixels)
ROWS = [[24.0, 24.0, 40.0, 40.0, 0.9, 0.0], [23.0, 25.0, 41.0, 39.0, 0.6, 1.0], [8.0, 8.0, 30.0, 30.0, 0.5, 0.0]]
OTHER_ROWS = [[24.0, 24.0, 40.0, 40.0, 0.9, 1.0]]


def write_set(root: Path, n: int, *, prefix: str) -> Path:
    """``n`` 64x64 images with one centred box each (class ``i % 2``)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        Image.new("RGB", (64, 64), (i * 7 % 255, 90, 120)).save(root / "images" / f"{prefix}{i:03d}.png")
        (root / "labels" / f"{prefix}{i:03d}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.25\n")
    return root


@pytest.fixture
def world(tmp_path: Path) -> Params:
    params = Params.model_validate(tiny_params_dict(tmp_path))
    write_set(params.base.paths.golden, 6, prefix="g")
    constant_detector(params.base.paths.models / "export" / "model.onnx", ROWS)
    return params


def model_of(params: Params) -> Path:
    return params.base.paths.models / "export" / "model.onnx"


def score(
    params: Params, cache: scoring.DetectionCache | None, *, model: Path | None = None, **settings: float
) -> scoring.SetEvaluation:
    return scoring.evaluate_set(
        model or model_of(params),
        params.base.paths.golden,
        classes=params.base.classes,
        settings=dataclasses.replace(scoring.inference_settings(params), **settings),
        batch=params.evaluate.batch,
        set_name="golden",
        cache=cache,
    )


def cache_files(params: Params) -> list[Path]:
    folder = detection_cache.cache_folder(params.base.paths.models)
    return sorted(folder.glob(f"*{detection_cache.SUFFIX}")) if folder.is_dir() else []


def test_a_hit_gives_the_miss_numbers_bit_for_bit(world):
    uncached = score(world, None)
    cache = scoring.detection_cache_of(world)
    missed = score(world, cache)
    assert (cache.hits, cache.misses) == (0, 1) and len(cache_files(world)) == 1
    hit = score(world, cache)
    assert (cache.hits, cache.misses) == (1, 1)
    assert hit == missed, "every field, ms per image included (the stored one)"
    assert 0.1 < hit.map50_95 < 1.0, "a number that can show a difference"
    for field in ("map50_95", "map50", "stats", "per_class_ap"):
        assert getattr(hit, field) == getattr(uncached, field), field


def test_the_stored_arrays_come_back_exactly(world):
    images = read_labeled_set(world.base.paths.golden, num_classes=len(world.base.classes))
    settings = scoring.inference_settings(world)
    cache = scoring.detection_cache_of(world)
    missed, ms = scoring.detect_set(model_of(world), images, settings, batch=4, cache=cache)
    hit, hit_ms = scoring.detect_set(model_of(world), images, settings, batch=4, cache=cache)
    assert (cache.hits, cache.misses, hit_ms) == (1, 1, ms)
    for a, b in zip(missed, hit, strict=True):
        for name in ("boxes_xyxy", "confidence", "class_id"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def edit_label(params: Params) -> None:
    (params.base.paths.golden / "labels" / "g002.txt").write_text("0 0.5 0.5 0.30 0.25\n")


def edit_image(params: Params) -> None:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(params.base.paths.golden / "images" / "g003.png")


def add_image(params: Params) -> None:
    Image.new("RGB", (64, 64), (9, 9, 9)).save(params.base.paths.golden / "images" / "g100.png")
    (params.base.paths.golden / "labels" / "g100.txt").write_text("1 0.5 0.5 0.25 0.25\n")


def edit_model(params: Params) -> None:
    constant_detector(model_of(params), OTHER_ROWS)


@pytest.mark.parametrize(
    ("change", "settings", "hits"),
    [
        pytest.param(None, {}, 1, id="nothing-changed-hits"),
        pytest.param(edit_label, {}, 0, id="one-label-file-edited"),
        pytest.param(edit_image, {}, 0, id="one-image-replaced"),
        pytest.param(add_image, {}, 0, id="one-image-added"),
        pytest.param(edit_model, {}, 0, id="model-file-changed"),
        pytest.param(None, {"conf": 0.55}, 0, id="conf-changed"),
        pytest.param(None, {"max_det": 2}, 0, id="max-det-changed"),
        pytest.param(None, {"iou": 0.3}, 0, id="iou-changed"),
        pytest.param(None, {"threads": 1}, 0, id="threads-changed"),
    ],
)
def test_a_change_of_model_set_or_settings_is_a_miss(world, change, settings, hits):
    cache = scoring.detection_cache_of(world)
    score(world, cache)
    if change is not None:
        change(world)
    after = score(world, cache, **settings)
    fresh = score(world, None, **settings)
    assert (cache.hits, cache.misses) == (hits, 2 - hits)
    assert (after.map50_95, after.per_class_ap, after.images) == (fresh.map50_95, fresh.per_class_ap, fresh.images)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = data.index(b"boxes.npy")  # inside the stored boxes: the zip still opens, the numbers are wrong
    data[start + 200] ^= 0xFF
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(b"not a cache file at all" * 10)


def another_keys_file(path: Path) -> None:
    folder = path.parent
    detection_cache.write_detections(folder, "0" * 64, boxes=[], confidence=[], class_id=[], ms_per_image=1.0).replace(
        path
    )


@pytest.mark.parametrize(
    "damage",
    [truncate, flip_a_byte, empty, garbage, another_keys_file],
    ids=["truncated", "byte-flipped", "empty", "garbage", "another-keys-file"],
)
def test_a_damaged_cache_file_is_a_miss_with_a_warning(world, damage, caplog):
    cache = scoring.detection_cache_of(world)
    first = score(world, cache)
    (path,) = cache_files(world)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="tasks.contracts.detection_cache"):
        again = score(world, cache)
    assert (cache.hits, cache.misses) == (0, 2), "never a wrong number: detected again"
    assert again.map50_95 == first.map50_95
    assert any(str(path) in r.getMessage() and "miss" in r.getMessage() for r in caplog.records), caplog.text
    score(world, cache)
    assert cache.hits == 1, "the miss rewrote the file"


def test_cache_off_never_reads_nor_writes(world, tmp_path):
    on = scoring.detection_cache_of(world)
    score(world, on)
    (path,) = cache_files(world)
    garbage(path)  # a read would warn; a write would replace it
    before = path.stat().st_mtime_ns
    data = world.model_dump(mode="json")
    data["evaluate"]["cache"] = False
    off_params = Params.model_validate(data)
    off = scoring.detection_cache_of(off_params)
    assert off.folder is None
    score(off_params, off)
    assert (off.hits, off.misses) == (0, 0)
    assert path.stat().st_mtime_ns == before and cache_files(world) == [path]
    report = evaluate.run(off_params, model_path=model_of(world), report_path=tmp_path / "off.json")
    assert (report.cache_hits, report.cache_misses) == (0, 0) and cache_files(world) == [path]


def test_the_evaluate_report_counts_its_hits(world, tmp_path):
    first = evaluate.run(world, model_path=model_of(world), report_path=tmp_path / "a.json")
    second = evaluate.run(world, model_path=model_of(world), report_path=tmp_path / "b.json")
    assert (first.cache_hits, first.cache_misses) == (0, 1)
    assert (second.cache_hits, second.cache_misses) == (1, 0)
    assert second.sets["golden"] == first.sets["golden"]


@pytest.mark.parametrize("first_run", ["single", "sharded"])
def test_the_sharded_evaluate_shares_the_single_process_entries(world, tmp_path, first_run):
    data = world.model_dump(mode="json")
    data["evaluate"]["batch"] = 2  # part of the key: both runs detect in batches of 2
    single = Params.model_validate(data)
    data["evaluate"]["shards"] = 2
    sharded = Params.model_validate(data)
    runs = {"single": single, "sharded": sharded}
    second_run = "single" if first_run == "sharded" else "sharded"
    assert [len(s.chunks) for s in evaluate.plan(sharded, model_path=model_of(world)).shards] == [2, 1]
    first = evaluate.run(runs[first_run], model_path=model_of(world), report_path=tmp_path / "a.json")
    assert (first.cache_hits, first.cache_misses) == (0, 1) and len(cache_files(world)) == 1
    assert evaluate.plan(sharded, model_path=model_of(world)).shards == (), "a cached set is cut out of the shards"
    second = evaluate.run(runs[second_run], model_path=model_of(world), report_path=tmp_path / "b.json")
    assert (second.cache_hits, second.cache_misses) == (1, 0) and len(cache_files(world)) == 1
    assert second.sets["golden"] == first.sets["golden"]


def test_the_gate_scoring_reuses_each_folder_and_scores_both_models_on_the_same_data(world, tmp_path):
    holdouts = [write_set(tmp_path / "holdouts" / c, 4, prefix=c) for c in ("c1", "c2")]
    sets = {"golden": world.base.paths.golden, "production": holdouts}
    champion = constant_detector(tmp_path / "champion" / "model.onnx", OTHER_ROWS)
    cache = scoring.detection_cache_of(world)
    uncached = gate_scoring.score_model(model_of(world), sets, params=world)
    cand = gate_scoring.score_model(model_of(world), sets, params=world, cache=cache)
    assert (cache.hits, cache.misses) == (0, 3), "one entry per folder: golden and each holdout"
    again = gate_scoring.score_model(model_of(world), sets, params=world, cache=cache)
    assert (cache.hits, cache.misses) == (3, 3)
    for name in sets:
        assert again.sets[name].map50_95 == cand.sets[name].map50_95 == uncached.sets[name].map50_95
        assert again.sets[name].per_class_ap == uncached.sets[name].per_class_ap
    gate_scoring.score_model(champion, sets, params=world, cache=cache)
    assert (cache.hits, cache.misses) == (3, 6), "another model's bytes: its own entries"
    edit_label(world)  # the golden set changes between two cycles: both models are detected on it again
    gate_scoring.score_model(model_of(world), sets, params=world, cache=cache)
    gate_scoring.score_model(champion, sets, params=world, cache=cache)
    assert (cache.hits, cache.misses) == (7, 8)


@pytest.mark.parametrize(
    ("layout", "changed"),
    [
        pytest.param("openvino", "model.bin", id="openvino-bin"),
        pytest.param("openvino", "model.xml", id="openvino-xml"),
        pytest.param("folder", "weights/part.bin", id="folder-file"),
        pytest.param("file", "model.onnx", id="single-file"),
    ],
)
def test_the_model_digest_covers_every_file_of_the_artifact(tmp_path, layout, changed):
    files = {
        "openvino": ["model.xml", "model.bin"],
        "folder": ["config.json", "weights/part.bin"],
        "file": ["model.onnx"],
    }[layout]
    root = tmp_path / "artifact"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    artifact = {"openvino": root / "model.xml", "folder": root, "file": root / "model.onnx"}[layout]
    before = detection_cache.model_digest(artifact)
    (root / changed).write_bytes(b"changed bytes")
    assert detection_cache.model_digest(artifact) != before


def test_the_key_holds_the_environment():
    parts = {"model": "m", "data": "d", "settings": {"imgsz": 64}}
    keys = {
        detection_cache.cache_key(**parts, environment=env)
        for env in ({"isa": "a"}, {"isa": "b"}, {"isa": "a", "packages": {"onnxruntime": "1.0"}})
    }
    assert len(keys) == 3
    assert scoring.cache_environment()["isa"] and np.all([len(k) == 64 for k in keys])


def test_a_file_rewritten_in_the_same_tick_is_hashed_again(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"a" * 64)
    before = detection_cache.file_digest(path)
    stat = path.stat()
    path.write_bytes(b"b" * 64)  # same size, same inode; the mtime may not have moved
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert detection_cache.file_digest(path) != before


def entry(folder: Path, key: str, *, mtime_s: int) -> Path:
    path = detection_cache.write_detections(
        folder,
        key,
        boxes=[np.zeros((50, 4), np.float32)],
        confidence=[np.zeros(50, np.float32)],
        class_id=[np.zeros(50, np.int64)],
        ms_per_image=1.0,
    )
    os.utime(path, (mtime_s, mtime_s))
    return path


@pytest.mark.parametrize(
    ("files", "fit", "keep", "left"),
    [
        pytest.param(0, 1, "", [], id="empty-folder"),
        pytest.param(3, 3, "", ["a", "b", "c"], id="within-the-bound"),
        pytest.param(3, 2, "", ["b", "c"], id="oldest-goes"),
        pytest.param(3, 1, "", ["c"], id="two-go"),
        pytest.param(3, 1, "a", ["a"], id="the-new-file-stays-even-when-oldest"),
        pytest.param(3, 0, "c", ["c"], id="bound-below-one-file"),
    ],
)
def test_prune_deletes_the_least_recently_used_files(tmp_path, files, fit, keep, left):
    paths = [entry(tmp_path, key, mtime_s=1_000 + i) for i, key in enumerate("abc"[:files])]
    size = paths[0].stat().st_size if paths else 1
    detection_cache.prune(tmp_path, max_bytes=fit * size, keep=keep)
    assert sorted(p.stem for p in tmp_path.glob("*.npz")) == left


def test_a_hit_marks_its_file_as_recently_used(tmp_path):
    old = entry(tmp_path, "a", mtime_s=1_000)
    entry(tmp_path, "b", mtime_s=2_000)
    assert detection_cache.read_detections(tmp_path, "a", images=1) is not None
    detection_cache.prune(tmp_path, max_bytes=old.stat().st_size)
    assert [p.stem for p in tmp_path.glob("*.npz")] == ["a"]
