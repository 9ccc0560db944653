"""The license record on a real MLflow store: written by the registry stage, judged by the promote stage.

The candidate is a real ONNX model (a constant detector), so the record's inference path is probed for real; the
model code is the installed Ultralytics (AGPL-3.0), whose refusal under ``commercial`` these tests show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tasks import promote, registry
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.license_record import RECORD_TAG, kind_summaries, parse_record
from tasks.contracts.reports import write_report
from tasks.contracts.reports.train import TrainResult
from tasks.contracts.train_files import dataset_record_path
from tasks.io import write_json_atomic
from tests.conftest import tiny_params_dict
from tests.onnx_models import constant_detector

# ~5 s a test (a registration, a clean-interpreter probe, MLflow): the default suite is at its 15-minute budget, so
# these run in CI's slow part (make test-slow-reliability); the gate's own table tests stay in the default suite
pytestmark = [pytest.mark.integration, pytest.mark.slow]

GCC = "GPL-3.0-or-later WITH GCC-exception-3.1"
ENTERPRISE = {"license": "AGPL-*", "reference": "Ultralytics Enterprise, contract T-1"}
GCC_REVIEW = {"license": GCC, "reference": "GCC Runtime Library Exception 3.1, reviewed T-2"}


def params_with(tmp_path: Path, **license_: Any) -> Params:
    data = tiny_params_dict(tmp_path)
    data.setdefault("gate", {})["license"] = license_
    return Params.model_validate(data)


def trained(params: Params, *, base_weights: str = "scratch:yolo26n.yaml", sha: str | None = None) -> Params:
    """A trained and exported candidate as the registry stage finds it: a real ONNX file, a training run."""
    paths = params.base.paths
    (paths.train / "images").mkdir(parents=True, exist_ok=True)  # the lineage hashes the training set
    (paths.train / "images" / "a.png").write_bytes(b"png")
    weights = paths.models / "train" / "best.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"checkpoint")
    onnx = paths.models / "export" / "model.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    constant_detector(onnx, [[4.0, 4.0, 20.0, 20.0, 0.9, 0.0]], imgsz=params.base.imgsz)
    write_json_atomic(dataset_record_path(params), {"mode": "merged", "sources": {"historical": 40, "production": 8}})
    with mlflow_adapter.mlflow_run(params, run_name="train-test") as run_id:
        pass
    report = TrainResult(
        weights=str(weights),
        family="yolo",
        license="AGPL-3.0-only",
        base_weights=base_weights,
        epochs=1,
        final_metrics={},
        mlflow_run_id=run_id,
        wall_s=0.0,
        base_weights_sha256=sha,
    )
    write_report(paths.reports, "train", report, params)
    return params


def stock_tags(params: Params, version: str) -> dict[str, str]:
    """The version's tags as the stock MLflow client (and so the registry UI) reads them."""
    client = MlflowClient(tracking_uri=params.registry.tracking_uri)
    return dict(client.get_model_version(params.registry.model_name, version).tags)


def test_the_version_carries_its_record_and_the_obligations(tmp_path):
    params = trained(params_with(tmp_path))
    info = registry.run(params)
    tags = stock_tags(params, info.version)
    record = parse_record(tags[RECORD_TAG], where="test")
    kinds = {c.kind for c in record.components}
    assert kinds == {"model_code", "weights", "data", "runtime", "package", "bundled"}
    summary = kind_summaries(record)  # the record is one tag: no tag per kind (one line each in the UI's table)
    assert not {f"license.{kind}" for kind in kinds} & set(tags)
    assert summary["model_code"].startswith("yolo: ultralytics ")
    assert "AGPL" in summary["model_code"]
    assert summary["weights"] == "trained from scratch here (yolo26n.yaml) = AGPL-3.0-only"
    assert summary["data"] == "historical (40 images) = CC0-1.0; production (8 images) = CC0-1.0"
    assert summary["runtime"].startswith("onnxruntime ") and summary["runtime"].endswith("= MIT License")
    assert "FFmpeg in opencv-python" in summary["bundled"]
    # open-source: nothing refused, every obligation shown (AGPL's source offer, LGPL's relinking for FFmpeg)
    assert (tags["license.policy"], tags["license.verdict"]) == ("open-source", "allowed")
    assert "AGPL: offer the service's complete source" in tags["license.obligations"]
    assert "LGPL: let users relink" in tags["license.obligations"]
    assert "license.refused" not in tags
    assert promote.run(params, version=info.version, decision="promote").action == "promote"


def test_commercial_refuses_the_agpl_model_code_and_says_which_component(tmp_path):
    params = trained(params_with(tmp_path, policy="commercial"))
    info = registry.run(params)
    tags = stock_tags(params, info.version)
    assert tags["license.verdict"] == "refused"
    assert "yolo: ultralytics" in tags["license.refused"] and "AGPL-3.0" in tags["license.refused"]
    result = promote.run(params, version=info.version, decision="promote", reasons=["gate passed"])
    assert result.action == "reject" and result.moves == {}
    why = result.records[-1].why
    assert why.startswith("license gate (commercial): ") and "yolo: ultralytics" in why and "[AGPL]" in why
    assert "GCC runtime in numpy" in why  # the vendored GCC runtime: a linking exception needs a person's reading
    assert mlflow_adapter.find_alias(params, "champion") is None
    trail = promote.read_audit(params)
    assert [(r.action, r.to_version) for r in trail] == [("reject", info.version)]
    assert "yolo: ultralytics" in trail[-1].why
    stored = stock_tags(params, info.version)
    assert stored["rejected"] == "true" and "AGPL" in stored["reject_reasons"]


def test_commercial_with_the_agreements_it_holds_promotes_and_lists_them(tmp_path):
    params = trained(params_with(tmp_path, policy="commercial", exceptions=[ENTERPRISE, GCC_REVIEW]))
    info = registry.run(params)
    tags = stock_tags(params, info.version)
    assert tags["license.verdict"] == "allowed", tags.get("license.refused")
    assert "under Ultralytics Enterprise, contract T-1" in tags["license.excepted"]
    assert "LGPL: let users relink" in tags["license.obligations"]  # LGPL passes with its obligation
    assert promote.run(params, version=info.version, decision="promote").action == "promote"


def test_a_policy_changed_after_registration_applies_at_promotion_and_rollback(tmp_path):
    open_source = trained(params_with(tmp_path))
    first = registry.run(open_source)
    assert promote.run(open_source, version=first.version, decision="promote").action == "promote"
    commercial = params_with(tmp_path, policy="commercial", exceptions=[GCC_REVIEW])
    # v2: same record; under commercial now it is refused though registered as allowed
    trained(open_source)
    second = registry.run(open_source)
    assert stock_tags(open_source, second.version)["license.verdict"] == "allowed"
    assert promote.run(commercial, version=second.version, decision="promote").action == "reject"
    # a rollback to v1 (AGPL) is refused too, before anything moves
    assert promote.run(open_source, version=second.version, decision="promote").action == "promote"
    with pytest.raises(promote.RollbackError, match=r"v1 may not be champion: license gate \(commercial\).*AGPL"):
        promote.rollback(commercial, to_version=first.version)
    assert mlflow_adapter.find_alias(open_source, "champion").version == second.version


@pytest.mark.parametrize(
    ("policy", "action"), [pytest.param("commercial", "reject", id="commercial"), ("open-source", "promote")]
)
def test_a_version_without_a_record_fails_closed_only_under_commercial(tmp_path, policy, action):
    params = trained(params_with(tmp_path, policy=policy))
    info = registry.run(params)
    mlflow_adapter.client(params).delete_model_version_tag(params.registry.model_name, info.version, RECORD_TAG)
    result = promote.run(params, version=info.version, decision="promote")
    assert result.action == action
    if action == "reject":
        assert f"has no {RECORD_TAG} tag" in result.records[-1].why and "fail closed" in result.records[-1].why


def test_a_garbled_record_is_refused_under_commercial_naming_the_version(tmp_path):
    params = trained(params_with(tmp_path, policy="commercial"))
    info = registry.run(params)
    mlflow_adapter.set_version_tags(params, info.version, {RECORD_TAG: json.dumps([["weights", "x"]])})
    result = promote.run(params, version=info.version, decision="promote")
    assert result.action == "reject"
    assert f"v{info.version} of {params.registry.model_name}: {RECORD_TAG} entry 0" in result.records[-1].why


@pytest.mark.parametrize(
    ("declared", "verdict"),
    [pytest.param({}, "refused", id="no-declared-origin"), pytest.param(None, "allowed", id="declared-apache")],
)
def test_third_party_weights_need_a_declared_origin_under_commercial(tmp_path, declared, verdict):
    sha = "ab" * 32
    weights = {sha: "Apache-2.0"} if declared is None else declared
    exceptions = [ENTERPRISE, GCC_REVIEW]
    params = params_with(tmp_path, policy="commercial", exceptions=exceptions, weights=weights)
    trained(params, base_weights=str(tmp_path / "downloaded" / "vendor.pt"), sha=sha)
    tags = stock_tags(params, registry.run(params).version)
    assert tags["license.verdict"] == verdict, tags.get("license.refused")
    third = [c for c in parse_record(tags[RECORD_TAG], where="t").components if c.name.startswith("third-party")]
    assert len(third) == 1 and third[0].name == "third-party checkpoint vendor.pt"
    if verdict == "refused":
        assert third[0].license is None and f"not declared in gate.license.weights (sha256 {sha})" in third[0].source
        assert "third-party checkpoint vendor.pt (weights): UNKNOWN" in tags["license.refused"]
    else:
        assert third[0].license == "Apache-2.0"


def test_third_party_weights_without_origin_only_warn_under_open_source(tmp_path):
    params = params_with(tmp_path)
    trained(params, base_weights=str(tmp_path / "vendor.pt"), sha="cd" * 32)
    tags = stock_tags(params, registry.run(params).version)
    assert tags["license.verdict"] == "allowed"
    assert "third-party checkpoint vendor.pt (weights)" in tags["license.warnings"]


def test_a_data_source_without_a_declared_license_is_unknown(tmp_path):
    params = trained(params_with(tmp_path, policy="commercial", exceptions=[ENTERPRISE, GCC_REVIEW], data={}))
    tags = stock_tags(params, registry.run(params).version)
    record = parse_record(tags[RECORD_TAG], where="test")
    assert kind_summaries(record)["data"] == "historical (40 images) = UNKNOWN; production (8 images) = UNKNOWN"
    assert tags["license.verdict"] == "refused" and "historical (40 images) (data): UNKNOWN" in tags["license.refused"]
