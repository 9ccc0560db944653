"""Stage ``compress``: structured channel pruning of the trained checkpoint, then a short fine-tune.

Contract:
    inputs: ``<models>/train/best.pt`` (opened only when ``reports/train.json`` records its hash), the training
        data the train stage read (the merged data in a cycle, else ``base.paths.train``/``val``);
    params: ``base`` (imgsz, classes, device, seed, paths), ``train`` (the family and its ``train.<family>``
        trainer settings, ``batch``), ``merge.enabled``, ``compress``;
    outputs: ``<reports>/compress.json`` on every run (:class:`~tasks.contracts.reports.compress.CompressReport`:
        ``off``, ``skipped``, ``dropped`` or ``compressed`` with the lineage: parent checkpoint and hash, method,
        ratio, MACs and parameters before and after, fine-tune settings and metrics) and ``<models>/compressed/``
        (a DVC output): ``best.pt`` (the compressed checkpoint) when compressed, and always ``lineage.json`` (the
        report's status, reason, parent and checkpoint hashes), so the folder exists whatever happened;
    side effects: with a fine-tune, an MLflow run (settings, per-epoch metrics, the report) in the ``registry``
        experiment; the scratch folder ``<models>/compress/`` (the data view, the family's training run).

Off by default (``compress.enabled: false``): DVC has no optional stages, so the stage still runs and records a
pass-through that the export stage depends on either way. A family that cannot be pruned (RF-DETR) is skipped with
its reason; settings that would leave a layer without channels are refused before anything is pruned; a fine-tune
whose loss stops being finite drops the candidate (``dropped``, with the reason): the unpruned path still ships.

The pruning itself is family-neutral (:mod:`tasks.models.pruning`, torch-pruning's dependency graph); the family
prepares its network (:meth:`~tasks.models.base.ModelFamily.prunable`) and fine-tunes it with its own trainer
(:meth:`~tasks.models.base.ModelFamily.fine_tune`, logit distillation from the unpruned model with
``compress.distill``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tasks.adapters import mlflow as mlflow_adapter
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts.checkpoints import CHECKPOINT_SHA256
from tasks.contracts.reports import write_report
from tasks.contracts.reports.compress import CompressReport
from tasks.contracts.train_files import dataset_views
from tasks.core.hashing import file_sha256
from tasks.io import write_json_atomic
from tasks.models import family
from tasks.models.base import Fitted, TrainData
from tasks.models.pruning import FineTuneDiverged, NotPrunable, Prunable, PruneResult, prune, ratio_for_macs

log = logging.getLogger(__name__)

CHECKPOINT = "best.pt"
LINEAGE = "lineage.json"


class CheckpointMissing(VisionloopError, FileNotFoundError):
    """The checkpoint to compress does not exist (the train stage has not run)."""


def compressed_path(params: Params) -> Path:
    """Where the compressed checkpoint lands: ``<models>/compressed/best.pt`` (absent unless compressed)."""
    return params.base.paths.models / "compressed" / CHECKPOINT


def scratch_dir(params: Params) -> Path:
    """The stage's working folder (data view, the fine-tune's run): ``<models>/compress/``, not a DVC output."""
    return params.base.paths.models / "compress"


def _finish(params: Params, report: CompressReport, start: float) -> CompressReport:
    if report.status != "compressed":
        compressed_path(params).unlink(missing_ok=True)  # no stale candidate from an earlier run reaches export
    report = replace(report, wall_s=round(time.perf_counter() - start, 2))
    lineage = {k: getattr(report, k) for k in ("status", "reason", "parent", "parent_sha256", "checkpoint_sha256")}
    write_json_atomic(compressed_path(params).with_name(LINEAGE), lineage | {"ratio": report.ratio})
    write_report(params.base.paths.reports, "compress", report, params)
    log.info("compress: %s%s", report.status, f" ({report.reason})" if report.reason else "")
    return report


def _pruned(base: CompressReport, result: PruneResult, *, kept_whole: str, prune_s: float) -> CompressReport:
    return replace(
        base,
        ratio=round(result.ratio, 4),
        macs_before=result.macs_before,
        macs_after=result.macs_after,
        params_before=result.params_before,
        params_after=result.params_after,
        layers=result.layers,
        kept_whole=kept_whole,
        prune_s=prune_s,
    )


def _prune(network: Prunable, params: Params) -> tuple[Prunable, PruneResult]:
    """Prune at ``compress.ratio``, or search the ratio for ``compress.macs_reduction``."""
    cfg = params.compress
    if cfg.ratio is not None:
        result = prune(network, cfg.ratio, cfg.round_to)
    else:
        assert cfg.macs_reduction is not None  # config: exactly one is set
        network, result = ratio_for_macs(network, cfg.macs_reduction, cfg.round_to)
    log.info(
        "compress: ratio %.3f: MACs %.1f M -> %.1f M (%.0f %% kept), parameters %.2f M -> %.2f M",
        result.ratio,
        result.macs_before / 1e6,
        result.macs_after / 1e6,
        100 * result.macs_kept,
        result.params_before / 1e6,
        result.params_after / 1e6,
    )
    return network, result


def _keep(fitted: Fitted, params: Params) -> str:
    """Copy the fine-tuned checkpoint to ``<models>/compressed/best.pt`` atomically; its SHA-256."""
    target = compressed_path(params)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(fitted.checkpoint, tmp)
    sha256 = file_sha256(tmp)
    tmp.replace(target)
    return sha256


def run(params: Params) -> CompressReport:
    """Prune and fine-tune ``<models>/train/best.pt`` as ``compress`` says; write ``reports/compress.json``.

    Raises:
        CheckpointMissing: compress is on and the trained checkpoint is missing.
        ZeroChannelsError: the ratio (with ``round_to``) would leave a layer with no channel (nothing pruned).
        UnreachableTarget: ``macs_reduction`` cannot be reached without emptying a layer.
    """
    start = time.perf_counter()
    cfg = params.compress
    out_dir = scratch_dir(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    compressed_path(params).parent.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        reason = "compress.enabled is false: export ships from the unpruned checkpoint"
        return _finish(params, CompressReport(status="off", reason=reason), start)
    parent = params.base.paths.models / "train" / CHECKPOINT
    if not parent.is_file():
        raise CheckpointMissing(f"{parent}: checkpoint missing; run the train stage first (python -m tasks.train)")
    model = family(params)
    base = CompressReport(
        status="skipped",
        parent=str(parent),
        parent_sha256=file_sha256(parent),
        family=model.name,
        method=cfg.method,
        target={"ratio": cfg.ratio, "macs_reduction": cfg.macs_reduction},
        round_to=cfg.round_to,
    )
    try:
        network = model.prunable(parent, params)
    except NotPrunable as exc:
        return _finish(params, replace(base, reason=str(exc)), start)
    network, result = _prune(network, params)
    prune_s = round(time.perf_counter() - start, 2)
    pruned = _pruned(base, result, kept_whole=network.keep_why, prune_s=prune_s)
    settings: dict[str, Any] = {"epochs": cfg.epochs, "distill": cfg.distill, "distill_weight": cfg.distill_weight}
    settings |= {"batch": params.train.batch, "imgsz": params.base.imgsz, "args": dict(cfg.fine_tune_args)}
    tags = {"stage": "compress", "model_family": model.name, "parent_sha256": str(base.parent_sha256)}
    with mlflow_adapter.mlflow_run(params, run_name=f"compress-{model.name}", tags=tags) as run_id:
        mlflow_adapter.log_params({f"compress.{k}": v for k, v in settings.items()} | {"compress.ratio": result.ratio})
        train, val = dataset_views(params, out_dir / "dataset")
        data = TrainData(train=train, val=val, classes=tuple(params.base.classes))
        tuned = time.perf_counter()
        try:
            fitted = model.fine_tune(
                params,
                module=network.module,
                teacher=parent if cfg.distill else None,
                data=data,
                out_dir=out_dir,
                on_epoch=mlflow_adapter.log_epoch,
            )
        except FineTuneDiverged as exc:
            reason = f"{exc}; the compressed candidate is dropped, export ships from the unpruned checkpoint"
            report = replace(pruned, status="dropped", reason=reason, fine_tune=settings, mlflow_run_id=run_id)
            return _finish(params, report, start)
        fine_tune_s = round(time.perf_counter() - tuned, 2)
        sha256 = _keep(fitted, params)
        mlflow_adapter.set_run_tag(CHECKPOINT_SHA256, sha256)
        report = replace(
            pruned,
            status="compressed",
            reason="",
            weights=str(compressed_path(params)),
            checkpoint_sha256=sha256,
            fine_tune=settings,
            final_metrics=fitted.metrics,
            fine_tune_s=fine_tune_s,
            mlflow_run_id=run_id,
        )
        report = _finish(params, report, start)
        mlflow_adapter.log_artifacts([params.base.paths.reports / "compress.json"], "compress")
    return report


def main(argv: list[str] | None = None) -> CompressReport:
    """``python -m tasks.compress [--params P ...]``: prints the status, ratio and MACs kept."""
    return stage_main(
        "compress",
        __doc__,
        run=lambda params, args: run(params),
        summary=lambda r: json.dumps(
            {"status": r.status, "ratio": r.ratio, "weights": r.weights, "reason": r.reason or None}
        ),
        argv=argv,
    )


if __name__ == "__main__":
    main()
