"""RF-DETR end to end on a tiny world: train (Nano, one epoch) -> export ONNX -> evaluate -> register; and the
warm start a cycle hands to training when the champion is of another family.

Real numbers must flow through the same code YOLO uses: the train report's mAP is a float in [0, 1], the per-epoch
metrics reach the epoch table and MLflow, the FP32 ONNX export reproduces the PyTorch checkpoint, OpenVINO reads it,
INT8 targets either build or say why not, and the registered version carries the family and its license.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tasks import cycle, evaluate, export, promote, registry, train, world
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import LicenseException, LicenseParams, Params
from tasks.contracts.license_record import RECORD_TAG, kind_summaries, parse_record
from tasks.contracts.model_version import CHAMPION
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.train import TrainResult
from tasks.contracts.train_files import parent_path, parent_record_path
from tasks.core.hashing import file_sha256
from tasks.models import family, rfdetr
from tasks.models.base import declared_family
from tasks.runtimes.detectors import InferenceSettings, OnnxDetector, load_detector
from tasks.targets.scoring import default_model_path
from tasks.targets.timing import probe_images
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration

QUICK_SPEED = {"runs": 3, "batch_runs": 1, "warmup": 1, "batch": 2, "rounds": 1}


def same_rows(a: np.ndarray, b: np.ndarray, *, atol: float) -> float:
    """Share of the rows of ``a`` (``(B, K, 6)``) that ``b`` has too, in any order, within ``atol`` (same class)."""
    found = 0
    for rows_a, rows_b in zip(a, b, strict=True):
        close = np.abs(rows_a[:, None, :5] - rows_b[None, :, :5]).max(-1) <= atol
        close &= rows_a[:, None, 5] == rows_b[None, :, 5]
        found += int(close.any(1).sum())
    return found / (a.shape[0] * a.shape[1])


def rfdetr_params(root) -> Params:
    data = tiny_params_dict(
        root,
        train={"family": "rfdetr", "model": "rfdetr-nano", "epochs": 1, "batch": 8},
        export={"targets": ["onnx", "onnx_int8", "openvino"], "speed": QUICK_SPEED},
    )
    data["world"].update(train_images=16, val_images=4, golden_images=4)
    data["export"]["calibration"].update(images=8, min_images=4)
    return Params.model_validate(data)


@pytest.mark.slow  # ~3-5 min on 2 CPU cores: rfdetr's one tiny epoch alone takes 1.5-2.5 min
def test_rfdetr_trains_exports_evaluates_and_registers(tmp_path):
    params = rfdetr_params(tmp_path)
    world.run(params)
    start = time.perf_counter()
    trained = train.run(params)
    train_s = time.perf_counter() - start

    checkpoint = default_model_path(params)
    assert declared_family(checkpoint) == "rfdetr"
    assert trained.family == "rfdetr" and trained.license == "Apache-2.0"
    assert 0.0 <= trained.final_metrics["val/mAP50-95"] <= 1.0
    epochs = (params.base.paths.reports / train.EPOCHS_TABLE).read_text().splitlines()
    assert len(epochs) == 2 and "train/total_loss" in epochs[0] and "val/mAP50-95" in epochs[0]
    scratch = params.base.paths.models / "train" / "rfdetr"
    assert not list(scratch.rglob("*.pth")) and not list(scratch.rglob("*.ckpt"))  # rfdetr's own files are gone
    links = list((scratch / "dataset" / "train").glob("*.png"))
    assert links and all(p.is_symlink() for p in links)  # a view, no image copies

    scored = evaluate.run(params)
    golden = scored.sets["golden"].map50_95
    assert isinstance(golden, float) and 0.0 <= golden <= 1.0

    report = export.run(params)
    by_target = {c.target: c for c in report.artifacts}
    onnx = by_target["onnx"]
    assert onnx.status == "built" and onnx.parity is not None and onnx.parity.passed
    assert by_target["openvino"].status == "built"
    assert by_target["onnx_int8"].status in {"built", "failed"}  # built, or refused with its reason
    assert by_target["onnx_int8"].status == "built" or by_target["onnx_int8"].reason

    # ONNX vs the PyTorch checkpoint on the raw (B, K, 6) rows
    settings = InferenceSettings(imgsz=params.base.imgsz)
    family(params)
    probe = probe_images(params)
    torch_rows = load_detector(checkpoint, settings).forward(probe)
    onnx_rows = OnnxDetector(params.base.paths.models / "export" / "model.onnx", settings).forward(probe)
    assert torch_rows.shape == onnx_rows.shape and torch_rows.shape[1:] == (rfdetr.TOP_K, 6)
    assert same_rows(torch_rows, onnx_rows, atol=1e-3) >= 0.99  # top-K may order near-equal scores differently

    # a proprietary product's policy: the RF-DETR version ships (Apache-2.0 code and weights; the vendored GCC
    # runtime covered by a named review, as in params.commercial.yaml) and becomes champion
    gcc = LicenseException(license="GPL-3.0-or-later WITH GCC-exception-3.1", reference="GCC runtime exception, read")
    policy = LicenseParams(policy="commercial", exceptions=(gcc,))
    commercial = params.model_copy(update={"gate": params.gate.model_copy(update={"license": policy})})
    version = registry.run(commercial)
    tags = mlflow_adapter.get_version(params, version.version).tags
    assert tags["model_family"] == "rfdetr"
    assert tags["license.verdict"] == "allowed", tags.get("license.refused")
    kinds = kind_summaries(parse_record(tags[RECORD_TAG], where="test"))
    assert kinds["model_code"].startswith("rfdetr: rfdetr ") and "Apache" in kinds["model_code"]
    assert kinds["weights"] == "trained from scratch here (rfdetr-nano) = Apache-2.0"
    assert promote.run(commercial, version=version.version, decision="promote").action == "promote"
    loaded = load_report(params.base.paths.reports, "train")
    assert loaded.checkpoint_sha256
    print(f"rfdetr smoke: train {train_s:.0f} s, golden mAP50-95 {golden:.4f}")  # README: time per tiny epoch


# ------------------------------------------------------------------ the warm start across families


def register(params: Params, family_name: str, content: bytes) -> str:
    """A registered version of ``family_name`` whose checkpoint holds ``content`` (files stand in for models)."""
    models, images = params.base.paths.models, params.base.paths.train / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "a.png").write_bytes(b"png")
    weights = models / "train" / "best.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(content)
    onnx = models / "export" / "model.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.write_bytes(b"onnx")
    with mlflow_adapter.mlflow_run(params, run_name=f"train-{family_name}") as run_id:
        pass
    trained = TrainResult(
        weights=str(weights),
        family=family_name,
        license="Apache-2.0" if family_name == "rfdetr" else "AGPL-3.0-only",
        base_weights="scratch:test",
        epochs=1,
        final_metrics={},
        mlflow_run_id=run_id,
        wall_s=0.0,
        checkpoint_sha256=file_sha256(weights),
    )
    write_report(params.base.paths.reports, "train", trained, params)
    return registry.run(params).version


def quick_version(params: Params, family_name: str, content: bytes) -> str:
    """A version tagged ``model_family`` whose files are one ``best.pt`` holding ``content`` (no training run)."""
    mlflow_client = mlflow_adapter.client(params)
    name = params.registry.model_name
    if not mlflow_client.search_registered_models(f"name = '{name}'"):
        mlflow_client.create_registered_model(name)
    source = params.base.paths.models / "sources" / content.decode()
    source.mkdir(parents=True)
    (source / "best.pt").write_bytes(content)
    made = mlflow_client.create_model_version(name, source=str(source), tags={"model_family": family_name})
    return str(made.version)


@pytest.mark.parametrize(
    "configured, registered, parent",
    [
        pytest.param("yolo", ["yolo"], "1", id="same-family-champion"),
        pytest.param("rfdetr", ["rfdetr", "yolo"], "1", id="other-family-champion-own-version"),
        pytest.param("rfdetr", ["rfdetr", "rfdetr", "yolo"], "2", id="own-newest-version"),
        pytest.param("yolo", ["yolo", "rfdetr"], "1", id="yolo-after-an-rfdetr-champion"),
        pytest.param("rfdetr", ["yolo"], None, id="none-of-its-family-scratch"),
    ],
)
def test_the_parent_is_of_the_configured_family(tmp_path, configured, registered, parent):
    model = {"yolo": "yolo26n.yaml", "rfdetr": "rfdetr-nano"}[configured]
    params = Params.model_validate(tiny_params_dict(tmp_path, train={"family": configured, "model": model}))
    versions = [quick_version(params, name, f"{name}-{i + 1}".encode()) for i, name in enumerate(registered)]
    mlflow_adapter.set_alias(params, CHAMPION, versions[-1])  # the last registered (of the other family, if any)
    parent_path(params).parent.mkdir(parents=True, exist_ok=True)
    parent_path(params).write_bytes(b"stale parent of an earlier cycle")

    champion = mlflow_adapter.get_alias(params, CHAMPION)
    folder = params.base.paths.models / "champion" / f"v{champion.version}"
    weights = mlflow_adapter.download_weights(params, champion, folder)
    written = cycle.write_family_parent(params, champion, weights, folder)

    record = json.loads(parent_record_path(params).read_text())
    if parent is None:
        assert written is None and not parent_path(params).exists()  # trains from scratch
        assert "version" not in record and "no rfdetr version is registered" in record["reason"]
        return
    assert written == parent_path(params)
    assert record["version"] == parent
    assert parent_path(params).read_bytes() == f"{registered[int(parent) - 1]}-{parent}".encode()
    crossed = registered[-1] != configured
    assert ("reason" in record) is crossed
    if crossed:
        assert f"champion v{versions[-1]} is {registered[-1]}" in record["reason"]


def test_fetch_champion_hands_over_the_family_parent(tmp_path):
    root = tmp_path / "w"
    base = Params.model_validate(tiny_params_dict(root))
    register(base, "rfdetr", b"rfdetr-1")
    mlflow_adapter.set_alias(base, CHAMPION, register(base, "yolo", b"yolo-2"))
    params = Params.model_validate(tiny_params_dict(root, train={"family": "rfdetr", "model": "rfdetr-nano"}))
    files = cycle.fetch_champion(params)
    assert files is not None and files.version == "2" and Path(files.weights).read_bytes() == b"yolo-2"
    assert parent_path(params).read_bytes() == b"rfdetr-1"
