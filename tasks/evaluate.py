"""Stage ``evaluate``: COCO mAP of any model artifact on labeled image sets.

Contract:
    inputs: a model artifact (``.pt``, ``.onnx`` or OpenVINO; default ``<models>/train/best.pt``) and the
        YOLO-format sets named in ``evaluate.sets`` (``base.paths`` entries);
    params: ``base`` (classes, imgsz, device, paths), ``evaluate``, ``base.threads``;
    outputs: ``<reports>/evaluate.json`` (:class:`~tasks.contracts.reports.evaluate.EvaluateReport`) with
        mAP50-95, mAP50, the 12 COCO stats and per-class AP per set;
    side effects: none besides the report.

Metrics come from faster-coco-eval (identical to pycocotools, :mod:`tasks.core.cocoeval`); detections from
:mod:`tasks.runtimes.detectors` through :func:`tasks.targets.scoring.evaluate_set`, so every artifact format is
scored by the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts.reports import write_report
from tasks.contracts.reports.evaluate import EvaluateReport
from tasks.targets.scoring import default_model_path, evaluate_set, inference_settings

log = logging.getLogger(__name__)

STAGE = "evaluate"


def run(params: Params, *, model_path: Path | None = None, report_path: Path | None = None) -> EvaluateReport:
    """Evaluate a model artifact on every set in ``evaluate.sets`` and write the report.

    Args:
        params: validated config.
        model_path: artifact to score (default: the ``train`` stage's ``best.pt``).
        report_path: where to write JSON (default ``<reports>/evaluate.json``; ``None`` keeps the default).
    """
    model_path = model_path or default_model_path(params)
    settings = inference_settings(params)
    start = time.perf_counter()
    sets = {}
    for name in params.evaluate.sets:
        root = getattr(params.base.paths, name)
        sets[name] = evaluate_set(
            model_path, root, classes=params.base.classes, settings=settings, batch=params.evaluate.batch, set_name=name
        )
        log.info(
            "%s on %s: mAP50-95 %.4f  mAP50 %.4f  (%d images)",
            model_path.name,
            name,
            sets[name].map50_95,
            sets[name].map50,
            sets[name].images,
        )
    report = EvaluateReport(
        model=str(model_path), sets=sets, params_digest=params.digest(), wall_s=round(time.perf_counter() - start, 2)
    )
    write_report(params.base.paths.reports, STAGE, report, params, path=report_path)
    return report


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="artifact to score (default: train/best.pt)")


def main(argv: list[str] | None = None) -> EvaluateReport:
    """``python -m tasks.evaluate [--params P ...] [--model PATH]``."""
    report: EvaluateReport = stage_main(
        STAGE,
        __doc__,
        run=lambda params, args: run(params, model_path=args.model),
        arguments=_arguments,
        summary=lambda report: json.dumps({name: round(s.map50_95, 4) for name, s in report.sets.items()}),
        argv=argv,
    )
    return report


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
