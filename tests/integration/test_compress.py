"""The compress stage on the tiny world: a real YOLO26n checkpoint pruned with torch-pruning and fine-tuned.

One world and one 1-epoch checkpoint for the module; each test prunes a copy of the same trained checkpoint. What is
checked: off records a pass-through (and removes a stale candidate), a ratio and a MACs target really shrink the
network, the compressed checkpoint is recorded, opens and exports to ONNX with the same outputs' shape, a ratio that
would empty a layer is refused naming it, a family that cannot be pruned is skipped with its reason, and a fine-tune
whose loss stops being finite drops the candidate.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from tasks import compress, train, world
from tasks.config import Params
from tasks.contracts.checkpoints import trusted_checkpoints
from tasks.models import family
from tasks.models.pruning import ZeroChannelsError
from tasks.runtimes.detectors import load_detector
from tasks.targets.scoring import inference_settings
from tests.conftest import tiny_params_dict

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("compress")
    data = tiny_params_dict(root)
    params = Params.model_validate(data)
    world.run(params)
    train.run(params)
    return {"root": root, "data": data}


def _params(trained: dict, **compress_settings) -> Params:
    data = json.loads(json.dumps(trained["data"]))
    data["compress"].update(enabled=True, epochs=1, **compress_settings)
    return Params.model_validate(data)


def test_off_records_a_pass_through_and_removes_a_stale_candidate(trained):
    params = Params.model_validate(trained["data"])
    stale = compress.compressed_path(params)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an earlier run's candidate")
    report = compress.run(params)
    assert report.status == "off" and "compress.enabled is false" in report.reason
    assert not stale.exists(), "export must not find an earlier run's compressed checkpoint"
    saved = json.loads((params.base.paths.reports / "compress.json").read_text())
    assert saved["status"] == "off" and saved["params"]["digest"] == params.digest()
    lineage = json.loads(stale.with_name(compress.LINEAGE).read_text())
    assert lineage["status"] == "off", "the DVC output folder always holds the record"


def test_a_ratio_shrinks_the_network_and_the_checkpoint_opens_and_exports(trained):
    schedule = {"warmup_epochs": 0.5, "close_mosaic": 0}
    params = _params(trained, ratio=0.3, macs_reduction=None, round_to=1, distill=True, fine_tune_args=schedule)
    report = compress.run(params)
    assert report.status == "compressed", report.reason
    assert report.ratio == pytest.approx(0.3)
    assert report.macs_after < 0.8 * report.macs_before and report.params_after < report.params_before
    assert any(after < before for before, after in report.layers.values())
    assert report.parent_sha256 and report.checkpoint_sha256 and "head" in report.kept_whole
    assert report.fine_tune["distill"] and report.fine_tune_s > 0 and report.mlflow_run_id
    assert report.fine_tune["args"] == schedule, "the fine-tune's own trainer arguments are in the lineage"
    used = yaml.safe_load((compress.scratch_dir(params) / "ultralytics" / "run" / "args.yaml").read_text())
    assert used["warmup_epochs"] == 0.5 and used["close_mosaic"] == 0, "and they reached the trainer"
    weights = compress.compressed_path(params)
    assert weights.is_file() and str(weights) == report.weights
    assert report.checkpoint_sha256 in trusted_checkpoints(params), "the compressed checkpoint is a recorded one"
    model = family(params)  # registers the loaders and trusts params' records
    probe = np.zeros((1, 3, params.base.imgsz, params.base.imgsz), np.float32)
    settings = inference_settings(params)
    pruned_out = load_detector(weights, settings).forward(probe)
    parent_out = load_detector(params.base.paths.models / "train" / "best.pt", settings).forward(probe)
    assert pruned_out.shape == parent_out.shape, "same head outputs: boxes and classes per anchor"
    onnx = compress.scratch_dir(params) / "model.onnx"
    model.export_onnx(weights, onnx, params=params)
    assert onnx.is_file() and onnx.stat().st_size > 0


@pytest.mark.slow  # ~25-60 s: seven prunings of YOLO26n in the bisection (the search: tests/unit/test_pruning.py)
def test_a_macs_target_is_reached(trained):
    params = _params(trained, ratio=None, macs_reduction=0.3, round_to=8, distill=False)
    report = compress.run(params)
    assert report.status == "compressed", report.reason
    assert 1 - report.macs_after / report.macs_before >= 0.3
    assert report.target == {"ratio": None, "macs_reduction": 0.3} and not report.fine_tune["distill"]


def test_a_ratio_that_empties_a_layer_is_refused_naming_it(trained):
    params = _params(trained, ratio=0.6, macs_reduction=None, round_to=8)
    shutil.rmtree(compress.compressed_path(params).parent, ignore_errors=True)
    with pytest.raises(ZeroChannelsError, match=r"zero channels: model\.\d+.*\(16 channels\)"):
        compress.run(params)
    assert not compress.compressed_path(params).exists()


def test_a_family_that_cannot_be_pruned_is_skipped_with_the_reason(trained, tmp_path):
    data = json.loads(json.dumps(trained["data"]))
    data["train"].update(family="rfdetr", model="rfdetr-nano")
    data["compress"].update(enabled=True)
    params = Params.model_validate(data)
    report = compress.run(params)
    assert report.status == "skipped" and "family rfdetr cannot be pruned" in report.reason
    assert not compress.compressed_path(params).exists()


def test_a_fine_tune_that_diverges_drops_the_candidate(trained):
    data = json.loads(json.dumps(trained["data"]))
    data["compress"].update(enabled=True, epochs=1, ratio=0.3, macs_reduction=None, round_to=1, distill=False)
    # the fine-tune trains with the family's settings: an infinite class-loss gain makes the loss infinite
    data["train"]["yolo"].update(extra_args={"cls": float("inf")})
    params = Params.model_validate(data)
    report = compress.run(params)
    assert report.status == "dropped", report
    assert "diverged" in report.reason and "unpruned checkpoint" in report.reason
    assert report.ratio == pytest.approx(0.3) and report.macs_after < report.macs_before
    assert not compress.compressed_path(params).exists()


def test_prune_fine_tune_export_recheck_select(trained):
    """The compressed checkpoint goes through the export stage beside the unpruned one: built, re-checked against
    the unpruned PyTorch mAP with the compress budget, timed in the same pass and considered by the selection."""
    from tasks import export

    data = json.loads(json.dumps(trained["data"]))
    data["compress"].update(enabled=True, epochs=1, ratio=0.3, macs_reduction=None, round_to=1, distill=True)
    data["export"].update(targets=["onnx", "openvino_int8"])
    params = Params.model_validate(data)
    assert compress.run(params).status == "compressed"
    report = export.run(params)
    names = [c.target for c in report.artifacts]
    assert names == ["onnx", "openvino_int8", "compressed_onnx", "compressed_openvino_int8"]
    unpruned_fp32, compressed_int8 = report.check("onnx"), report.check("compressed_openvino_int8")
    assert compressed_int8 is not None and compressed_int8.source == "compressed"
    assert compressed_int8.status == "built", compressed_int8.reason
    assert compressed_int8.sibling == "compressed_openvino"
    assert compressed_int8.reference_map50_95 == report.reference_map50_95, "held against the unpruned PyTorch model"
    budget = params.export.max_map_drop.of("int8") + params.compress.max_map_drop
    assert compressed_int8.max_drop == pytest.approx(min(budget, params.compress.max_total_map_drop))
    assert "/export/compressed/" in compressed_int8.path and compressed_int8.speed is not None
    assert unpruned_fp32 is not None and unpruned_fp32.speed is not None and unpruned_fp32.source == "unpruned"
    assert set(report.selection) == set(names), "every candidate, compressed or not, has a verdict"
    assert report.selected is not None and report.selected["target"] in names


@pytest.mark.slow  # ~1-2 min: two exports of every listed target and one interleaved timing pass
def test_the_inference_benchmark_times_the_compressed_rows_beside_the_rest(trained, tmp_path):
    import sys

    import yaml

    from tasks.env import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import inference as bench

    data = json.loads(json.dumps(trained["data"]))
    data["compress"].update(enabled=True, epochs=1, ratio=0.3, macs_reduction=None, round_to=1, distill=False)
    data["export"].update(targets=["onnx", "openvino_int8"])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data))
    assert compress.run(Params.model_validate(data)).status == "compressed"
    args = ["--params", str(params_file), "--sizes", "64", "--runs", "3", "--batch-runs", "2", "--rounds", "1"]
    report = bench.main([*args, "--batch", "2", "--no-library-reference"])
    rows = {r["target"]: r for r in report["sizes"][0]["rows"]}
    expected = {"pytorch", "pytorch_compressed", "onnx", "openvino_int8", "compressed_onnx", "compressed_openvino_int8"}
    assert set(rows) == expected
    assert all("p50_ms" in r for r in rows.values()), "every row timed in the same pass"
    assert report["compressed"] and isinstance(report["host"]["isa_flags"], list) and report["host"]["cores"]


@pytest.mark.slow  # ~1-2 min: one point of the pruning curve (compress, two exports, one timing pass)
def test_the_pruning_curve_reports_each_point_against_every_set(trained, tmp_path):
    import sys

    import yaml

    from tasks.env import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    import compress_curve

    data = json.loads(json.dumps(trained["data"]))
    data["compress"].update(round_to=1)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(data))
    params = Params.model_validate(data)
    own = compress.compressed_path(params)
    before = own.read_bytes() if own.exists() else None
    args = ["--params", str(params_file), "--quick", "--no-library-reference", "--targets", "onnx", "onnx_int8"]
    args += ["--production", str(params.base.paths.val), "--control"]  # a labeled set beside golden; the control
    result = compress_curve.main(args)
    (point,) = result["points"]
    assert point["status"] == "compressed" and point["distill"] is True and point["epochs"] == 1
    assert point["macs_after"] < point["macs_before"] and point["fine_tune_min"] > 0
    (size,) = point["sizes"]
    assert size["imgsz"] == params.base.imgsz and size["artifact"] == "compressed_onnx_int8"
    assert set(size["map_drop_pt"]) == {*params.evaluate.sets, "production"}, "the loss on every re-checked set"
    assert result["sets"]["production"] == str(params.base.paths.val.resolve())
    (ctl,) = result["controls"]  # one recipe: the unpruned checkpoint fine-tuned alike, scored on the same sets
    assert ctl["epochs"] == 1 and set(ctl["sets"]) == {*params.evaluate.sets, "production"}
    for scores in ctl["sets"].values():
        assert scores["gain_pt"] == pytest.approx(100 * (scores["control"] - scores["unpruned"]), abs=0.011)
    assert size["within_total"] == (max(size["map_drop_pt"].values()) <= 0.5)
    out = params.base.paths.reports / "benchmarks"
    assert json.loads((out / "compress_curve.json").read_text())["points"][0]["sizes"][0]["ms"] == size["ms"]
    assert (out / "compress_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "compress_curve.work").exists(), "the points' folders are removed"
    assert (own.read_bytes() if own.exists() else None) == before, "the project's own compress output is untouched"
