"""What the registry takes from an export report: attachments, deploy tags, metrics, table; training-data lineage."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import registry
from tasks.config import Params
from tasks.contracts import lineage, model_version
from tasks.contracts.reports import write_report
from tasks.contracts.reports.export import ArtifactCheck, ExportReport, ParityResult, SpeedResult
from tasks.contracts.reports.merge import MergeReport
from tasks.contracts.train_files import dataset_record_path

REFERENCE = {"golden": 0.5, "holdout": 0.4}
LINEAGE = {
    "calibration": {"source": "data/train/images", "seed": 7, "count": 2, "image_ids": ["a.png", "b.png"]},
    "quantization": {"keep_head_fp32": True, "per_channel": True},
    "calibration_settings": {"images": 64, "min_images": 16, "seed": None, "method": "minmax"},
    "versions": {"onnxruntime": "1.32.0", "nncf": "3.4.0", "openvino": "2026.4.1", "tensorrt": None},
}


def check(
    target: str, path: Path | None, *, passed: bool = True, parity: bool | None = True, status: str = "built", **kw: Any
) -> ArtifactCheck:
    """A check as the export stage records it (real dataclasses, so the test follows the report's shape)."""
    speed = SpeedResult(2, True, {"p50": 10.0, "p95": 12.0, "p99": 15.0, "mean": 10.5}, 4, 30.0, 133.3, 5.0, 0.1, 5, 1)
    return ArtifactCheck(
        target=target,
        path=str(path) if path else "",
        size_mb=1.0,
        map50_95={"golden": 0.49, "holdout": 0.41} if status == "built" else {},
        reference_map50_95=REFERENCE,
        max_drop=0.01,
        passed=passed,
        precision=kw.pop("precision", "int8" if "int8" in target else "fp32"),
        status=status,
        parity=None
        if parity is None or status != "built"
        else ParityResult(4, 10, 9 if parity else 1, 0, 0, 0, 0, 0.6, parity),
        speed=speed if status == "built" else None,
        **kw,
    )


def report(checks: list[ArtifactCheck], selected: str | None) -> dict[str, Any]:
    chosen = next((c for c in checks if c.target == selected), None)
    return asdict(
        ExportReport(
            weights="models/train/best.pt",
            params_digest="d",
            reference_map50_95=REFERENCE,
            artifacts=checks,
            selected=None if chosen is None else {"target": chosen.target, "path": chosen.path, "reason": "fastest"},
            selection={c.target: f"why {c.target}" for c in checks},
            lineage=LINEAGE,
            host={},
        )
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "openvino").mkdir()
    for name in ("model.onnx", "model_int8.onnx", "openvino/model.xml", "openvino/model.bin"):
        (tmp_path / name).write_bytes(b"x")
    return {
        "onnx": tmp_path / "model.onnx",
        "onnx_int8": tmp_path / "model_int8.onnx",
        "xml": tmp_path / "openvino/model.xml",
    }


@pytest.mark.parametrize(
    ("overrides", "attached"),
    [
        pytest.param({}, ["onnx", "onnx_int8", "openvino"], id="all-healthy"),
        pytest.param({"onnx_int8": {"passed": False}}, ["onnx", "openvino"], id="map-gate-failed"),
        pytest.param({"onnx_int8": {"parity": False}}, ["onnx", "openvino"], id="collapsed-in-parity"),
        pytest.param({"onnx_int8": {"parity": None}}, ["onnx", "onnx_int8", "openvino"], id="no-parity-recorded"),
        pytest.param({"openvino": {"status": "skipped", "passed": False}}, ["onnx", "onnx_int8"], id="skipped"),
        pytest.param({"openvino": {"status": "failed", "passed": False}}, ["onnx", "onnx_int8"], id="failed"),
    ],
)
def test_only_built_artifacts_that_passed_every_check_are_attached(files, overrides, attached):
    paths = {"onnx": files["onnx"], "onnx_int8": files["onnx_int8"], "openvino": files["xml"]}
    checks = [check(t, p, **overrides.get(t, {})) for t, p in paths.items()]
    found = model_version.export_attachments(report(checks, "onnx"))
    assert [a.target for a in found] == attached
    by_target = {a.target: a for a in found}
    if "openvino" in by_target:
        ov = by_target["openvino"]
        assert ov.artifact == "export/openvino/model.xml" and ov.files == (
            files["xml"],
            files["xml"].with_suffix(".bin"),
        )
        assert {ov.artifact_path_of(f) for f in ov.files} == {"export/openvino"}
    assert by_target["onnx"].artifact == "export/onnx/model.onnx"


def test_no_artifacts_no_attachments_and_an_empty_table():
    empty = report([], None)
    assert model_version.export_attachments(empty) == []
    assert model_version.export_table(empty, []) == {"target": []}
    assert model_version.export_metrics(empty) == {}
    assert model_version.deploy_tags(empty, []) == {}


@pytest.mark.parametrize("missing", ["model.onnx", "openvino/model.bin"], ids=["onnx-file", "openvino-weights"])
def test_a_checked_artifact_missing_on_disk_is_a_clear_error(files, missing):
    data = report([check("onnx", files["onnx"]), check("openvino", files["xml"])], "onnx")
    (files["onnx"].parent / missing).unlink()
    with pytest.raises(FileNotFoundError, match=r"re-run the export stage") as err:
        model_version.export_attachments(data)
    assert missing in str(err.value)


def test_deploy_tags_name_the_selected_artifact_as_built_and_nothing_else(files):
    """Per-target figures and INT8 lineage are no version tags (they made MLflow's version table one tall column)."""
    checks = [
        check("onnx", files["onnx"]),
        check("openvino", files["xml"]),
        check("tensorrt_int8", None, status="skipped", passed=False),
    ]
    data = report(checks, "openvino")
    tags = model_version.deploy_tags(data, model_version.export_attachments(data))
    assert tags == {
        "deploy.target": "openvino",
        "deploy.artifact": "export/openvino/model.xml",
        "deploy.precision": "fp32",
    }
    metrics = model_version.export_metrics(data)
    assert metrics["export/onnx/map50_95.golden"] == 0.49 and metrics["export/onnx/map50_95.holdout"] == 0.41
    assert metrics["export/openvino/p50_ms"] == 10.0
    assert not any(k.startswith("export/tensorrt_int8/") for k in metrics), "skipped targets carry no numbers"


@pytest.mark.parametrize(
    ("lineage", "expected"),
    [
        pytest.param(
            LINEAGE,
            {
                "count": 2,
                "method": "minmax",
                "versions": {"onnxruntime": "1.32.0", "nncf": "3.4.0", "openvino": "2026.4.1"},
            },
            id="int8-built",
        ),
        pytest.param({}, {"count": None, "method": None, "versions": {}}, id="no-int8-lineage"),
    ],
)
def test_export_lineage_is_a_json_artifact_without_the_image_ids(lineage, expected):
    found = model_version.export_lineage(report([], None) | {"lineage": lineage})
    json.dumps(found)  # what export/lineage.json holds
    calibration = found["calibration"]
    assert (calibration or {}).get("count") == expected["count"]
    if calibration is not None:
        assert "image_ids" not in calibration and len(calibration["image_ids_sha256"]) == 64
    assert (found["quantization"]["calibration"] or {}).get("method") == expected["method"]
    assert found["versions"] == expected["versions"], "runtimes not installed are left out"
    assert found["host"] == {}, "a report without a host record gives no host"


HOST = {"machine": "x86_64", "cpu": "AMD EPYC", "isa": "AVX2", "isa_flags": ["avx2"], "cpus": 2, "threads": 2}


def test_the_host_the_selection_was_timed_on_is_in_the_lineage_and_a_tag(files):
    data = report([check("onnx", files["onnx"])], "onnx") | {"lineage": {}, "host": HOST}
    found = model_version.export_lineage(data)
    assert found["host"] == {"cpu": "AMD EPYC", "isa": "AVX2", "isa_flags": ["avx2"], "threads": 2}
    tags = model_version.deploy_tags(data, model_version.export_attachments(data))
    assert tags["deploy.selected_on"] == "AMD EPYC (avx2)"
    vnni = HOST | {"cpu": "Intel Xeon", "isa": "AVX-512 VNNI", "isa_flags": ["avx2", "avx512f", "avx512_vnni"]}
    tags = model_version.deploy_tags(data | {"host": vnni}, model_version.export_attachments(data))
    assert tags["deploy.selected_on"] == "Intel Xeon (avx2, avx512f, avx512_vnni)"


def test_deploy_precision_is_what_the_engine_built(files):
    engine = files["onnx"].with_name("model_int8.engine")
    engine.write_bytes(b"x")
    int8 = check("tensorrt_int8", engine, details={"built_precision": "fp16"}, hardware=("cuda",))
    data = report([check("onnx", files["onnx"]), int8], "tensorrt_int8")
    tags = model_version.deploy_tags(data, model_version.export_attachments(data))
    assert tags["deploy.precision"] == "fp16" and tags["deploy.artifact"] == "export/tensorrt_int8/model_int8.engine"


def test_selecting_an_artifact_that_failed_its_checks_is_refused(files):
    data = report([check("onnx", files["onnx"]), check("onnx_int8", files["onnx_int8"], passed=False)], "onnx_int8")
    with pytest.raises(ValueError, match="'onnx_int8', not a built artifact that passed its checks"):
        model_version.deploy_tags(data, model_version.export_attachments(data))


def test_nothing_selected_means_no_deploy_tags(files):
    data = report([check("onnx", files["onnx"])], None) | {"lineage": {}}
    assert model_version.deploy_tags(data, model_version.export_attachments(data)) == {}
    assert "export/onnx/p50_ms" in model_version.export_metrics(data)


def test_metrics_and_table_per_target(files):
    checks = [check("onnx", files["onnx"]), replace(check("tensorrt_fp16", None, status="skipped"), reason="no CUDA")]
    data = report(checks, "onnx")
    attachments = model_version.export_attachments(data)
    metrics = model_version.export_metrics(data)
    assert metrics["export/onnx/p50_ms"] == 10.0 and metrics["export/onnx/map_drop.golden"] == pytest.approx(0.01)
    assert metrics["export/onnx/parity_match"] == 0.9 and metrics["export/onnx/throughput_ips"] == 133.3
    assert not any(k.startswith("export/tensorrt_fp16/") for k in metrics)
    table = model_version.export_table(data, attachments)
    assert table["target"] == ["onnx", "tensorrt_fp16"] and table["selected"] == [True, False]
    assert table["artifact"] == ["export/onnx/model.onnx", ""] and table["map50_95.holdout"] == [0.41, None]
    assert table["verdict"] == ["why onnx", "why tensorrt_fp16"] and table["parity"] == ["9/10", None]
    assert len({len(column) for column in table.values()}) == 1


# --------------------------------------------------------------------------------------------- training data


def merge_record(mode: str, manifest_md5: str | None) -> MergeReport:
    """A merge report as the merge stage writes it (only ``mode`` and ``manifest_md5`` matter here)."""
    return MergeReport(
        mode=mode,  # type: ignore[arg-type]
        cycles=(),
        manifest="data/merged/manifest.parquet",
        manifest_md5=manifest_md5,
        images=0,
        new_images=0,
        new_shards=(),
        train_images=0,
        train_samples=0,
        holdout_images=0,
        excluded_images=0,
        repeats={},
        notes=(),
        wall_s=0.0,
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("record", "merge_report", "merged_rows", "expected"),
    [
        pytest.param({"mode": "merged", "manifest_md5": "m1"}, None, 0, ("m1", "merged"), id="trained-on-merged"),
        pytest.param(
            {"mode": "source"}, {"mode": "merged", "manifest_md5": "m2"}, 3, (None, "source"), id="trained-on-source"
        ),
        pytest.param(None, {"mode": "merged", "manifest_md5": "m3"}, 3, ("m3", "merged"), id="no-record-merged"),
        pytest.param(
            None, {"mode": "merged", "manifest_md5": "m4"}, 0, (None, "source"), id="no-record-empty-manifest"
        ),
        pytest.param(None, None, 0, (None, "source"), id="bootstrap"),
    ],
)
def test_dataset_md5_is_the_data_training_read(tiny_params: Params, record, merge_report, merged_rows, expected):
    paths = tiny_params.base.paths
    (paths.train / "images").mkdir(parents=True)
    (paths.train / "images" / "a.png").write_bytes(b"png")
    if record is not None:
        write_json(dataset_record_path(tiny_params), record)
    if merge_report is not None:
        write_report(paths.reports, "merge", merge_record(**merge_report), tiny_params)
    if merged_rows:
        paths.merged.mkdir(parents=True)
        pq.write_table(pa.table({"file": [f"{i}.png" for i in range(merged_rows)]}), paths.merged / "manifest.parquet")
    md5, mode = expected
    found = lineage.training_data_lineage(tiny_params)
    assert found["dataset_mode"] == mode
    assert found["dataset_md5"] == (md5 or lineage.dataset_md5(paths.train))
    if mode == "source":
        assert found["dataset_md5"].endswith(".dir")


# --------------------------------------------------------------------------------------------- DVC pin hashes


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        pytest.param({}, {}, id="never-pinned"),
        pytest.param(
            {"dvc.md5": '{"data/world":"a.dir","models/export":"b.dir"}'},
            {"data/world": "a.dir", "models/export": "b.dir"},
            id="one-json-tag",
        ),
        pytest.param(
            {"dvc.md5.data/world": "a.dir", "dvc.commit": "c"}, {"data/world": "a.dir"}, id="pinned-before-one-tag"
        ),
        pytest.param({"dvc.md5": "{}"}, {}, id="empty-lock"),
    ],
)
def test_pinned_md5s_read_both_tag_forms(tags, expected):
    assert registry.pinned_md5s(tags) == expected


@pytest.mark.parametrize("bad", ["{", '["a.dir"]', "null"], ids=["not-json", "a-list", "null"])
def test_an_unreadable_dvc_md5_tag_is_a_clear_restore_error(bad):
    with pytest.raises(registry.RestoreError, match=r"tag dvc\.md5 is not a JSON object"):
        registry.pinned_md5s({"dvc.md5": bad})
