"""Batch prediction logs every image: error rows, sources, input statistics, and a shadow version beside the champion.

The models are tiny real ONNX graphs that return constant detections (built in milliseconds, run by ONNX Runtime);
the registry is a real MLflow SQLite store with two versions whose source folders hold those files. The first
tests call :func:`tasks.predict.predict_batch` directly (no registry), the last ones run the stage end to end.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from tasks import predict
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.batch_sources import SourcesError
from tasks.contracts.deployed import Deployed
from tasks.contracts.model_version import ModelVersionInfo
from tasks.core.image_stats import image_stats
from tasks.runtimes.detectors import InferenceSettings, load_detector
from tests.conftest import tiny_params_dict
from tests.onnx_models import constant_detector, write_conv_stack

pytestmark = pytest.mark.integration

SIZE = 64
BATCH = "2026-11-02"
# (x1, y1, x2, y2, score, class) rows each constant detector returns, in letterboxed input pixels
CHAMPION_ROWS = [[8.0, 8.0, 24.0, 24.0, 0.9, 1.0], [30.0, 30.0, 60.0, 50.0, 0.8, 4.0]]
SHADOW_ROWS = [[8.0, 8.0, 24.0, 24.0, 0.9, 2.0]]


def make_params(root: Path, **predict_section: object) -> Params:
    settings = {"batch_size": 3, "conf": 0.25, **predict_section}
    return Params.model_validate(tiny_params_dict(root, predict=settings))


def write_batch(params: Params, batch: str = BATCH, *, good: int = 5, sources: str | None = None) -> list[Path]:
    """``good`` PNGs (distinct pixels), plus one truncated PNG and one dangling link (a file gone since listing)."""
    images = params.base.paths.production / batch / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(good):
        pixels = np.random.default_rng(i).integers(0, 256, (SIZE, SIZE - 8 * (i % 2), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img_{i}.png")
        paths.append(images / f"img_{i}.png")
    whole = (images / "img_0.png").read_bytes()
    (images / "truncated.png").write_bytes(whole[: len(whole) // 2])
    os.symlink(images / "deleted-since.png", images / "gone.png")
    if sources is not None:
        (images.parent / "sources.csv").write_text(sources)
    return paths


def info(version: str) -> ModelVersionInfo:
    return ModelVersionInfo(name="visionloop-detector", version=version, run_id="", source="", tags={}, aliases=[])


def detector(path: Path, *, imgsz: int = SIZE):
    return load_detector(path, InferenceSettings(imgsz=imgsz, conf=0.25, threads=1))


def log_rows(params: Params) -> list[dict]:
    return prediction_log.read(params.base.paths.predictions).to_pylist()


# --- error rows, sources, statistics (predict_batch, no registry) ------------------------------------------------


def test_every_image_gets_a_row_errors_included(tmp_path: Path) -> None:
    params = make_params(tmp_path)
    good = write_batch(params, sources="image_id,source\nimg_0,cam-a\nimg_1,cam-b\ntruncated,cam-a\n")
    model = detector(constant_detector(tmp_path / "m.onnx", CHAMPION_ROWS))
    result = predict.predict_batch(model, params=params, info=info("1"), alias="champion", batch=BATCH)

    assert (result.images, result.detections, result.errors) == (5, 10, {"decode": 1, "unreadable": 1})
    images = params.base.paths.production / BATCH / "images"
    assert set(result.skipped) == {str(images / "truncated.png"), str(images / "gone.png")}
    assert result.skipped[str(images / "truncated.png")].startswith("decode: ")
    rows = log_rows(params)
    by_image = {r["image_id"]: r for r in rows}
    assert len(rows) == 5 * 2 + 2 and set(by_image) == {
        "img_0",
        "img_1",
        "img_2",
        "img_3",
        "img_4",
        "truncated",
        "gone",
    }

    decode, gone = by_image["truncated"], by_image["gone"]
    truncated_bytes = (images / "truncated.png").read_bytes()
    assert (decode["error"], decode["image_width"], decode["n_detections"]) == ("decode", 0, 0)
    assert decode["image_sha256"] == prediction_log.sha256_file(images / "truncated.png")
    assert len(truncated_bytes) > 0 and decode["source"] == "cam-a"
    assert (gone["error"], gone["image_sha256"], gone["source"]) == (
        "unreadable",
        prediction_log.EMPTY_SHA256,
        "default",
    )
    for row in (decode, gone):
        assert all(row[c] is None for c in ("class_id", "confidence", "x1", *prediction_log.STAT_COLUMNS))

    assert [by_image[f"img_{i}"]["source"] for i in range(5)] == ["cam-a", "cam-b", "default", "default", "default"]
    for i, path in enumerate(good):
        row = by_image[f"img_{i}"]
        stats = image_stats(np.asarray(Image.open(path).convert("RGB")))
        assert row["error"] is None and row["shadow"] is False
        assert (row["image_width"], row["image_height"]) == Image.open(path).size
        assert row["image_sha256"] == prediction_log.sha256_file(path)
        for name, value in stats.as_dict().items():
            assert row[name] == pytest.approx(value, rel=1e-6)


def test_a_model_call_that_raises_gives_inference_rows_and_the_batch_goes_on(tmp_path: Path, caplog) -> None:
    params = make_params(tmp_path)
    write_batch(params)
    # a 64 px graph fed 32 px inputs: ONNX Runtime refuses every chunk
    broken = detector(constant_detector(tmp_path / "m.onnx", CHAMPION_ROWS), imgsz=32)
    with caplog.at_level(logging.WARNING):
        result = predict.predict_batch(broken, params=params, info=info("1"), alias="champion", batch=BATCH)
    assert result.images == 0 and result.errors == {"decode": 1, "inference": 5, "unreadable": 1}
    rows = [r for r in log_rows(params) if r["error"] == "inference"]
    assert len(rows) == 5 and all(r["n_detections"] == 0 and r["class_id"] is None for r in rows)
    assert {(r["image_width"], r["image_height"]) for r in rows} == {(64, 64), (56, 64)}  # decoded: real size
    assert all(r["latency_ms"] >= 0 and r["brightness"] is None for r in rows)
    assert "get inference rows" in caplog.text and "InvalidArgument" in caplog.text


def test_a_chunk_past_the_timeout_gives_timeout_rows(tmp_path: Path) -> None:
    params = make_params(tmp_path, timeout_s=1e-9)  # a nanosecond: shorter than any model call
    write_batch(params)
    # a model slow enough (~0.1 s a chunk) that its worker cannot finish before the caller starts waiting
    model = detector(write_conv_stack(tmp_path / "slow.onnx", 8, imgsz=SIZE, channels=32))
    with ThreadPoolExecutor(max_workers=1) as pool:
        result = predict.predict_batch(model, params=params, info=info("1"), alias="champion", batch=BATCH, pool=pool)
    assert result.errors == {"decode": 1, "timeout": 5, "unreadable": 1}
    assert "predict.timeout_s" in next(why for why in result.skipped.values() if why.startswith("timeout"))
    rows = [r for r in log_rows(params) if r["error"] == "timeout"]
    assert len(rows) == 5 and all(r["latency_ms"] >= 0 for r in rows)


def test_malformed_sources_sidecar_stops_the_batch_naming_file_and_line(tmp_path: Path) -> None:
    params = make_params(tmp_path)
    write_batch(params, sources="image_id,source\nimg_0\n")
    model = detector(constant_detector(tmp_path / "m.onnx", CHAMPION_ROWS))
    with pytest.raises(SourcesError, match=r"sources.csv line 2: expected 'image_id,source'"):
        predict.predict_batch(model, params=params, info=info("1"), alias="champion", batch=BATCH)


def test_shadow_predicts_its_share_in_its_own_part_and_leaves_the_champion_alone(tmp_path: Path) -> None:
    params = make_params(tmp_path)
    write_batch(params, good=12)
    champion = detector(constant_detector(tmp_path / "c.onnx", CHAMPION_ROWS))
    shadow = predict.Shadow(
        detector=detector(constant_detector(tmp_path / "s.onnx", SHADOW_ROWS)),
        info=info("2"),
        alias="challenger",
        deployed=Deployed("onnx", "fp32", tmp_path / "s.onnx"),
        share=0.5,
    )
    alone = predict.predict_batch(champion, params=params, info=info("1"), alias="champion", batch=BATCH)
    timing = ["ts", "latency_ms"]  # the only columns two runs may differ in
    before = prediction_log.read(params.base.paths.predictions).drop_columns(timing)
    with_shadow = predict.predict_batch(
        champion, params=params, info=info("1"), alias="champion", batch=BATCH, shadow=shadow
    )
    table = prediction_log.read(params.base.paths.predictions)
    mine = table.filter(pc.invert(table["shadow"]))
    assert mine.drop_columns(timing).equals(before), "the champion's rows do not change with a shadow"
    assert alone.files == with_shadow.files and alone.images == with_shadow.images

    rows = table.filter(table["shadow"]).to_pylist()
    expected = {
        row["image_sha256"]
        for row in mine.to_pylist()
        if row["error"] is None and predict.shadow_draw(params.base.seed, row["image_sha256"]) < 0.5
    }
    assert 0 < len(expected) < 12 and {r["image_sha256"] for r in rows} == expected
    assert with_shadow.shadow_images == len(expected) and len(with_shadow.shadow_files) == 1
    assert with_shadow.shadow_files[0].endswith(f"batch={BATCH}__model=visionloop-detector-v2__shadow.parquet")
    assert {(r["model_version"], r["model_alias"], r["class_id"]) for r in rows} == {("2", "challenger", 2)}
    assert all(r["brightness"] is not None for r in rows)  # same pixels, same statistics as the champion's rows
    # the shadow's rows never count as version 2 having predicted the batch
    assert {b.model_version for b in prediction_log.logged_batches(params.base.paths.predictions)} == {"1"}


@pytest.mark.parametrize(
    ("seed", "share", "expected_share"),
    [pytest.param(0, 0.0, 0.0, id="off"), pytest.param(0, 1.0, 1.0, id="all"), pytest.param(7, 0.1, 0.1, id="ten")],
)
def test_shadow_draw_is_a_stable_uniform_share(seed: int, share: float, expected_share: float) -> None:
    hashes = [f"{i:064x}" for i in range(4000)]
    draws = [predict.shadow_draw(seed, h) for h in hashes]
    assert draws == [predict.shadow_draw(seed, h) for h in hashes]  # a pure function of (seed, hash)
    assert np.mean([d < share for d in draws]) == pytest.approx(expected_share, abs=0.02)
    assert draws != [predict.shadow_draw(seed + 1, h) for h in hashes]


# --- the stage end to end, with a real MLflow registry -----------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Params:
    """A registry with version 1 (champion) and version 2, each a constant ONNX detector in its source folder."""
    root = tmp_path_factory.mktemp("predict-shadow")
    params = make_params(root)
    client = mlflow_adapter.client(params)
    client.create_registered_model(params.registry.model_name)
    for version, rows in (("1", CHAMPION_ROWS), ("2", SHADOW_ROWS)):
        source = constant_detector(root / "sources" / f"v{version}" / "model.onnx", rows).parent
        assert str(client.create_model_version(params.registry.model_name, source=str(source)).version) == version
    mlflow_adapter.set_alias(params, "champion", "1")
    return params


def stage_params(registry: Params, tmp_path: Path, **predict_section: object) -> Params:
    """The registry's store with a fresh production folder and log under ``tmp_path``."""
    data = tiny_params_dict(tmp_path, predict={"batch_size": 3, **predict_section})
    data["registry"] = registry.registry.model_dump(mode="json")
    data["base"]["paths"]["models"] = str(registry.base.paths.models)  # one download cache
    return Params.model_validate(data)


def test_stage_runs_the_shadow_alias_and_the_new_champion_predicts_in_full(registry, tmp_path, caplog) -> None:
    params = stage_params(registry, tmp_path, shadow={"alias": "challenger", "share": 0.5})
    write_batch(params, good=8)
    mlflow_adapter.set_alias(params, "challenger", "2")
    try:
        report = predict.run(params)
    finally:
        mlflow_adapter.delete_alias(params, "challenger")
    assert (report.model_version, report.batches[0].errors) == ("1", {"decode": 1, "unreadable": 1})
    assert report.shadow is not None
    assert {k: report.shadow[k] for k in ("alias", "version", "target", "share")} == {
        "alias": "challenger", "version": "2", "target": "onnx", "share": 0.5,
    }  # fmt: skip
    assert report.shadow["images"] == report.batches[0].shadow_images > 0
    saved = json.loads((params.base.paths.reports / "predict.json").read_text())
    assert saved["shadow"]["version"] == "2" and saved["batches"][0]["errors"] == {"decode": 1, "unreadable": 1}

    # version 2 only shadowed the batch: once champion, it still has the batch to predict, and predicts all of it
    assert predict.pending_batches(params, mlflow_adapter.get_version(params, "2")) == [BATCH]
    assert predict.pending_batches(params, mlflow_adapter.get_version(params, "1")) == []
    mlflow_adapter.set_alias(params, "champion", "2")
    try:
        with caplog.at_level(logging.INFO):
            second = predict.run(params)
    finally:
        mlflow_adapter.set_alias(params, "champion", "1")
    assert second.model_version == "2" and second.batches[0].images == 8 and second.shadow is None
    assert "'challenger' names no version" in caplog.text  # absent alias: said once, the run goes on
    table = prediction_log.read(params.base.paths.predictions)
    v2 = table.filter(pc.equal(table["model_version"], "2"))
    counts = pc.value_counts(v2["shadow"]).to_pylist()
    assert {c["values"]: c["counts"] for c in counts} == {True: report.shadow["images"], False: 10}


@pytest.mark.parametrize(
    ("alias", "share", "why"),
    [
        pytest.param("challenger", 0.5, "'challenger' names no version", id="absent-alias"),
        pytest.param("1", 0.5, "is the predicting version v1 itself", id="the-champions-own-version"),
        pytest.param("2", 0.0, None, id="share-0-is-off"),
    ],
)
def test_no_shadow_when_it_names_nothing_else(registry, tmp_path, caplog, alias, share, why) -> None:
    params = stage_params(registry, tmp_path, shadow={"alias": alias, "share": share})
    write_batch(params, good=2)
    with caplog.at_level(logging.INFO):
        report = predict.run(params)
    assert report.shadow is None and report.batches[0].shadow_images == 0
    table = prediction_log.read(params.base.paths.predictions)
    assert not any(table["shadow"].to_pylist()) and set(table["model_version"].to_pylist()) == {"1"}
    if why is not None:
        assert caplog.text.count(why) == 1


def test_shadow_by_version_number(registry, tmp_path) -> None:
    params = stage_params(registry, tmp_path, shadow={"alias": "2", "share": 1.0})
    write_batch(params, good=3)
    report = predict.run(params)
    assert report.shadow is not None and report.shadow["images"] == 3
    rows = prediction_log.read(params.base.paths.predictions)
    shadow = rows.filter(rows["shadow"])
    assert set(shadow["model_alias"].to_pylist()) == {"2"} and shadow.num_rows == 3
    assert pa.compute.all(pc.is_null(shadow["error"])).as_py()
