"""Which exported artifact ships: ``select_artifact`` over every rule, plus the export config it reads."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from tasks.config import ExportParams, ExportTargetName, PerPrecision
from tasks.contracts.deployed import Deployed
from tasks.contracts.reports import load_params_stamp, load_report, write_report
from tasks.contracts.reports.export import ArtifactCheck, ExportReport, ParityResult, SpeedResult
from tasks.decisions.selection import SelectionPolicy, map_shortfalls, select_artifact
from tasks.targets.builders import TARGETS

REFERENCE = {"golden": 0.5}
CPU = SelectionPolicy(target_hardware="cpu", max_map_drop={"fp32": 0.003, "fp16": 0.005, "int8": 0.01}, min_speedup=1.1)
CUDA = SelectionPolicy(target_hardware="cuda", max_map_drop=CPU.max_map_drop, min_speedup=1.1)
THROUGHPUT = SelectionPolicy(
    target_hardware="cpu", max_map_drop=CPU.max_map_drop, min_speedup=1.1, select_by="throughput"
)
SIBLING = {"onnx_int8": "onnx", "openvino_int8": "openvino", "tensorrt_fp16": "onnx", "tensorrt_int8": "tensorrt_fp16"}
HARDWARE = {"onnx": ("cpu", "cuda"), "tensorrt_fp16": ("cuda",), "tensorrt_int8": ("cuda",)}


def cand(
    target: str,
    p50: float | None = 10.0,
    *,
    map50_95: dict[str, float] | None = None,
    throughput: float | None = None,
    precision: str | None = None,
    status: str = "built",
    reason: str = "",
    parity: bool = True,
) -> ArtifactCheck:
    """A candidate as the export stage records it; precision, hardware and sibling follow the target's name."""
    precision = precision or ("fp16" if "fp16" in target else "int8" if "int8" in target else "fp32")
    speed = (
        None
        if p50 is None
        else SpeedResult(
            threads=2,
            static_shapes=True,
            latency_ms={"p50": p50, "p95": p50 * 1.2, "p99": p50 * 1.5, "mean": p50},
            batch=8,
            batch_latency_ms=8 * p50,
            throughput_ips=throughput if throughput is not None else 1000.0 / p50,
            peak_rss_mb=10.0,
            load_s=0.1,
            runs=10,
            warmup=2,
        )
    )
    check = ParityResult(4, 20, 20 if parity else 2, 0.0, 0.0, 0.01, 1.0, 0.8, parity)
    return ArtifactCheck(
        target=target,
        path=f"models/export/{target}" if status == "built" else "",
        size_mb=1.0,
        map50_95=dict(REFERENCE) if map50_95 is None else map50_95,
        reference_map50_95=REFERENCE,
        max_drop=CPU.max_map_drop[precision],
        passed=True,
        precision=precision,
        hardware=HARDWARE.get(target, ("cpu",)),
        sibling=SIBLING.get(target),
        status=status,
        reason=reason,
        parity=check if status == "built" else None,
        speed=speed if status == "built" else None,
    )


SKIPPED_TRT = cand("tensorrt_int8", status="skipped", reason="the tensorrt Python module is not installed")

CASES = [
    pytest.param([], CPU, None, {}, id="empty"),
    pytest.param([cand("onnx")], CPU, "onnx", {"onnx": "selected as the fallback"}, id="only-fallback"),
    pytest.param(
        [cand("onnx", 10), cand("onnx_int8", 5)],
        CPU,
        "onnx_int8",
        {
            "onnx_int8": "selected: fastest eligible on cpu (p50 5.00 ms at batch 1, 2.00x onnx)",
            "onnx": "eligible, slower",
        },
        id="int8-faster-and-accurate",
    ),
    pytest.param(
        [cand("onnx", 10), cand("onnx_int8", 5, map50_95={"golden": 0.489})],
        CPU,
        "onnx",
        {"onnx_int8": "refused: mAP50-95 golden 0.4890 < PyTorch 0.5000 - 0.01 (int8 tolerance)", "onnx": "fallback"},
        id="int8-beyond-its-tolerance",
    ),
    pytest.param(
        [cand("onnx", 10), cand("onnx_int8", 5, map50_95={"golden": 0.49})],
        CPU,
        "onnx_int8",
        {"onnx_int8": "selected"},
        id="int8-drop-exactly-at-tolerance",
    ),
    pytest.param(
        [cand("onnx", 10, map50_95={"golden": 0.4965}), cand("openvino", 9, map50_95={"golden": 0.4965})],
        CPU,
        None,
        {"onnx": "refused: mAP50-95 golden 0.4965 < PyTorch 0.5000 - 0.003 (fp32", "openvino": "(fp32 tolerance)"},
        id="fp32-tolerance-is-tighter",
    ),
    pytest.param(
        [cand("onnx", 10), cand("onnx_int8", 9.5)],
        CPU,
        "onnx",
        {"onnx_int8": "refused: only 1.05x faster than onnx", "onnx": "fallback"},
        id="int8-not-faster-enough",
    ),
    pytest.param(
        [cand("onnx", 11), cand("onnx_int8", 10)],
        CPU,
        "onnx_int8",
        {"onnx_int8": "selected"},
        id="int8-speedup-exactly-min",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", 9.9)],
        CPU,
        "openvino",
        {"openvino": "selected", "onnx": "eligible, slower than openvino"},
        id="fp32-needs-no-speedup",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", 5), cand("openvino_int8", 4.8)],
        CPU,
        "openvino",
        {"openvino_int8": "refused: only 1.04x faster than openvino", "openvino": "selected"},
        id="int8-measured-against-its-own-sibling",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino_int8", 4.8)],
        CPU,
        "openvino_int8",
        {"openvino_int8": "selected"},
        id="missing-sibling-falls-back-to-onnx",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", None, status="failed", reason="boom"), cand("openvino_int8", 9.5)],
        CPU,
        "onnx",
        {"openvino": "failed: boom", "openvino_int8": "only 1.05x faster than onnx"},
        id="failed-sibling-falls-back-to-onnx",
    ),
    pytest.param(
        [cand("onnx", 10), cand("onnx_int8", 6), cand("openvino_int8", 4, parity=False)],
        CPU,
        "onnx_int8",
        {"openvino_int8": "refused: collapsed against PyTorch, 2/20", "onnx_int8": "selected"},
        id="collapsed-fastest-then-next-best",
    ),
    pytest.param(
        [cand("onnx", 10), SKIPPED_TRT],
        CPU,
        "onnx",
        {"tensorrt_int8": "skipped: the tensorrt Python module is not installed", "onnx": "fallback"},
        id="skipped-target-with-reason",
    ),
    pytest.param(
        [cand("onnx", 10), cand("onnx_int8", None, status="failed", reason="ValueError: cannot load")],
        CPU,
        "onnx",
        {"onnx_int8": "failed: ValueError: cannot load"},
        id="failed-build",
    ),
    pytest.param(
        [cand("onnx", 10), cand("tensorrt_fp16", 1)],
        CPU,
        "onnx",
        {"tensorrt_fp16": "refused: runs on cuda, export.target_hardware is cpu"},
        id="cuda-artifact-on-cpu-target",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", 5), cand("tensorrt_fp16", 2), cand("tensorrt_int8", 1.9)],
        CUDA,
        "tensorrt_fp16",
        {
            "openvino": "runs on cpu, export.target_hardware is cuda",
            "tensorrt_int8": "refused: only 1.05x faster than tensorrt_fp16",
            "tensorrt_fp16": "selected: fastest eligible on cuda",
        },
        id="cuda-target-int8-must-beat-fp16-sibling-or-fallback",
    ),
    pytest.param(
        [cand("onnx", 10), cand("tensorrt_fp16", 2, map50_95={"golden": 0.494})],
        CUDA,
        "onnx",
        {"tensorrt_fp16": "refused: mAP50-95 golden 0.4940 < PyTorch 0.5000 - 0.005 (fp16 tolerance)"},
        id="fp16-tolerance",
    ),
    pytest.param(
        [cand("onnx", 10), SKIPPED_TRT],
        CUDA,
        "onnx",
        {"onnx": "selected as the fallback: no other artifact qualified on cuda"},
        id="cuda-target-on-a-host-without-tensorrt",
    ),
    pytest.param(
        [cand("onnx", 10, map50_95={"golden": 0.1}), cand("onnx_int8", 5)],
        CPU,
        None,
        {"onnx": "refused: mAP50-95", "onnx_int8": "refused: the fallback onnx failed"},
        id="fallback-collapsed-nothing-ships",
    ),
    pytest.param(
        [cand("onnx", 10, parity=False), cand("openvino", 5)],
        CPU,
        None,
        {"onnx": "collapsed", "openvino": "nothing ships"},
        id="fallback-parity-collapse",
    ),
    pytest.param(
        [cand("openvino", 5)], CPU, None, {"openvino": "the fallback onnx failed (no candidate)"}, id="no-fallback"
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", 5, map50_95={})],
        CPU,
        "onnx",
        {"openvino": "refused: mAP50-95 golden not evaluated"},
        id="set-not-evaluated",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", 5, map50_95={"golden": 0.6})],
        CPU,
        "openvino",
        {"openvino": "selected"},
        id="better-than-pytorch",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", 10), cand("onnx_int8", 10)],
        CPU,
        "onnx",
        {
            "onnx": "selected: fastest eligible on cpu (p50 10.00 ms at batch 1)",
            "openvino": "eligible, slower than onnx",
            "onnx_int8": "1.00x",
        },
        id="tie-keeps-build-order",
    ),
    pytest.param(
        [cand("onnx", 10), cand("openvino", None)],
        CPU,
        "onnx",
        {"openvino": "refused: not benchmarked"},
        id="not-benchmarked",
    ),
    pytest.param(
        [cand("onnx", 10, throughput=100), cand("onnx_int8", 5, throughput=105), cand("openvino", 12, throughput=150)],
        THROUGHPUT,
        "openvino",
        {"onnx_int8": "refused: only 1.05x faster than onnx (105.0 img/s", "openvino": "150.0 img/s at batch 8"},
        id="select-by-throughput",
    ),
]


@pytest.mark.parametrize(("candidates", "policy", "chosen", "reasons"), CASES)
def test_select_artifact(candidates, policy, chosen, reasons):
    selection = select_artifact(candidates, reference_map=REFERENCE, policy=policy)
    assert (selection.chosen.target if selection.chosen else None) == chosen
    assert set(selection.reasons_per_target) == {c.target for c in candidates}, "every candidate gets a reason"
    for target, fragment in reasons.items():
        assert fragment in selection.reasons_per_target[target], selection.reasons_per_target
    summary = selection.summary()
    if chosen is None:
        assert summary is None and selection.reason.startswith("nothing deployable")
    else:
        assert summary == {"target": chosen, "path": f"models/export/{chosen}", "reason": selection.reason}


def test_select_artifact_is_pure():
    candidates = [cand("onnx", 10), cand("onnx_int8", 5)]
    before = list(candidates)
    first = select_artifact(candidates, reference_map=REFERENCE, policy=CPU)
    assert candidates == before
    assert select_artifact(candidates, reference_map=REFERENCE, policy=CPU) == first


def test_policy_from_params():
    policy = SelectionPolicy.from_params(ExportParams(max_map_drop=0.02, target_hardware="cuda", min_speedup=1.3))
    assert policy == SelectionPolicy(
        target_hardware="cuda",
        max_map_drop={"fp32": 0.02, "fp16": 0.02, "int8": 0.02},
        min_speedup=1.3,
        select_by="latency",
    )


@pytest.mark.parametrize(
    ("measured", "reference", "max_drop", "short"),
    [
        pytest.param({}, {}, 0.01, {}, id="empty"),
        pytest.param({"golden": 0.5}, {"golden": 0.5}, 0.0, {}, id="equal-no-tolerance"),
        pytest.param({"golden": 0.49}, {"golden": 0.5}, 0.01, {}, id="drop-exactly-at-tolerance"),
        pytest.param({"golden": 0.48}, {"golden": 0.5}, 0.01, {"golden": (0.48, 0.5)}, id="beyond-tolerance"),
        pytest.param({}, {"golden": 0.5}, 0.01, {"golden": (None, 0.5)}, id="set-not-evaluated"),
        pytest.param({"golden": 0.5, "extra": 0.0}, {"golden": 0.5}, 0.01, {}, id="unreferenced-set-ignored"),
        pytest.param(
            {"golden": 0.9, "holdout": 0.1},
            {"golden": 0.5, "holdout": 0.4},
            0.01,
            {"holdout": (0.1, 0.4)},
            id="per-set",
        ),
    ],
)
def test_map_shortfalls(measured, reference, max_drop, short):
    assert map_shortfalls(measured, reference, max_drop) == short


def test_report_round_trips_and_names_the_deployed_artifact(tiny_params):
    checks = [cand("onnx", 10), cand("onnx_int8", 5), SKIPPED_TRT]
    selection = select_artifact(checks, reference_map=REFERENCE, policy=CPU)
    report = ExportReport(
        weights="models/train/best.pt",
        params_digest=tiny_params.digest(),
        reference_map50_95=REFERENCE,
        artifacts=checks,
        selected=selection.summary(),
        selection=selection.reasons_per_target,
        lineage={"calibration": None, "versions": {"onnxruntime": "1"}},
        host={"cpus": 2},
    )
    reports = tiny_params.base.paths.reports
    write_report(reports, "export", report, tiny_params)
    assert load_report(reports, "export") == report
    assert load_params_stamp(reports, "export") == tiny_params.stamp()
    assert report.deployed() == Deployed(target="onnx_int8", precision="int8", path=Path("models/export/onnx_int8"))
    assert [c.target for c in report.built()] == ["onnx", "onnx_int8"]
    assert report.check("onnx_int8").deployable and not report.check("tensorrt_int8").deployable
    assert report.check("openvino") is None
    nothing = ExportReport("w", "d", REFERENCE, [], None, {}, {}, {})
    assert nothing.deployed() is None


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0.005, PerPrecision(fp32=0.005, fp16=0.005, int8=0.005), id="number-for-all"),
        pytest.param(1, PerPrecision(fp32=1, fp16=1, int8=1), id="int-for-all"),
        pytest.param(
            {"fp32": 0.001, "fp16": 0.002, "int8": 0.01}, PerPrecision(fp32=0.001, fp16=0.002, int8=0.01), id="map"
        ),
    ],
)
def test_max_map_drop_shapes(value, expected):
    assert ExportParams(max_map_drop=value).max_map_drop == expected


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        pytest.param({"targets": ["onnx_int8"]}, "must include 'onnx'", id="no-fallback"),
        pytest.param({"targets": []}, "must include 'onnx'", id="empty-targets"),
        pytest.param({"targets": ["onnx", "onnx"]}, "lists a target twice", id="duplicate"),
        pytest.param({"targets": ["onnx", "tflite"]}, "targets.1", id="unknown-target"),
        pytest.param({"max_map_drop": -0.1}, "greater than or equal to 0", id="negative-drop"),
        pytest.param({"max_map_drop": {"fp32": 0.1}}, "fp16", id="partial-map"),
        pytest.param({"max_map_drop": {"fp32": 0, "fp16": 0, "int8": 0, "bf16": 0}}, "bf16", id="unknown-precision"),
        pytest.param({"min_speedup": 0.9}, "min_speedup", id="speedup-below-one"),
        pytest.param({"target_hardware": "tpu"}, "target_hardware", id="unknown-hardware"),
        pytest.param({"calibration": {"images": 8, "min_images": 16}}, "larger than images", id="min-above-size"),
        pytest.param({"calibration": {"images": 0}}, "calibration.images", id="zero-calibration"),
    ],
)
def test_export_params_refuse(overrides, match):
    with pytest.raises(ValidationError, match=match):
        ExportParams(**overrides)


def test_every_configurable_target_is_registered():
    assert set(get_args(ExportTargetName)) == set(TARGETS)
    for name, target in TARGETS.items():
        assert target.name == name
        assert (target.sibling is None) == (target.precision == "fp32")
        if target.sibling is not None:
            assert TARGETS[target.sibling].precision != target.precision


# --- compressed artifacts (the compress stage): the unpruned PyTorch reference, the export tolerance + a budget

COMPRESS = SelectionPolicy(
    target_hardware="cpu",
    max_map_drop={"fp32": 0.003, "fp16": 0.005, "int8": 0.005},
    min_speedup=1.1,
    compressed_extra=0.002,
    compressed_total=0.005,
)


def compressed(target: str, p50: float, golden: float) -> ArtifactCheck:
    from dataclasses import replace

    check = cand(target, p50, map50_95={"golden": golden})
    sibling = f"compressed_{check.sibling}" if check.sibling else None
    return replace(check, target=f"compressed_{target}", sibling=sibling, source="compressed")


def test_the_compressed_budget_is_the_export_tolerance_plus_compress_capped_by_the_total():
    assert COMPRESS.allowed_drop("fp32", "compressed") == pytest.approx(0.005)  # 0.003 + 0.002
    assert COMPRESS.allowed_drop("int8", "compressed") == pytest.approx(0.005)  # 0.005 + 0.002, capped at 0.005
    assert COMPRESS.allowed_drop("int8") == 0.005 and COMPRESS.allowed_drop("fp32") == 0.003
    uncapped = SelectionPolicy(max_map_drop=COMPRESS.max_map_drop, compressed_extra=0.002)
    assert uncapped.allowed_drop("int8", "compressed") == pytest.approx(0.007)


def test_a_compressed_artifact_that_loses_too_much_is_refused_with_both_numbers():
    candidates = [
        cand("onnx", 20.0),
        cand("openvino_int8", 8.0, map50_95={"golden": 0.498}),
        compressed("onnx", 12.0, 0.496),  # within 0.005 of the unpruned 0.5
        compressed("openvino_int8", 4.0, 0.4940),  # 0.006 below: over the 0.005 total
    ]
    got = select_artifact(candidates, reference_map=REFERENCE, policy=COMPRESS)
    refusal = got.reasons_per_target["compressed_openvino_int8"]
    assert "refused: mAP50-95 golden 0.4940 < unpruned PyTorch 0.5000 - 0.005" in refusal
    assert "compressed int8: 0.005 + compress 0.002, at most 0.005" in refusal
    assert got.chosen is not None and got.chosen.target == "openvino_int8", got.reasons_per_target


def test_the_fastest_eligible_compressed_artifact_ships():
    candidates = [
        cand("onnx", 20.0),
        cand("openvino_int8", 8.0, map50_95={"golden": 0.498}),
        compressed("onnx", 12.0, 0.496),
        compressed("openvino", 10.0, 0.496),
        compressed("openvino_int8", 4.0, 0.4955),  # 0.0045 below the unpruned model: within 0.005
    ]
    got = select_artifact(candidates, reference_map=REFERENCE, policy=COMPRESS)
    assert got.chosen is not None and got.chosen.target == "compressed_openvino_int8", got.reasons_per_target
    assert got.reason == "selected: fastest eligible on cpu (p50 4.00 ms at batch 1, 5.00x onnx)"
    assert got.reasons_per_target["openvino_int8"].startswith("eligible, slower than compressed_openvino_int8")
