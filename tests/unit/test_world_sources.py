"""Production sources, drift start and benchmark streams of the synthetic world (issue 11)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tasks.config import Params
from tasks.config.world import SourceSpec
from tasks.sim.drift import effective_settings, split_by_share, stream_severities
from tasks.sim.sets import render_set, set_seed
from tasks.sim.stream import StreamBatch, render_stream
from tasks.sim.world import WorldError
from tasks.world import run
from tests.unit.test_world import files_under, mean_of_images, tiny_params

BATCH = "2026-11-02"


def hashes(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files_under(root).items()}


def read_sources(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def image_mean(path: Path) -> float:
    return float(np.asarray(Image.open(path)).mean())


# ---------------------------------------------------------------------------------------------------------------
# Defaults keep the world byte-identical.


def test_explicit_defaults_render_the_same_bytes(tmp_path: Path) -> None:
    implicit = tiny_params(tmp_path / "a")
    explicit = tiny_params(
        tmp_path / "b",
        production={
            "scenario": ["lighting"],
            "batches": 3,
            "images_per_batch": 4,
            "severity_start": 0.0,
            "severity_end": 1.0,
            "drift_start": 0,
            "sources": {"default": {"share": 1.0, "scenario": None, "severity_scale": 1.0}},
        },
    )
    assert implicit.world.production == explicit.world.production
    run(implicit)
    run(explicit)
    assert hashes(tmp_path / "a" / "data") == hashes(tmp_path / "b" / "data")


def test_one_source_batch_equals_the_whole_batch_rendered_at_once(tmp_path: Path) -> None:
    """The images of the default world are what one render_set of the batch gave before sources existed."""
    params = tiny_params(tmp_path / "w")
    result = run(params)
    world = params.world
    for batch, severity in zip(result.batch_ids, (0.0, 0.5, 1.0), strict=True):
        render_set(
            effective_settings(world.source, world.scenarios, ["lighting"], severity),
            n=4,
            classes=params.base.classes,
            image_size=world.image_size,
            seed=set_seed(params.base.seed, f"production/{batch}"),
            prefix=batch,
            images_dir=tmp_path / "ref" / batch / "images",
            labels_dir=tmp_path / "ref" / batch / "labels",
        )
        assert files_under(tmp_path / "ref" / batch / "images") == files_under(
            params.base.paths.production / batch / "images"
        )
        assert files_under(tmp_path / "ref" / batch / "labels") == files_under(
            params.base.paths.oracle / batch / "labels"
        )
        rows = read_sources(params.base.paths.production / batch / "sources.csv")
        assert [r["source"] for r in rows] == ["default"] * 4


# ---------------------------------------------------------------------------------------------------------------
# drift_start.


@pytest.mark.parametrize(
    ("drift_start", "expected"),
    [
        pytest.param(None, [0.0, 0.0, 0.0, 0.0], id="no-drift"),
        pytest.param(0, [0.5, 2 / 3, 5 / 6, 1.0], id="from-the-first"),
        pytest.param(2, [0.0, 0.0, 0.5, 1.0], id="from-the-third"),
        pytest.param(3, [0.0, 0.0, 0.0, 0.5], id="only-the-last"),
    ],
)
def test_stream_severities(drift_start: int | None, expected: list[float]) -> None:
    got = stream_severities(start=0.5, end=1.0, batches=4, drift_start=drift_start)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("drift_start", [-1, 4])
def test_stream_severities_rejects_drift_start_outside(drift_start: int) -> None:
    with pytest.raises(WorldError, match=rf"drift_start = {drift_start} outside \[0, 4\)"):
        stream_severities(start=0.5, end=1.0, batches=4, drift_start=drift_start)


def test_batches_before_drift_start_are_source_domain(tmp_path: Path) -> None:
    late = tiny_params(tmp_path / "late", production={"scenario": ["lighting"], "batches": 3, "drift_start": 2,
                                                      "images_per_batch": 4, "severity_start": 1.0})  # fmt: skip
    clean = tiny_params(tmp_path / "clean", production={"scenario": [], "batches": 3, "images_per_batch": 4})
    run(late)
    run(clean)
    manifest = json.loads((late.base.paths.world / "manifest.json").read_text())
    assert [b["severity"] for b in manifest["batches"]] == [0.0, 0.0, 1.0]
    assert [b["settings"]["brightness"] for b in manifest["batches"]] == [1.0, 1.0, 0.4]
    for batch in ("2026-11-02", "2026-11-03"):  # same seeds, source settings: the same pixels as a drift-free world
        assert files_under(late.base.paths.production / batch) == files_under(clean.base.paths.production / batch)
    drifted = "2026-11-04"
    assert mean_of_images(late.base.paths.production / drifted / "images") < 0.7 * mean_of_images(
        clean.base.paths.production / drifted / "images"
    )


# ---------------------------------------------------------------------------------------------------------------
# Sources.


@pytest.mark.parametrize(
    ("n", "shares", "expected"),
    [
        pytest.param(6, [0.5, 0.5], [3, 3], id="halves"),
        pytest.param(7, [0.5, 0.5], [4, 3], id="tie-goes-to-the-first"),
        pytest.param(10, [0.33, 0.33, 0.34], [3, 3, 4], id="largest-remainder"),
        pytest.param(2, [0.2, 0.8], [0, 2], id="a-source-may-get-none"),
        pytest.param(150, [1.0], [150], id="one-source"),
    ],
)
def test_split_by_share(n: int, shares: list[float], expected: list[int]) -> None:
    assert split_by_share(n, shares) == expected


TWO_SOURCES: dict[str, Any] = {
    "scenario": [],
    "batches": 1,
    "images_per_batch": 6,
    "severity_start": 1.0,
    "sources": {"cam-a": {"share": 0.5}, "cam-b": {"share": 0.5, "scenario": ["lighting"]}},
}


def test_sources_split_the_batch_and_name_every_image(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, production=TWO_SOURCES)
    result = run(params)
    folder = params.base.paths.production / BATCH
    assert sorted(p.name for p in folder.iterdir()) == ["images", "sources.csv"]
    assert (folder / "sources.csv").read_text().splitlines()[0] == "image_id,source"
    rows = read_sources(folder / "sources.csv")
    assert [r["source"] for r in rows] == ["cam-a"] * 3 + ["cam-b"] * 3
    assert [r["image_id"] for r in rows] == sorted(p.stem for p in (folder / "images").glob("*.png"))
    assert result.counts[BATCH] == 6
    assert [p.name for p in params.base.paths.world.rglob(".*")] == []
    manifest = json.loads((params.base.paths.world / "manifest.json").read_text())
    sources = manifest["batches"][0]["sources"]
    assert [(s["name"], s["first"], s["images"], s["scenario"], s["severity"]) for s in sources] == [
        ("cam-a", 0, 3, [], 1.0),
        ("cam-b", 3, 3, ["lighting"], 1.0),
    ]
    assert [s["settings"]["brightness"] for s in sources] == [1.0, 0.4]


def test_a_source_scenario_is_applied_to_its_images_only(tmp_path: Path) -> None:
    """cam-b (lighting) is darker than cam-a (source domain); cam-a's images are those of a drift-free batch."""
    params = tiny_params(tmp_path / "two", production={**TWO_SOURCES, "images_per_batch": 12})
    one_source = {**TWO_SOURCES, "images_per_batch": 12, "sources": {"default": {"share": 1.0}}}
    clean = tiny_params(tmp_path / "clean", production=one_source)
    run(params)
    run(clean)
    images = sorted((params.base.paths.production / BATCH / "images").glob("*.png"))
    clean_images = sorted((clean.base.paths.production / BATCH / "images").glob("*.png"))
    a, b = images[:6], images[6:]
    assert np.mean([image_mean(p) for p in b]) < 0.6 * np.mean([image_mean(p) for p in a])
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in clean_images[:6]]
    assert all(p.read_bytes() != q.read_bytes() for p, q in zip(b, clean_images[6:], strict=True))


@pytest.mark.parametrize(
    ("scale", "darker"), [pytest.param(0.0, False, id="scale-0"), pytest.param(1.0, True, id="scale-1")]
)
def test_severity_scale_multiplies_the_batch_severity(tmp_path: Path, scale: float, darker: bool) -> None:
    sources = {"a": {"share": 0.5, "severity_scale": 0.5}, "b": {"share": 0.5, "severity_scale": scale}}
    stream = {**TWO_SOURCES, "scenario": ["lighting"], "severity_start": 0.8, "sources": sources}
    params = tiny_params(tmp_path, production=stream)
    run(params)
    sources = json.loads((params.base.paths.world / "manifest.json").read_text())["batches"][0]["sources"]
    assert [s["severity"] for s in sources] == [0.4, 0.8 * scale]
    assert sources[0]["settings"]["brightness"] == pytest.approx(1 - 0.6 * 0.4)
    assert (sources[1]["settings"]["brightness"] < 1.0) is darker


@pytest.mark.parametrize(
    ("production", "match"),
    [
        pytest.param({"sources": {"a": {"share": 0.5}, "b": {"share": 0.4}}}, r"production.sources shares sum to 0.9 "
                     r"\(a: 0.5, b: 0.4\): they must sum to 1", id="shares-below-one"),
        pytest.param({"sources": {"a": {"share": 0.7}, "b": {"share": 0.7}}}, r"shares sum to 1.4",
                     id="shares-above-one"),
        pytest.param({"sources": {"a": {"share": 1.0, "scenario": ["fog"]}}},
                     r"production.sources.a.scenario names \['fog'\] not defined under world.scenarios",
                     id="unknown-source-scenario"),
        pytest.param({"batches": 3, "drift_start": 3},
                     r"production.drift_start = 3 must be below production.batches = 3", id="drift-start-too-late"),
        pytest.param({"drift_start": -1}, r"drift_start\n.*greater than or equal to 0", id="drift-start-negative"),
        pytest.param({"sources": {}}, r"production.sources is empty", id="no-sources"),
        pytest.param({"sources": {"cam a,1": {"share": 1.0}}}, r"production.sources names \['cam a,1'\]",
                     id="name-unfit-for-csv"),
        pytest.param({"sources": {"a": {"share": 1.0, "severity_scale": 1.5}}}, r"severity_scale\n.*less than or equal",
                     id="severity-scale-above-one"),
    ],
)  # fmt: skip
def test_invalid_production_names_the_field(tmp_path: Path, production: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_params(tmp_path, production=production)


def test_demo_params_split_two_lines(tmp_path: Path) -> None:
    """params.yaml's demo stream: line-1 and line-2 share every batch; the tiny test world gets 3 + 3 images."""
    from tests.conftest import tiny_params_dict

    params = Params.model_validate(tiny_params_dict(tmp_path))
    sources = params.world.production.sources
    assert list(sources) == ["line-1", "line-2"]
    assert sources["line-2"].scenario is not None and "scale" in sources["line-2"].scenario
    run(params)
    for batch in ("2026-11-02", "2026-11-03"):
        rows = read_sources(params.base.paths.production / batch / "sources.csv")
        assert [r["source"] for r in rows] == ["line-1"] * 3 + ["line-2"] * 3


# ---------------------------------------------------------------------------------------------------------------
# Benchmark streams.


def stream_params(root: Path) -> Params:
    return tiny_params(root / "params")


def render(params: Params, out: Path, **changes: Any) -> list[StreamBatch]:
    kwargs: dict[str, Any] = {
        "scenario": ["lighting"],
        "batches": 4,
        "images_per_batch": 3,
        "drift_start": 2,
        "severity": 1.0,
        "seed_salt": "test/lighting",
    }
    return render_stream(params, out=out, **(kwargs | changes))


def test_stream_drifts_from_drift_start(tmp_path: Path) -> None:
    params = stream_params(tmp_path)
    drifted = render(params, tmp_path / "drift")
    steady = render(params, tmp_path / "steady", drift_start=None)
    assert [b.name for b in drifted] == ["2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]
    assert [b.severity for b in drifted] == [0.0, 0.0, 1.0, 1.0]
    assert [b.severity for b in steady] == [0.0] * 4
    assert drifted[0].date == dt.date(2026, 11, 2) and drifted[0].images == tmp_path / "drift/2026-11-02/images"
    for batch in drifted:
        stems = sorted(p.stem for p in batch.images.glob("*.png"))
        assert stems == sorted(p.stem for p in batch.labels.glob("*.txt")) and len(stems) == 3
        assert [r["image_id"] for r in read_sources(batch.sources_csv)] == stems
    for d, s in zip(drifted, steady, strict=True):
        same = files_under(d.images) == files_under(s.images)
        assert same is (d.severity == 0.0)
        assert files_under(d.labels) == files_under(s.labels)  # lighting moves no object
    assert mean_of_images(drifted[3].images) < 0.7 * mean_of_images(steady[3].images)
    assert [p.name for p in (tmp_path / "drift").rglob(".*")] == []


def test_stream_is_deterministic_by_seed_and_salt(tmp_path: Path) -> None:
    params = stream_params(tmp_path)
    render(params, tmp_path / "a", batches=2, drift_start=1)
    render(params, tmp_path / "b", batches=2, drift_start=1)
    render(params, tmp_path / "c", batches=2, drift_start=1, seed_salt="test/other")
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b") != hashes(tmp_path / "c")


def test_stream_severity_ramp_start_date_and_sources(tmp_path: Path) -> None:
    params = stream_params(tmp_path)
    sources = {"a": SourceSpec(share=0.25), "b": SourceSpec(share=0.75, severity_scale=0.0)}
    got = render(params, tmp_path / "s", severity=(0.5, 1.0), drift_start=1, batches=3, images_per_batch=4,
                 start_date=dt.date(2027, 1, 30), sources=sources)  # fmt: skip
    assert [(b.name, b.severity) for b in got] == [("2027-01-30", 0.0), ("2027-01-31", 0.5), ("2027-02-01", 1.0)]
    assert [r["source"] for r in read_sources(got[0].sources_csv)] == ["a", "b", "b", "b"]


def test_stream_rerun_replaces_batches(tmp_path: Path) -> None:
    params = stream_params(tmp_path)
    render(params, tmp_path / "s", images_per_batch=4)
    render(params, tmp_path / "s", images_per_batch=2)
    assert len(list((tmp_path / "s/2026-11-02/images").glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        pytest.param({"scenario": ["fog"]}, r"'fog' is not defined under world.scenarios", id="unknown-scenario"),
        pytest.param({"drift_start": 4}, r"drift_start = 4 outside \[0, 4\)", id="drift-start-too-late"),
        pytest.param({"severity": 1.2}, r"stream severity 1.2", id="severity-above-one"),
        pytest.param({"severity": (0.5, -0.1)}, r"every value must lie in \[0, 1\]", id="ramp-below-zero"),
        pytest.param({"batches": 0}, r"at least one batch", id="no-batches"),
        pytest.param({"images_per_batch": 0}, r"at least one image", id="no-images"),
        pytest.param({"seed_salt": ""}, r"seed_salt is empty", id="no-salt"),
    ],
)
def test_stream_rejects_before_writing(tmp_path: Path, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(WorldError, match=match):
        render(stream_params(tmp_path), tmp_path / "s", **changes)
    assert not (tmp_path / "s").exists()
