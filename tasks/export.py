"""Stage ``export``: turn the trained checkpoint into deployable artifacts, re-checked for accuracy.

Contract:
    inputs: ``<models>/train/best.pt``, the sets in ``evaluate.sets``, ``<reports>/evaluate.json`` (the
        PyTorch mAP to compare against);
    params: ``base``, ``evaluate`` (thresholds, sets), ``export``;
    outputs: one artifact per target in ``<models>/export/`` (``model.onnx`` for ``onnx``) and
        ``<reports>/export.json`` with each artifact's mAP, size and the check's verdict;
    side effects: none outside those paths.

A target is an :class:`ExportTarget` in :data:`TARGETS`, chosen by ``export.targets``. Every artifact is
re-evaluated with the same code as the PyTorch model; if its mAP50-95 on any set falls more than
``export.max_map_drop`` below PyTorch's, the stage fails and says both numbers.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tasks.config import Params, load_params, stage_argparser
from tasks.evaluate import default_model_path, evaluate_set, inference_settings
from tasks.io import write_json_atomic

log = logging.getLogger(__name__)


class ExportCheckError(RuntimeError):
    """An exported artifact lost more accuracy than ``export.max_map_drop`` allows."""


@dataclass(frozen=True)
class ArtifactCheck:
    """One exported artifact and how it measured against PyTorch."""

    target: str
    path: str
    size_mb: float
    map50_95: dict[str, float]
    reference_map50_95: dict[str, float]
    max_drop: float
    passed: bool
    export_s: float


class ExportTarget(Protocol):
    """A deployable format: build it from a checkpoint into ``out_dir``; return the artifact path."""

    name: str

    def build(self, weights: Path, *, out_dir: Path, params: Params) -> Path: ...


class OnnxTarget:
    """ONNX FP32: opset from params, dynamic batch, simplified, NMS-free head kept in the graph."""

    name = "onnx"

    def build(self, weights: Path, *, out_dir: Path, params: Params) -> Path:
        from tasks.env import configure_ultralytics

        configure_ultralytics()
        from ultralytics import YOLO

        cfg = params.export
        scratch = out_dir / ".onnx-build"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        shutil.copyfile(weights, scratch / "model.pt")
        produced = YOLO(str(scratch / "model.pt")).export(
            format="onnx",
            opset=cfg.opset,
            dynamic=cfg.dynamic,
            simplify=cfg.simplify,
            imgsz=params.base.imgsz,
            nms=False,
            device=params.base.device,
            verbose=False,
        )
        target = out_dir / "model.onnx"
        Path(produced).replace(target)
        shutil.rmtree(scratch, ignore_errors=True)
        return target


TARGETS: dict[str, ExportTarget] = {"onnx": OnnxTarget()}


def check_artifact(
    *,
    target: str,
    artifact: Path,
    reference: dict[str, float],
    measured: dict[str, float],
    max_drop: float,
    export_s: float = 0.0,
) -> ArtifactCheck:
    """Compare an artifact's mAP50-95 per set with the PyTorch reference (pure; no I/O but file size)."""
    passed = all(measured[name] >= reference[name] - max_drop for name in reference)
    size = artifact.stat().st_size if artifact.is_file() else sum(p.stat().st_size for p in artifact.rglob("*"))
    return ArtifactCheck(
        target=target,
        path=str(artifact),
        size_mb=round(size / 2**20, 3),
        map50_95=measured,
        reference_map50_95=reference,
        max_drop=max_drop,
        passed=passed,
        export_s=export_s,
    )


def _reference_map(params: Params, weights: Path) -> dict[str, float]:
    """PyTorch mAP per set: from ``reports/evaluate.json`` when it scored this checkpoint, else measured now."""
    report = params.base.paths.reports / "evaluate.json"
    if report.is_file():
        data = json.loads(report.read_text())
        if Path(data["model"]).resolve() == weights.resolve() and set(params.evaluate.sets) <= set(data["sets"]):
            return {name: data["sets"][name]["map50_95"] for name in params.evaluate.sets}
    settings = inference_settings(params)
    return {
        name: evaluate_set(
            weights,
            getattr(params.base.paths, name),
            classes=params.base.classes,
            settings=settings,
            batch=params.evaluate.batch,
            set_name=name,
        ).map50_95
        for name in params.evaluate.sets
    }


def run(params: Params, *, weights: Path | None = None) -> list[ArtifactCheck]:
    """Build every target, re-evaluate it, write ``reports/export.json``; fail on an accuracy collapse.

    Raises:
        ExportCheckError: an artifact's mAP50-95 fell more than ``export.max_map_drop`` below PyTorch's.
    """
    weights = weights or default_model_path(params)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: checkpoint missing; run the train stage first")
    out_dir = params.base.paths.models / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = _reference_map(params, weights)
    settings = inference_settings(params)
    checks = []
    for name in params.export.targets:
        start = time.perf_counter()
        artifact = TARGETS[name].build(weights, out_dir=out_dir, params=params)
        export_s = round(time.perf_counter() - start, 2)
        measured = {
            s: evaluate_set(
                artifact,
                getattr(params.base.paths, s),
                classes=params.base.classes,
                settings=settings,
                batch=params.evaluate.batch,
                set_name=s,
            ).map50_95
            for s in params.evaluate.sets
        }
        checks.append(
            check_artifact(
                target=name,
                artifact=artifact,
                reference=reference,
                measured=measured,
                max_drop=params.export.max_map_drop,
                export_s=export_s,
            )
        )
        log.info("%s: mAP50-95 %s vs PyTorch %s", name, measured, reference)
    write_json_atomic(
        params.base.paths.reports / "export.json", {"weights": str(weights), "artifacts": [asdict(c) for c in checks]}
    )
    failed = [c for c in checks if not c.passed]
    if failed:
        lines = [
            f"{c.target} ({c.path}): mAP50-95 {c.map50_95} vs PyTorch {c.reference_map50_95}, allowed drop {c.max_drop}"
            for c in failed
        ]
        raise ExportCheckError("export check failed:\n  " + "\n  ".join(lines))
    return checks


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.export [--params P]``."""
    from tasks.env import apply_env

    args = stage_argparser("export", __doc__).parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    checks = run(load_params(args.params))
    print(json.dumps({c.target: c.map50_95 for c in checks}))


if __name__ == "__main__":
    main()
