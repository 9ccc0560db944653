"""The synthetic world: determinism, label validity, oracle separation, drift semantics, atomic output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tasks import world
from tasks.config import Params, RenderSettings, ScenarioOverride
from tasks.sim import sets
from tasks.sim import world as sim
from tasks.sim.drift import effective_settings
from tasks.sim.sets import render_set
from tasks.sim.world import WorldError
from tasks.world import run

CLASSES = ["circle", "triangle", "square", "star", "cross", "ring"]
SIZE = (64, 64)


def tiny_params(root: Path, *, seed: int = 3, **world_changes: Any) -> Params:
    """A 64 px world under ``root``: 12 train, 4 val, 6 golden, 3 production batches of 4 images."""
    sections: dict[str, Any] = {
        "base": {
            "seed": seed,
            "classes": CLASSES,
            "paths": {
                name: str(root / rel)
                for name, rel in {
                    "world": "data/world",
                    "train": "data/world/historical/train",
                    "val": "data/world/historical/val",
                    "golden": "data/world/golden",
                    "production": "data/world/production",
                    "oracle": "data/world/oracle",
                    "reports": "reports",
                }.items()
            },
        },
        "world": {
            "image_size": list(SIZE),
            "train_images": 12,
            "val_images": 4,
            "golden_images": 6,
            "source": {"objects_per_image": [1, 4], "object_scale": [0.2, 0.4], "clutter": [0, 2]},
            "scenarios": {
                "lighting": {"brightness": 0.4, "color_cast": [1.0, 0.9, 0.6]},
                "blur": {"blur_sigma": 1.5, "motion_blur": 5},
                "background": {"backgrounds": ["noise", "blotches"], "clutter": [3, 6]},
            },
            "production": {
                "scenario": ["lighting"],
                "batches": 3,
                "images_per_batch": 4,
                "severity_start": 0.0,
                "severity_end": 1.0,
            },
        },
    }
    sections["world"].update(world_changes)
    return Params.model_validate(sections)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_labels(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines()]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def mean_of_images(folder: Path) -> float:
    return float(np.mean([np.asarray(Image.open(p)).mean() for p in sorted(folder.glob("*.png"))]))


@pytest.fixture
def params(tmp_path: Path) -> Params:
    return tiny_params(tmp_path / "a")


@pytest.fixture
def rendered(params: Params) -> world.WorldResult:
    return run(params)


# ---------------------------------------------------------------------------------------------------------------
# Determinism and independence of seed streams.


def test_same_params_give_identical_bytes(tmp_path: Path, rendered: world.WorldResult) -> None:
    again = run(tiny_params(tmp_path / "b"))
    first, second = files_under(tmp_path / "a" / "data"), files_under(tmp_path / "b" / "data")
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    assert again.counts == rendered.counts


@pytest.mark.parametrize(
    ("change", "golden_changes"),
    [
        pytest.param({"train_images": 5}, False, id="train-size-leaves-golden"),
        pytest.param({"production": {"batches": 1, "images_per_batch": 2}}, False, id="production-leaves-golden"),
        pytest.param({"source": {"objects_per_image": [2, 2]}}, True, id="source-settings-change-golden"),
    ],
)
def test_golden_has_its_own_seed_stream(
    tmp_path: Path, rendered: world.WorldResult, change: dict[str, Any], golden_changes: bool
) -> None:
    run(tiny_params(tmp_path / "b", **change))
    golden_a = files_under(tmp_path / "a" / "data/world/golden")
    golden_b = files_under(tmp_path / "b" / "data/world/golden")
    assert (golden_a != golden_b) is golden_changes


def test_different_base_seed_changes_every_set(tmp_path: Path, rendered: world.WorldResult) -> None:
    run(tiny_params(tmp_path / "b", seed=4))
    a, b = files_under(tmp_path / "a" / "data"), files_under(tmp_path / "b" / "data")
    images = [name for name in a if name.endswith(".png")]
    assert images and all(a[name] != b[name] for name in images)


# ---------------------------------------------------------------------------------------------------------------
# Layout and labels.


def test_layout_counts_and_unique_names(params: Params, rendered: world.WorldResult) -> None:
    paths = params.base.paths
    assert rendered.counts == {"train": 12, "val": 4, "golden": 6, "2026-11-02": 4, "2026-11-03": 4, "2026-11-04": 4}
    assert rendered.batch_ids == ("2026-11-02", "2026-11-03", "2026-11-04")
    stems = [p.stem for p in paths.world.rglob("*.png")]
    assert len(stems) == len(set(stems)) == 12 + 4 + 6 + 3 * 4
    for root in (paths.train, paths.val, paths.golden):
        images = {p.stem for p in (root / "images").glob("*.png")}
        assert images == {p.stem for p in (root / "labels").glob("*.txt")}
    with Image.open(paths.train / "images/train_000000.png") as img:
        assert (img.mode, img.size) == ("RGB", SIZE)
    leftovers = [p.name for p in paths.world.rglob(".*")]
    assert leftovers == [], "staging folders must be gone after a run"


@pytest.mark.parametrize("set_name", ["train", "val", "golden", "oracle"])
def test_labels_are_valid_yolo(params: Params, rendered: world.WorldResult, set_name: str) -> None:
    label_files = sorted(getattr(params.base.paths, set_name).rglob("*.txt"))
    assert label_files
    for path in label_files:
        text = path.read_text()
        rows = read_labels(path)
        if text:
            assert all(len(line.split()[1]) == len("0.123456") for line in text.splitlines()), "6 decimals"
        cls, cx, cy, w, h = rows.T
        assert np.all(cls == np.round(cls)) and np.all((cls >= 0) & (cls < len(CLASSES))), path
        assert np.all((w > 0) & (h > 0)), path
        assert np.all(cx - w / 2 >= -1e-6) and np.all(cx + w / 2 <= 1 + 1e-6), path
        assert np.all(cy - h / 2 >= -1e-6) and np.all(cy + h / 2 <= 1 + 1e-6), path


@pytest.mark.parametrize(
    ("objects", "expect_empty"),
    [
        pytest.param((0, 0), True, id="no-objects-empty-files"),
        pytest.param((3, 3), False, id="three-objects"),
    ],
)
def test_empty_images_get_empty_label_files(tmp_path: Path, objects: tuple[int, int], expect_empty: bool) -> None:
    settings = RenderSettings(objects_per_image=objects, occlusion=0.0)
    summary = render_set(
        settings,
        n=4,
        classes=CLASSES,
        image_size=SIZE,
        seed=1,
        prefix="t",
        images_dir=tmp_path / "images",
        labels_dir=tmp_path / "labels",
    )
    labels = sorted((tmp_path / "labels").glob("*.txt"))
    assert len(labels) == 4 == summary.images
    assert all((p.stat().st_size == 0) is expect_empty for p in labels)
    assert (summary.empty_images == 4) is expect_empty
    assert summary.boxes == sum(summary.boxes_per_class.values())


def test_render_set_of_zero_images_makes_empty_folders(tmp_path: Path) -> None:
    summary = render_set(
        RenderSettings(),
        n=0,
        classes=CLASSES,
        image_size=SIZE,
        seed=1,
        prefix="t",
        images_dir=tmp_path / "images",
        labels_dir=tmp_path / "labels",
    )
    assert summary.images == summary.boxes == 0
    assert list((tmp_path / "images").iterdir()) == list((tmp_path / "labels").iterdir()) == []


def test_boxes_are_tight_around_visible_pixels() -> None:
    """One object on a plain, noise-free background: the box is exactly where the pixels changed."""
    settings = RenderSettings(objects_per_image=(1, 1), backgrounds=["plain"], noise_std=0.0, occlusion=0.0)
    for index in range(5):
        scene = sim.render_scene(
            settings, classes=["square"], image_size=SIZE, rng=np.random.default_rng(sets.image_seed(9, index))
        )
        changed = np.any(scene.image != scene.image[0, 0], axis=2)  # corners stay background for these sizes
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        x1, y1, x2, y2 = scene.boxes_xyxy[0]
        # anti-aliased edge pixels below 50 % coverage may widen the changed area by one pixel
        assert abs(x1 - cols[0]) <= 1 and abs(x2 - (cols[-1] + 1)) <= 1
        assert abs(y1 - rows[0]) <= 1 and abs(y2 - (rows[-1] + 1)) <= 1


def test_hidden_objects_are_dropped_from_labels() -> None:
    """With full occlusion pressure some objects end up mostly hidden; they are counted, not labeled."""
    settings = RenderSettings(objects_per_image=(6, 6), object_scale=(0.5, 0.6), occlusion=1.0)
    dropped = labeled = 0
    for index in range(10):
        scene = sim.render_scene(
            settings, classes=CLASSES, image_size=SIZE, rng=np.random.default_rng(sets.image_seed(2, index))
        )
        dropped += scene.dropped
        labeled += len(scene.class_id)
    assert dropped > 0 and labeled + dropped == 60


@pytest.mark.parametrize(
    ("weights", "allowed"),
    [
        pytest.param([0, 0, 1, 0, 0, 0], {2}, id="only-square"),
        pytest.param([1, 0, 0, 0, 0, 1], {0, 5}, id="circle-and-ring"),
    ],
)
def test_class_weights_pick_the_classes(weights: list[float], allowed: set[int]) -> None:
    settings = RenderSettings(objects_per_image=(3, 3), class_weights=weights, occlusion=0.0)
    seen: set[int] = set()
    for index in range(6):
        rng = np.random.default_rng(sets.image_seed(5, index))
        seen |= set(sim.render_scene(settings, classes=CLASSES, image_size=SIZE, rng=rng).class_id.tolist())
    assert seen == allowed


# ---------------------------------------------------------------------------------------------------------------
# Production stream and oracle.


def test_production_ground_truth_only_in_oracle(params: Params, rendered: world.WorldResult) -> None:
    paths = params.base.paths
    assert list(paths.production.rglob("*.txt")) == []
    assert list(paths.oracle.rglob("*.png")) == []
    for batch in rendered.batch_ids:
        images = {p.stem for p in (paths.production / batch / "images").glob("*.png")}
        labels = {p.stem for p in (paths.oracle / batch / "labels").glob("*.txt")}
        assert images == labels and len(images) == 4
        assert all(stem.startswith(f"{batch}_") for stem in images)
        assert sorted(p.name for p in (paths.production / batch).iterdir()) == ["images", "sources.csv"]


def test_severity_ramps_across_batches(params: Params, rendered: world.WorldResult) -> None:
    manifest = json.loads(rendered.manifest.read_text()) if rendered.manifest else {}
    batches = manifest["batches"]
    assert [b["severity"] for b in batches] == [0.0, 0.5, 1.0]
    assert [b["settings"]["brightness"] for b in batches] == [1.0, 0.7, 0.4]
    assert all(b["scenario"] == ["lighting"] and b["images"] == 4 for b in batches)
    assert [b["id"] for b in batches] == [b["date"] for b in batches] == list(rendered.batch_ids)
    means = [mean_of_images(params.base.paths.production / b["id"] / "images") for b in batches]
    assert means[0] > means[1] > means[2]


def test_manifest_and_report(params: Params, rendered: world.WorldResult) -> None:
    manifest = json.loads((params.base.paths.world / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["classes"] == CLASSES
    assert manifest["counts"] == rendered.counts
    assert str(params.base.paths.world) not in json.dumps(manifest), "no machine paths: the manifest is reproducible"
    report = json.loads((params.base.paths.reports / "world.json").read_text())
    assert report["counts"] == rendered.counts and report["wall_time_s"] >= 0
    for set_name in ("train", "golden", "2026-11-04"):
        assert set(report["boxes_per_class"][set_name]) == set(CLASSES)
        label_rows = sum(len(read_labels(p)) for p in Path(params.base.paths.world).rglob(f"{set_name}_*.txt"))
        assert sum(report["boxes_per_class"][set_name].values()) == label_rows


# ---------------------------------------------------------------------------------------------------------------
# Drift semantics.

SOURCE = RenderSettings(object_scale=(0.2, 0.4), class_weights=None, clutter=(0, 2), motion_blur=0)
SCENARIOS = {
    "lighting": ScenarioOverride(brightness=0.4, color_cast=(1.0, 0.8, 0.6)),
    "dim": ScenarioOverride(brightness=0.6, noise_std=10.0),
    "scale": ScenarioOverride(object_scale=(0.06, 0.1), motion_blur=9),
    "rare": ScenarioOverride(class_weights=[1, 1, 1, 1, 1, 3]),
    "bg": ScenarioOverride(backgrounds=["noise", "blotches"], clutter=(4, 8)),
}


@pytest.mark.parametrize(
    ("names", "severity", "expected"),
    [
        pytest.param(["lighting"], 0.0, {}, id="severity-0-is-source"),
        pytest.param([], 0.7, {}, id="no-scenario-is-source"),
        pytest.param(["lighting"], 1.0, {"brightness": 0.4, "color_cast": (1.0, 0.8, 0.6)}, id="severity-1-is-target"),
        pytest.param(["lighting"], 0.5, {"brightness": 0.7, "color_cast": (1.0, 0.9, 0.8)}, id="half-is-midway"),
        pytest.param(
            ["scale"], 0.5, {"object_scale": (0.13, 0.25), "motion_blur": 5}, id="tuples-and-rounded-integers"
        ),
        pytest.param(["rare"], 0.5, {"class_weights": [1, 1, 1, 1, 1, 2]}, id="class-weights-from-uniform"),
        pytest.param(
            ["lighting", "dim"], 1.0, {"brightness": 0.6, "color_cast": (1.0, 0.8, 0.6), "noise_std": 10.0},
            id="combination-later-wins",
        ),
        pytest.param(
            ["dim", "lighting"], 0.5, {"brightness": 0.7, "color_cast": (1.0, 0.9, 0.8), "noise_std": 7.0},
            id="combination-order-matters",
        ),
        pytest.param(["bg"], 1.0, {"backgrounds": ["noise", "blotches"], "clutter": (4, 8)}, id="backgrounds-switch"),
        pytest.param(
            ["bg"], 0.25,
            {
                "backgrounds": ["smooth", "stripes", "checker", "noise", "blotches"],
                "background_weights": [0.25, 0.25, 0.25, 0.125, 0.125],
                "clutter": (1, 4),
            },
            id="backgrounds-mix-by-severity",
        ),
    ],
)  # fmt: skip
def test_effective_settings(names: list[str], severity: float, expected: dict[str, Any]) -> None:
    got = effective_settings(SOURCE, SCENARIOS, names, severity)
    assert got.model_dump() == {**SOURCE.model_dump(), **expected}


@pytest.mark.parametrize(
    ("names", "severity", "match"),
    [
        pytest.param(["fog"], 0.5, r"'fog' is not defined under world.scenarios", id="unknown-scenario"),
        pytest.param(["lighting"], 1.5, r"severity 1.5 outside \[0, 1\]", id="severity-above-one"),
        pytest.param(["lighting"], -0.1, r"outside \[0, 1\]", id="severity-negative"),
    ],
)
def test_effective_settings_rejects(names: list[str], severity: float, match: str) -> None:
    with pytest.raises(WorldError, match=match):
        effective_settings(SOURCE, SCENARIOS, names, severity)


@pytest.mark.parametrize(
    ("scenario", "darker"),
    [
        pytest.param(ScenarioOverride(brightness=0.4), True, id="lighting-darkens"),
        pytest.param(ScenarioOverride(brightness=1.0), False, id="no-change-same-pixels"),
    ],
)
def test_drift_changes_pixels(scenario: ScenarioOverride, darker: bool) -> None:
    source = RenderSettings()
    drifted = effective_settings(source, {"s": scenario}, ["s"], 1.0)
    means = []
    for settings in (source, drifted):
        images = [
            sim.render_scene(
                settings, classes=CLASSES, image_size=SIZE, rng=np.random.default_rng(sets.image_seed(7, i))
            ).image
            for i in range(6)
        ]
        means.append(float(np.mean(images)))
    if darker:
        assert means[1] < 0.55 * means[0]
    else:
        assert means[1] == means[0]


@pytest.mark.parametrize("scenario", ["blur", "background"])
def test_other_scenarios_change_pixels(tmp_path: Path, scenario: str) -> None:
    """Every scenario changes the batch it drives, compared with a drift-free batch from the same seeds."""
    clean = run(tiny_params(tmp_path / "clean", production={"scenario": [], "batches": 1, "severity_start": 1.0}))
    drift = run(
        tiny_params(tmp_path / "drift", production={"scenario": [scenario], "batches": 1, "severity_start": 1.0})
    )
    batch = clean.batch_ids[0]
    a = files_under(clean.sets["production"] / batch / "images")
    b = files_under(drift.sets["production"] / batch / "images")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


# ---------------------------------------------------------------------------------------------------------------
# Errors and the disabled world.


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        pytest.param(["circle", "blob"], r"no shape drawer for \['blob'\]", id="unknown-shape"),
        pytest.param(["Circle"], r"\['Circle'\]", id="case-matters"),
    ],
)
def test_unknown_shape_is_an_error(tmp_path: Path, classes: list[str], match: str) -> None:
    with pytest.raises(WorldError, match=match):
        render_set(
            RenderSettings(),
            n=1,
            classes=classes,
            image_size=SIZE,
            seed=0,
            prefix="x",
            images_dir=tmp_path / "i",
            labels_dir=tmp_path / "l",
        )


def test_unknown_background_fails_before_anything_is_written(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, scenarios={"odd": {"backgrounds": ["marble"]}}, production={"scenario": ["odd"]})
    with pytest.raises(WorldError, match=r"world.scenarios.odd.backgrounds: unknown background kinds \['marble'\]"):
        run(params)
    assert not params.base.paths.world.exists()


def test_rerun_replaces_output_and_crash_keeps_old(
    tmp_path: Path, params: Params, rendered: world.WorldResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = params.base.paths
    smaller = tiny_params(tmp_path / "a", train_images=3, production={"batches": 1, "images_per_batch": 2})
    run(smaller)
    assert len(list((paths.train / "images").glob("*.png"))) == 3
    assert sorted(p.name for p in paths.production.iterdir()) == ["2026-11-02"], "stale batches are removed"
    before = files_under(paths.world)

    calls = {"n": 0}
    real = sim.render_scene

    def crash_on_third(*args: Any, **kwargs: Any) -> sim.Scene:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(sets, "render_scene", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_params(tmp_path / "a", train_images=10))
    assert files_under(paths.world) == before
    assert [p.name for p in paths.world.rglob(".*")] == []


@pytest.mark.parametrize("missing", ["train", "val", "golden"])
def test_disabled_world_checks_folders(tmp_path: Path, missing: str) -> None:
    params = tiny_params(tmp_path, enabled=False)
    for name in ("train", "val", "golden"):
        if name != missing:
            for sub in ("images", "labels"):
                (getattr(params.base.paths, name) / sub).mkdir(parents=True)
    with pytest.raises(WorldError, match=rf"{missing}/images does not exist.*base.paths.{missing}"):
        run(params)


def test_disabled_world_renders_nothing(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, enabled=False)
    for name in ("train", "val", "golden"):
        for sub in ("images", "labels"):
            (getattr(params.base.paths, name) / sub).mkdir(parents=True)
    (params.base.paths.train / "images" / "mine.png").write_bytes(b"")
    (params.base.paths.production / "2026-01-05" / "images").mkdir(parents=True)
    result = run(params)
    assert not result.rendered and result.manifest is None
    assert result.counts == {"train": 1, "val": 0, "golden": 0, "2026-01-05": 0}
    assert result.batch_ids == ("2026-01-05",)
    assert not (params.base.paths.world / "manifest.json").exists()


def test_main_reports_a_bad_setting_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from tasks.config import load_params

    data = tiny_params(tmp_path).model_dump(mode="json")
    data["world"]["enabled"] = False
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data))
    assert load_params(params_file).world.enabled is False
    with pytest.raises(SystemExit) as exited:
        world.main(["--params", str(params_file)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("world: ") and "world.enabled is false" in err and "Traceback" not in err


def test_report_reads_back_typed(params: Params, rendered: world.WorldResult) -> None:
    from tasks.contracts.reports import load_params_stamp, load_report

    report = load_report(params.base.paths.reports, "world")
    assert report.counts == rendered.counts and report.params_digest == params.digest()
    assert (load_params_stamp(params.base.paths.reports, "world") or {})["digest"] == params.digest()
