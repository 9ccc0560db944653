"""Merge stage: never discards, recency repeats the trainer honours, frozen holdouts, no leaks, append-only shards."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks import merge, train
from tasks.config import Params
from tasks.contracts import merged_manifest as mm
from tasks.contracts.ledger import read_cycle_starts
from tasks.contracts.merged_manifest import ManifestError, read_manifest
from tasks.contracts.names import check_cycle_name, is_cycle_name
from tasks.contracts.reports import load_report
from tasks.contracts.reports.merge import CycleRepeat, MergeReport
from tasks.contracts.yolo_labels import list_images
from tasks.core.hashing import file_md5, file_sha256
from tasks.decisions.recency import chronological, repeat_factors, split_counts
from tasks.merge import MergeError
from tests.conftest import tiny_params_dict

SIZE = 32


def write_set(root: Path, stems: list[str], *, tone: int) -> list[Path]:
    """Write tiny distinct PNGs (``tone`` + index picks the colour) with one-box YOLO labels under ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    out = []
    for index, stem in enumerate(stems):
        value = tone * 64 + index
        image = root / "images" / f"{stem}.png"
        Image.new("RGB", (SIZE, SIZE), (value % 256, value // 256, 7)).save(image)
        (root / "labels" / f"{stem}.txt").write_text(f"{index % 6} 0.5 0.5 0.25 0.25\n")
        out.append(image)
    return out


def make_cycle(params: Params, cycle: str, n: int, *, tone: int) -> list[Path]:
    """A validated cycle folder ``<labels>/<cycle>`` of ``n`` images named like the world's production files."""
    return write_set(params.base.paths.labels / cycle, [f"{cycle}_{i:06d}" for i in range(n)], tone=tone)


def make_params(root: Path, **merge_cfg: Any) -> Params:
    """Params under ``root`` with a small historical set (8 train, 3 val) and golden set (3)."""
    params = Params.model_validate(tiny_params_dict(root, merge=merge_cfg))
    paths = params.base.paths
    write_set(paths.train, [f"train_{i:06d}" for i in range(8)], tone=0)
    write_set(paths.val, [f"val_{i:06d}" for i in range(3)], tone=1)
    write_set(paths.golden, [f"golden_{i:06d}" for i in range(3)], tone=2)
    return params


def by_sha(rows: list[mm.Row]) -> dict[str, mm.Row]:
    return {row.sha256: row for row in rows}


def manifest_rows(params: Params) -> list[mm.Row]:
    return read_manifest(params.base.paths.merged / mm.MANIFEST)


def shard_bytes(params: Params) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((params.base.paths.merged / "shards").glob("*.tar"))}


def report(params: Params) -> dict[str, Any]:
    return json.loads((params.base.paths.reports / "merge.json").read_text())


# ------------------------------------------------------------------------------------------------ pure policy


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("2026-11-02", True, id="date"),
        pytest.param("c1", True, id="short"),
        pytest.param("run=3.a_b", True, id="all-allowed-punctuation"),
        pytest.param("a" * 128, True, id="128-chars"),
        pytest.param("a" * 129, False, id="129-chars"),
        pytest.param("", False, id="empty"),
        pytest.param(".hidden", False, id="leading-dot"),
        pytest.param("../c1", False, id="traversal"),
        pytest.param("a b", False, id="space"),
        pytest.param("a/b", False, id="slash"),
    ],
)
def test_the_one_cycle_name_rule(name: str, ok: bool) -> None:
    assert is_cycle_name(name) is ok
    if ok:
        assert check_cycle_name(name, error=MergeError) == name
    else:
        with pytest.raises(MergeError, match=r"use letters, digits and \. _ = -"):
            check_cycle_name(name, error=MergeError)


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 9], ids=["empty", "one-byte", "several-chunks"])
def test_file_hashes_stream_in_chunks(tmp_path: Path, data: bytes) -> None:
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path, chunk_bytes=7) == file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_md5(path, chunk_bytes=7) == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize(
    ("cycles", "decay", "max_repeat", "expected"),
    [
        ([], 0.5, 4, {}),
        (["c1"], 0.5, 4, {"c1": 4}),
        (["c3", "c1", "c2"], 0.5, 4, {"c1": 1, "c2": 2, "c3": 4}),
        (["c1", "c2", "c3", "c4", "c5"], 0.5, 4, {"c1": 1, "c2": 1, "c3": 1, "c4": 2, "c5": 4}),
        (["c1", "c2", "c3"], 1.0, 3, {"c1": 3, "c2": 3, "c3": 3}),
        (["c1", "c2"], 0.01, 1, {"c1": 1, "c2": 1}),
    ],
    ids=["empty", "one", "three-unsorted", "five-floor-at-one", "no-decay", "max-one"],
)
def test_repeat_factors(cycles, decay, max_repeat, expected):
    factors = repeat_factors(cycles, decay=decay, max_repeat=max_repeat)
    assert {name: f.repeat for name, f in factors.items()} == expected
    if cycles:
        newest = max(cycles)
        assert factors[newest] == CycleRepeat(newest, 0, 1.0, max_repeat)


T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("cycles", "started", "oldest_first"),
    [
        (["c10", "c9", "c1"], None, ["c1", "c9", "c10"]),  # before: text order made c9 newer than c10
        (["20261202T010000Z", "20261130T173217Z"], None, ["20261130T173217Z", "20261202T010000Z"]),
        (
            ["spring", "winter", "autumn"],
            {"winter": T0, "spring": T0 + dt.timedelta(days=90), "autumn": T0 + dt.timedelta(days=300)},
            ["winter", "spring", "autumn"],
        ),
        (["b", "a"], {"b": T0}, ["a", "b"]),  # the ledger does not know every cycle: names order them
    ],
    ids=["numbers-compare-as-numbers", "utc-names", "recorded-starts", "partly-recorded"],
)
def test_cycles_age_in_the_order_they_started(cycles, started, oldest_first):
    assert chronological(cycles, started) == oldest_first
    factors = repeat_factors(cycles, decay=0.5, max_repeat=4, started=started)
    assert factors[oldest_first[-1]].age == 0 and factors[oldest_first[0]].age == len(cycles) - 1


def test_cycle_starts_are_read_from_the_ledger(tmp_path: Path) -> None:
    assert read_cycle_starts(tmp_path) == {}
    table = pa.table(
        {
            "cycle": ["c10", "c10", "c9"],
            "queued_at": pa.array(
                [T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=1), T0], pa.timestamp("us", "UTC")
            ),
        }
    )
    pq.write_table(table, tmp_path / "ledger.parquet")
    assert read_cycle_starts(tmp_path) == {"c10": T0 + dt.timedelta(days=1), "c9": T0}


@pytest.mark.parametrize(
    ("n", "holdout", "val", "expected"),
    [
        (0, 0.2, 0.1, (0, 0)),
        (1, 0.2, 0.0, (0, 0)),
        (2, 0.2, 0.0, (1, 0)),
        (10, 0.2, 0.1, (2, 1)),
        (10, 0.0, 0.0, (0, 0)),
        (3, 0.9, 0.0, (3, 0)),
    ],
    ids=["empty", "single-image-trains", "small-cycle-still-holds-one", "fractions", "none", "all-held"],
)
def test_split_counts(n, holdout, val, expected):
    assert split_counts(n, holdout_fraction=holdout, val_fraction=val) == expected


# ------------------------------------------------------------------------------------------------ the stage


def test_three_cycles_never_discard_and_weight_recent_cycles(tmp_path):
    params = make_params(tmp_path, holdout_fraction=0.2)
    paths = params.base.paths
    images = {c: make_cycle(params, c, 10, tone=3 + i) for i, c in enumerate(["c1", "c2", "c3"])}
    for cycle in images:
        merge.run(params, cycle=cycle)

    rows = by_sha(manifest_rows(params))
    for cycle in ("c1", "c2"):
        for image in images[cycle]:
            row = rows[file_sha256(image)]
            assert (row.source, row.cycle) == ("production", cycle)
            if row.split == "holdout":
                assert (paths.holdouts / cycle / "images" / image.name).read_bytes() == image.read_bytes()
            else:
                assert row.split == "train" and row.shard
    for image in list_images(paths.train / "images"):
        assert rows[file_sha256(image)].split == "train"
    assert Counter(r.split for r in rows.values() if r.source == "production") == {"train": 24, "holdout": 6}
    assert {c: r["repeat"] for r in report(params)["recency"] for c in [r["cycle"]]} == {"c1": 1, "c2": 2, "c3": 4}


@pytest.mark.parametrize(
    ("recency", "expected"),
    [
        ({"decay": 0.5, "max_repeat": 4}, {"c1": 1, "c2": 2, "c3": 4, "historical": 1}),
        ({"decay": 1.0, "max_repeat": 1}, {"c1": 1, "c2": 1, "c3": 1, "historical": 1}),
        ({"decay": 0.5, "max_repeat": 2, "historical_repeat": 2}, {"c1": 1, "c2": 1, "c3": 2, "historical": 2}),
    ],
    ids=["halving", "uniform", "historical-doubled"],
)
def test_recency_repeats_are_what_ultralytics_loads(tmp_path, recency, expected):
    from tasks.models.yolo import configure_ultralytics

    configure_ultralytics()
    from ultralytics.data.dataset import YOLODataset

    params = make_params(tmp_path, holdout_fraction=0.0, recency=recency)
    for i, cycle in enumerate(["c1", "c2", "c3"]):
        make_cycle(params, cycle, 4, tone=3 + i)
        merge.run(params, cycle=cycle)
    view = mm.materialize_view(params.base.paths.merged, tmp_path / "view")

    names = dict(enumerate(params.base.classes))
    dataset = YOLODataset(img_path=str(view.train), data={"names": names, "channels": 3}, imgsz=SIZE, augment=False)
    seen = Counter(Path(f).stem.rpartition("_")[0] for f in dataset.im_files)  # c1_000003 -> c1, train_000001 -> train
    assert seen == {"c1": 4 * expected["c1"], "c2": 4 * expected["c2"], "c3": 4 * expected["c3"]} | {
        "train": 8 * expected["historical"]
    }
    assert len(dataset.labels) == len(dataset.im_files) == view.train_samples
    val = YOLODataset(img_path=str(view.val), data={"names": names, "channels": 3}, imgsz=SIZE, augment=False)
    assert sorted(Path(f).name for f in val.im_files) == [f"val_{i:06d}.png" for i in range(3)]


def test_holdouts_are_frozen_and_never_trained_on(tmp_path):
    params = make_params(tmp_path, holdout_fraction=0.3)
    paths = params.base.paths
    make_cycle(params, "c1", 10, tone=3)
    merge.run(params, cycle="c1")
    frozen = {p.name: p.read_bytes() for p in sorted((paths.holdouts / "c1").rglob("*")) if p.is_file()}
    assert len([n for n in frozen if n.endswith(".png")]) == 3

    # a different fraction and seed, a second cycle, late images, a full rebuild: the c1 holdout never changes
    changed = Params.model_validate(
        params.model_dump(mode="json") | {"merge": {"holdout_fraction": 0.6, "seed": 99}}
    )  # fmt: skip
    make_cycle(changed, "c2", 5, tone=4)
    write_set(paths.labels / "c1", ["c1_late_000000"], tone=5)
    merge.run(changed, cycle="c2")
    merge.run(changed, cycle="c1")
    shutil.rmtree(paths.merged)
    merge.run(changed)
    after = {p.name: p.read_bytes() for p in sorted((paths.holdouts / "c1").rglob("*")) if p.is_file()}
    assert after == frozen

    rows = manifest_rows(changed)
    held = {file_sha256(p) for p in paths.holdouts.glob("*/images/*.png")}
    assert held == {r.sha256 for r in rows if r.split == "holdout"}
    assert not held & {r.sha256 for r in rows if r.split in ("train", "val")}
    late = next(r for r in rows if r.image_id == "c1_late_000000")
    assert late.split == "train"


@pytest.mark.parametrize("where", ["cycle", "historical", "both"])
def test_golden_and_holdout_copies_never_reach_training(tmp_path, where):
    params = make_params(tmp_path, holdout_fraction=0.2)
    paths = params.base.paths
    golden = sorted((paths.golden / "images").glob("*.png"))
    make_cycle(params, "c1", 6, tone=3)
    if where in ("cycle", "both"):
        shutil.copy(golden[0], paths.labels / "c1" / "images" / "c1_copy_000000.png")
        shutil.copy(
            paths.golden / "labels" / f"{golden[0].stem}.txt", paths.labels / "c1" / "labels" / "c1_copy_000000.txt"
        )
    if where in ("historical", "both"):
        shutil.copy(golden[1], paths.train / "images" / "train_copy_000000.png")
        shutil.copy(paths.golden / "labels" / f"{golden[1].stem}.txt", paths.train / "labels" / "train_copy_000000.txt")
    merge.run(params, cycle="c1")
    # cycle 2 repeats a c1 holdout image under a new name
    held = sorted((paths.holdouts / "c1" / "images").glob("*.png"))[0]
    make_cycle(params, "c2", 3, tone=4)
    shutil.copy(held, paths.labels / "c2" / "images" / "c2_again_000000.png")
    shutil.copy(
        paths.holdouts / "c1" / "labels" / f"{held.stem}.txt", paths.labels / "c2" / "labels" / "c2_again_000000.txt"
    )
    merge.run(params, cycle="c2")

    rows = manifest_rows(params)
    trained = {r.sha256 for r in rows if r.split in ("train", "val")}
    forbidden = {file_sha256(p) for p in golden} | {file_sha256(p) for p in paths.holdouts.glob("*/images/*.png")}
    assert not trained & forbidden
    view = mm.materialize_view(paths.merged, tmp_path / "view")
    listed = {file_sha256(Path(line)) for line in view.train.read_text().split()}
    assert not listed & forbidden
    expected_excluded = {"cycle": 1, "historical": 1, "both": 2}[where]
    assert report(params)["excluded_images"] == expected_excluded


def test_shards_are_append_only(tmp_path):
    params = make_params(tmp_path, shard_size=4, holdout_fraction=0.2)
    make_cycle(params, "c1", 7, tone=3)
    merge.run(params, cycle="c1")
    first = shard_bytes(params)
    stats = {n: (params.base.paths.merged / "shards" / n).stat().st_mtime_ns for n in first}
    # 8 historical train in 2 shards, 3 val in 1, 7 - 1 holdout = 6 production in 2
    assert len(first) == 5
    for i, cycle in enumerate(["c2", "c3"]):
        make_cycle(params, cycle, 6, tone=4 + i)  # 1 holdout, 5 train in 2 shards
        result = merge.run(params, cycle=cycle)
        assert result.new_shards == (
            f"shards/production-{cycle}-train-00000.tar",
            f"shards/production-{cycle}-train-00001.tar",
        )
    later = shard_bytes(params)
    assert {n: later[n] for n in first} == first
    assert {n: (params.base.paths.merged / "shards" / n).stat().st_mtime_ns for n in first} == stats
    assert len(later) == 9


def test_manifest_records_origin_and_hashes(tmp_path):
    params = make_params(tmp_path, holdout_fraction=0.25)
    paths = params.base.paths
    make_cycle(params, "c1", 4, tone=3)
    result = merge.run(params, cycle="c1")

    table = pq.read_table(paths.merged / mm.MANIFEST)
    assert table.schema.equals(mm.SCHEMA)
    rows = table.to_pylist()
    assert len({r["sha256"] for r in rows}) == len(rows) == 8 + 3 + 4
    sources = {
        "train": paths.train / "images",
        "val": paths.val / "images",
        "c1": paths.labels / "c1" / "images",
    }
    for row in rows:
        folder = sources[row["cycle"] or row["batch"]]
        assert file_sha256(folder / row["file"]) == row["sha256"]
        assert file_sha256(folder.parent / "labels" / f"{row['image_id']}.txt") == row["label_sha256"]
        assert row["n_boxes"] == 1
        if row["split"] == "holdout":
            assert row["shard"] is None and Path(row["holdout_path"]).is_file()
        else:
            shard = paths.merged / row["shard"]
            assert file_md5(shard) == row["shard_md5"]
    assert {(r["source"], r["batch"], r["cycle"]) for r in rows} == {
        ("historical", "train", None),
        ("historical", "val", None),
        ("production", "c1", "c1"),
    }
    payload = report(params)
    assert payload["manifest_md5"] == file_md5(paths.merged / mm.MANIFEST) == result.manifest_md5
    assert {(c["source"], c["cycle"], c["split"]): c["images"] for c in payload["counts"]} == {
        ("historical", "train", "train"): 8,
        ("historical", "val", "val"): 3,
        ("production", "c1", "holdout"): 1,
        ("production", "c1", "train"): 3,
    }
    assert payload["params"]["digest"] == params.digest()
    typed = load_report(paths.reports, "merge")
    assert isinstance(typed, MergeReport)
    assert typed.manifest_md5 == result.manifest_md5 and typed.counts == result.counts


def test_batch_comes_from_the_ledger_then_the_file_name(tmp_path):
    import pyarrow as pa

    params = make_params(tmp_path, holdout_fraction=0.0)
    labels = params.base.paths.labels
    world_named = write_set(labels / "c1", ["2026-11-02_000001"], tone=3)
    other = write_set(labels / "c1", ["img7"], tone=4)
    pq.write_table(
        pa.table({"image_sha256": [file_sha256(other[0])], "batch": ["2026-11-09"], "cycle": ["c1"]}),
        labels / "ledger.parquet",
    )
    merge.run(params)
    batches = {r.image_id: r.batch for r in manifest_rows(params) if r.source == "production"}
    assert batches == {world_named[0].stem: "2026-11-02", "img7": "2026-11-09"}


def test_rerunning_a_cycle_is_a_no_op(tmp_path):
    params = make_params(tmp_path)
    make_cycle(params, "c1", 6, tone=3)
    merge.run(params, cycle="c1")
    manifest = params.base.paths.merged / mm.MANIFEST
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns, shard_bytes(params))
    for again in ({"cycle": "c1"}, {}):
        result = merge.run(params, **again)
        assert (result.new_images, result.new_shards) == (0, ())
        assert (manifest.read_bytes(), manifest.stat().st_mtime_ns, shard_bytes(params)) == before
    assert any("nothing new" in note for note in report(params)["notes"])


def test_a_rebuild_from_the_label_folders_is_byte_identical(tmp_path):
    """What `dvc repro` relies on: the merged folder is a function of the versioned inputs."""
    params = make_params(tmp_path)
    for i, cycle in enumerate(["c1", "c2"]):
        make_cycle(params, cycle, 5, tone=3 + i)
        merge.run(params, cycle=cycle)
    merged = params.base.paths.merged
    before = {p.relative_to(merged): p.read_bytes() for p in merged.rglob("*") if p.is_file()}
    shutil.rmtree(merged)
    merge.run(params)
    assert {p.relative_to(merged): p.read_bytes() for p in merged.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("cycle", ["c9", "missing-2026"], ids=["plain", "dated"])
def test_a_missing_cycle_folder_is_named(tmp_path, cycle):
    params = make_params(tmp_path)
    make_cycle(params, "c1", 2, tone=3)
    with pytest.raises(FileNotFoundError, match=rf"labels/{cycle}: cycle folder not found .*\['c1'\]"):
        merge.run(params, cycle=cycle)


@pytest.mark.parametrize("cycle", ["../c1", "a b"], ids=["traversal", "space"])
def test_a_cycle_name_that_is_not_file_safe_fails(tmp_path, cycle):
    with pytest.raises(MergeError, match="use letters, digits"):
        merge.run(make_params(tmp_path), cycle=cycle)


def test_an_unlabeled_image_fails_naming_the_file(tmp_path):
    params = make_params(tmp_path)
    make_cycle(params, "c1", 2, tone=3)
    (params.base.paths.labels / "c1" / "labels" / "c1_000001.txt").unlink()
    with pytest.raises(MergeError, match=r"c1/labels/c1_000001.txt: label file missing"):
        merge.run(params, cycle="c1")


@pytest.mark.parametrize("merged_before", [False, True], ids=["bootstrap", "after-a-cycle"])
def test_an_empty_cycle_changes_nothing_and_says_so(tmp_path, merged_before):
    params = make_params(tmp_path)
    manifest = params.base.paths.merged / mm.MANIFEST
    if merged_before:
        make_cycle(params, "c1", 4, tone=3)
        merge.run(params, cycle="c1")
    before = manifest.read_bytes() if merged_before else None
    (params.base.paths.labels / "c2" / "images").mkdir(parents=True)
    result = merge.run(params, cycle="c2")
    assert any("cycle c2: no labeled images" in note for note in report(params)["notes"])
    assert result.new_images == 0
    assert result.mode == ("merged" if merged_before else "bootstrap")
    if merged_before:
        assert manifest.read_bytes() == before
    else:
        assert pq.read_metadata(manifest).num_rows == 0
    assert mm.use_merged(params) is merged_before


@pytest.mark.parametrize(
    ("enabled", "cycles", "expected"),
    [
        (True, [], "source"),
        (True, ["c1"], "merged"),
        (False, ["c1"], "source"),
    ],
    ids=["bootstrap-no-labels", "merged", "disabled"],
)
def test_train_picks_the_merged_data_only_when_there_is_some(tmp_path, enabled, cycles, expected):
    params = make_params(tmp_path, enabled=enabled)
    for i, cycle in enumerate(cycles):
        make_cycle(params, cycle, 3, tone=3 + i)
    result = merge.run(params)
    assert result.mode == {"source": "bootstrap" if enabled else "disabled", "merged": "merged"}[expected]
    assert (params.base.paths.holdouts).is_dir() and (params.base.paths.merged).is_dir()  # DVC outputs exist

    root = tmp_path / "models" / "train" / "dataset"
    data = train._dataset_views(params, root)
    train_entry, val_entry = data.train, data.val
    info = json.loads((root / "dataset.json").read_text())
    assert info["mode"] == expected
    if expected == "merged":
        assert train_entry.name == "train.txt" and val_entry.name == "val.txt"
        assert info["manifest_md5"] == file_md5(params.base.paths.merged / mm.MANIFEST)
    else:
        assert train_entry == (root / "train" / "images").absolute()
        assert len(list(train_entry.iterdir())) == 8


def test_the_view_extracts_each_shard_once(tmp_path):
    params = make_params(tmp_path, shard_size=4)
    make_cycle(params, "c1", 5, tone=3)
    merge.run(params, cycle="c1")
    view_dir = tmp_path / "view"
    first = mm.materialize_view(params.base.paths.merged, view_dir)
    assert (first.shards_extracted, first.shards_reused) == (4, 0)  # historical 2 + 1, c1 4 of 5 (1 holdout)
    make_cycle(params, "c2", 3, tone=4)
    merge.run(params, cycle="c2")
    second = mm.materialize_view(params.base.paths.merged, view_dir)
    assert (second.shards_extracted, second.shards_reused) == (1, 4)
    lines = second.train.read_text().split()
    assert all(Path(line).is_file() for line in lines) and len(lines) == second.train_samples


def test_a_corrupt_shard_is_refused(tmp_path):
    params = make_params(tmp_path)
    make_cycle(params, "c1", 3, tone=3)
    merge.run(params, cycle="c1")
    shard = sorted((params.base.paths.merged / "shards").glob("production-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:-512] + b"x" * 512)
    with pytest.raises(ManifestError, match="differs from the manifest"):
        mm.materialize_view(params.base.paths.merged, tmp_path / "view")
