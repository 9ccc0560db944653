"""The data the browser checks look for, made by the project's own code on tiny inputs against any MLflow server.

A constant ONNX detector registered by the registry stage with the lineage a cycle adds
(:func:`tasks.cycle.candidate_lineage`), promoted by the promote stage, the tags a loop champion gets later (DVC pin,
monitor baseline), its cycle report written and logged by :func:`tasks.cycle.run` and published to a Prefect server
by the loop's own ``_publish`` (``tests/browser/publish_cycle.py``). Optionally first an older version with the tag
set versions carried before the registry moved per-target figures to run metrics (the row check's failing case).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasks import cycle, promote, registry
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.reports import write_report
from tasks.contracts.reports.export import ArtifactCheck, ExportReport, ParityResult, SpeedResult
from tasks.env import PROJECT_ROOT
from tests.integration.test_license_record import trained

# The targets an INT8-capable CPU host builds, and the evaluation sets: what the old tags were written for
OLD_TARGETS = ("onnx", "onnx_int8", "openvino", "openvino_int8")
OLD_SETS = ("golden", "holdout")
DVC_OUTPUTS = (
    "data/world",
    "data/holdouts",
    "data/merged",
    "models/export",
    "models/train/best.pt",
    "params.effective.yaml",
    "reports/world.json",
    "reports/merge.json",
    "reports/train.json",
    "reports/evaluate.json",
    "reports/export.json",
)


def write_export_report(params: Params) -> None:
    """An export report for the constant ONNX detector: FP32 ONNX built, checked and selected."""
    onnx = params.base.paths.models / "export" / "model.onnx"
    speed = SpeedResult(2, True, {"p50": 1.0, "p95": 1.2, "p99": 1.5, "mean": 1.05}, 4, 3.0, 1000.0, 5.0, 0.1, 5, 1)
    check = ArtifactCheck(
        target="onnx",
        path=str(onnx),
        size_mb=0.01,
        map50_95={"golden": 0.5},
        reference_map50_95={"golden": 0.5},
        max_drop=0.003,
        passed=True,
        parity=ParityResult(4, 10, 10, 0, 0, 0, 0, 0.9, True),
        speed=speed,
    )
    report = ExportReport(
        weights=str(params.base.paths.models / "train" / "best.pt"),
        params_digest=params.digest(),
        reference_map50_95={"golden": 0.5},
        artifacts=[check],
        selected={"target": "onnx", "path": str(onnx), "reason": "the only one"},
        selection={"onnx": "selected: the only one"},
        lineage={},
        host={},
    )
    write_report(params.base.paths.reports, "export", report, params)


def later_tags(version: str) -> dict[str, str]:
    """The tags the pin and the monitor add to a loop champion, with values shaped as theirs."""
    return {
        "dvc.commit": "9dfe0ce4052cfa71a160aeccf99ce8664f72f05c",
        "dvc.ref": f"refs/visionloop/pins/visionloop-detector-v{version}",
        "dvc.remote": "visionloop",
        "dvc.restorable": "true",
        "dvc.md5": json.dumps({output: "d41d8cd98f00b204e9800998ecf8427e.dir" for output in DVC_OUTPUTS}),
        "monitor.baseline": "monitor/baseline.parquet",
    }


def old_tags() -> dict[str, str]:
    """What a version carried before the registry moved per-target figures off its tags (shape as
    ``export_tags`` wrote them; one ``dvc.md5.<output>`` tag per DVC output)."""
    tags = {}
    for target in OLD_TARGETS:
        for index, name in enumerate(OLD_SETS):
            tags[f"export.{target}.map50_95" + ("" if index == 0 else f".{name}")] = "0.4321"
        tags[f"export.{target}.p50_ms"] = "12.345"
    tags["export.calibration"] = json.dumps({"source": "data/train/images", "seed": 0, "count": 64, "sha": "f" * 64})
    tags["export.quantization"] = json.dumps({"quantization": {"keep_head_fp32": True}, "calibration": {"images": 64}})
    tags["export.versions"] = json.dumps({"onnxruntime": "1.32.0", "openvino": "2026.4.1", "nncf": "3.4.0"})
    tags |= {f"dvc.md5.{output}": "d41d8cd98f00b204e9800998ecf8427e.dir" for output in DVC_OUTPUTS}
    return tags


@dataclass(frozen=True)
class Made:
    """What :func:`make_cycle` registered and published."""

    old: str | None  # the version with the old tag set, when asked for
    champion: str  # the cycle's candidate, promoted: the latest version
    run_id: str  # its training run (holds ``cycles/<cycle>/``)
    flow_run: dict[str, str]  # the published Prefect flow run: ``id``, ``name``


def make_cycle(
    params: Params, *, cycle_name: str, prefect_api: Callable[[], str], home: Path, with_old: bool = False
) -> Made:
    """Register (and promote) a cycle's candidate on ``params.registry.tracking_uri``, log its cycle report and
    publish it to the Prefect API ``prefect_api()`` gives (called only then: the server may boot meanwhile);
    ``home`` holds the publishing client's ``PREFECT_HOME``."""
    trained(params)
    write_export_report(params)
    old = None
    if with_old:
        # the version a registration made before: today's tags plus the per-target ones it carried then
        old = registry.run(params).version
        mlflow_adapter.set_version_tags(params, old, old_tags())
        trained(params)  # a new training run: a new version
    gx = home / "gx-validation.json"
    gx.parent.mkdir(parents=True, exist_ok=True)
    gx.write_text("{}")
    lineage, _ = cycle.candidate_lineage(params, cycle=cycle_name, champion=None, gx_report=gx, gate_decision="promote")
    candidate = registry.run(params, extra_lineage=lineage)
    promote.promote(params, version=candidate.version, why="browser test: gate passed")
    # what a loop champion gets after registration and that this test does not run: the DVC pin and push
    # (tasks.registry.pin) and the monitoring baseline (tasks.monitor): the row is measured with all of them
    mlflow_adapter.set_version_tags(params, candidate.version, later_tags(candidate.version))
    written = cycle.run(params, cycle=cycle_name, outcome="promote")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_API_URL": prefect_api(), "PREFECT_HOME": str(home / "prefect-client")}
    published = subprocess.run(
        [sys.executable, "-m", "tests.browser.publish_cycle", written.folder],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if published.returncode != 0:
        raise RuntimeError(f"tests.browser.publish_cycle failed: {published.stderr[-3000:]}")
    return Made(
        old=old,
        champion=candidate.version,
        run_id=candidate.run_id,
        flow_run=json.loads(published.stdout.strip().splitlines()[-1]),
    )
