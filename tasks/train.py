"""Stage ``train``: fit a detector on the training set, behind a small trainer protocol.

Contract:
    inputs: the merged data ``<base.paths.merged>/{manifest.parquet,shards/}`` when the merge stage has merged
        production labels (:func:`tasks.merge.use_merged`), else YOLO-format ``base.paths.train`` and
        ``base.paths.val``; optional warm-start checkpoint ``train.weights``;
    params: ``base`` (classes, imgsz, device, seed, paths), ``train``, ``merge.enabled``;
    outputs: ``<models>/train/best.pt``, ``<reports>/train.json`` (final metrics, MLflow run id);
    side effects: an MLflow run (params, per-epoch metrics, artifacts) in the ``registry`` experiment;
        Ultralytics' scratch folder ``<models>/train/ultralytics/``; the dataset view ``<models>/train/dataset/``
        (hard-linked source sets, or the extracted-shard cache + image lists) with ``dataset.json`` (which data).

A model family is a :class:`Trainer` in :data:`TRAINERS`, chosen by ``train.family``; YOLO (Ultralytics)
is the first, trained offline from a model yaml or warm-started from a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from tasks import merge, registry
from tasks.config import Params, load_params, stage_argparser
from tasks.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

EpochLogger = Callable[[int, dict[str, float]], None]
DATASET_RECORD = "dataset.json"


@dataclass(frozen=True)
class TrainResult:
    """What a trainer hands on: the checkpoint and where it came from."""

    weights: str
    family: str
    license: str
    base_weights: str
    epochs: int
    final_metrics: dict[str, float]
    mlflow_run_id: str
    wall_s: float


class Trainer(Protocol):
    """A model family: how to train it and under which license its weights fall."""

    family: str
    license: str

    def fit(self, params: Params, *, out_dir: Path, on_epoch: EpochLogger) -> tuple[Path, dict[str, float]]:
        """Train and return the best checkpoint and its final validation metrics."""
        ...


def ultralytics_args(params: Params, *, data_yaml: Path, scratch: Path) -> dict[str, Any]:
    """The arguments of Ultralytics' ``train()``: ``pretrained`` keeps a warm-start checkpoint's weights."""
    cfg = params.train
    return {
        "data": str(data_yaml),
        "epochs": cfg.epochs,
        "imgsz": params.base.imgsz,
        "batch": cfg.batch,
        "device": params.base.device,
        "workers": cfg.workers,
        "seed": params.base.seed,
        "deterministic": True,
        "lr0": cfg.lr0,
        "patience": cfg.patience or cfg.epochs,
        "project": str(scratch.resolve()),
        "name": "run",
        "exist_ok": True,
        "plots": False,
        "amp": params.base.device != "cpu",
        "verbose": False,
        # False builds the architecture from the yaml (scratch); True keeps the loaded checkpoint (warm start)
        "pretrained": cfg.weights is not None,
    } | cfg.extra_args


class YoloTrainer:
    """Ultralytics YOLO trained offline: architecture from a yaml, or warm start from a ``.pt``."""

    family = "yolo"
    license = "AGPL-3.0"

    def fit(self, params: Params, *, out_dir: Path, on_epoch: EpochLogger) -> tuple[Path, dict[str, float]]:
        from tasks.env import configure_ultralytics

        configure_ultralytics()
        from ultralytics import YOLO

        cfg = params.train
        data_yaml = out_dir / "data.yaml"
        train_entry, val_entry = _dataset_views(params, dataset_record_path(params).parent)
        write_bytes_atomic(
            data_yaml,
            yaml.safe_dump(
                {
                    "path": str(Path.cwd()),
                    "train": str(train_entry),
                    "val": str(val_entry),
                    "names": dict(enumerate(params.base.classes)),
                }
            ).encode(),
        )
        model = YOLO(str(cfg.weights) if cfg.weights else cfg.model)

        def _epoch_end(trainer: Any) -> None:
            if trainer.epoch >= cfg.epochs:  # Ultralytics' final validation of best.pt calls this once more
                return
            metrics = {_metric_key(k): float(v) for k, v in (trainer.metrics or {}).items()}
            metrics.update(
                {
                    f"train/{k}": float(v)
                    for k, v in trainer.label_loss_items(trainer.tloss).items()
                    if not k.startswith("train/")
                }
                if trainer.tloss is not None
                else {}
            )
            metrics.update({f"lr/{k}": float(v) for k, v in trainer.lr.items()})
            on_epoch(trainer.epoch + 1, metrics)

        model.add_callback("on_fit_epoch_end", _epoch_end)
        args = ultralytics_args(params, data_yaml=data_yaml, scratch=out_dir / "ultralytics")
        model.train(**args)
        trainer: Any = model.trainer
        best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
        final = {_metric_key(k): float(v) for k, v in (trainer.metrics or {}).items()}
        return best, final


def _dataset_views(params: Params, root: Path) -> tuple[Path, Path]:
    """Return Ultralytics' ``train`` and ``val`` entries: merged image lists, or mirrors of the source sets.

    Merged (:func:`tasks.merge.use_merged`): shards extracted once into ``root/shards/<md5>/`` and
    ``root/train.txt`` listing each training image ``repeat`` times (recency weighting), ``root/val.txt``.
    Otherwise (bootstrap, ``merge.enabled: false``): hard-linked mirrors of ``base.paths.train``/``val``.
    ``root/dataset.json`` records which, with the merged manifest's MD5 for lineage.
    """
    paths = params.base.paths
    if merge.use_merged(params):
        for stale in ("train", "val"):  # mirrors of an earlier source-mode run
            shutil.rmtree(root / stale, ignore_errors=True)
        start = time.perf_counter()
        view = merge.materialize_view(paths.merged, root)
        info: dict[str, Any] = {"mode": "merged", "manifest": str(paths.merged / merge.MANIFEST)} | asdict(view)
        log.info(
            "train on merged data: %d images as %d samples, %d val (%d shards extracted, %d reused) in %.1f s",
            view.train_images,
            view.train_samples,
            view.val_images,
            view.shards_extracted,
            view.shards_reused,
            time.perf_counter() - start,
        )
        entries = (view.train, view.val)
    else:
        entries = (
            _dataset_view(paths.train, root / "train") / "images",
            _dataset_view(paths.val, root / "val") / "images",
        )
        info = {"mode": "source", "train": str(paths.train), "val": str(paths.val)}
    write_json_atomic(root / DATASET_RECORD, info)
    return entries


def dataset_record_path(params: Params) -> Path:
    """Where training records which data it read: ``mode`` (``merged``/``source``), ``manifest_md5`` when merged."""
    return params.base.paths.models / "train" / "dataset" / DATASET_RECORD


def _dataset_view(source: Path, view: Path) -> Path:
    """Mirror ``source/images`` and ``source/labels`` under ``view`` with hard links (copies across devices).

    Ultralytics resolves links and writes a ``labels.cache`` beside the labels folder; training from a
    mirror keeps that file in the models folder, so the (DVC-tracked, possibly read-only) data set is never
    written to.
    """
    shutil.rmtree(view, ignore_errors=True)
    for name in ("images", "labels"):
        folder = Path(source) / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: training folder missing (base.paths)")
        (view / name).mkdir(parents=True)
        for file in folder.iterdir():
            try:
                os.link(file, view / name / file.name)
            except OSError:
                shutil.copy2(file, view / name / file.name)
    return view.absolute()


def plot_curves(results_csv: Path, out_png: Path) -> Path | None:
    """Plot per-epoch losses and validation mAP from Ultralytics' ``results.csv``; ``None`` if absent."""
    if not results_csv.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(results_csv).rename(columns=str.strip)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for column in [c for c in frame.columns if c.startswith("train/") and c.endswith("_loss")]:
        left.plot(frame["epoch"], frame[column], label=column.removeprefix("train/"))
    left.set(title="training loss", xlabel="epoch")
    left.legend()
    for column, label in (("metrics/mAP50-95(B)", "mAP50-95"), ("metrics/mAP50(B)", "mAP50")):
        if column in frame:
            right.plot(frame["epoch"], frame[column], label=label)
    right.set(title="validation", xlabel="epoch", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def _metric_key(key: str) -> str:
    return key.replace("(B)", "").replace("metrics/", "val/")


TRAINERS: dict[str, Trainer] = {"yolo": YoloTrainer()}


def parent_path(params: Params) -> Path:
    """Where the loop leaves the champion's checkpoint that the next training warm-starts from."""
    return params.base.paths.models / "parent" / "best.pt"


def effective_params(params: Params) -> Params:
    """``params`` with the warm start applied: ``train.weights`` if set, else the loop's parent checkpoint.

    With ``cycle.warm_start`` and a checkpoint at :func:`parent_path` (the champion a cycle fetched), training
    starts from it for ``cycle.epochs``; the parent folder is a DVC dependency of the stage, so ``dvc repro`` after
    a cycle retrains the same candidate. Without one (before the first cycle) training starts from the yaml.
    """
    cfg = params.train
    parent = parent_path(params)
    if cfg.weights is not None or not params.cycle.warm_start or not parent.is_file():
        return params
    update = {"weights": parent, "epochs": params.cycle.epochs or cfg.epochs}
    return params.model_copy(update={"train": cfg.model_copy(update=update)})


def run(params: Params) -> TrainResult:
    """Train the configured family and write ``best.pt`` and ``reports/train.json``."""
    params = effective_params(params)
    trainer = TRAINERS[params.train.family]
    out_dir = params.base.paths.models / "train"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base_weights = str(params.train.weights) if params.train.weights else f"scratch:{params.train.model}"
    with registry.mlflow_run(
        params,
        run_name=f"train-{trainer.family}",
        tags={
            "stage": "train",
            "model_family": trainer.family,
            "license": trainer.license,
            "base_weights": base_weights,
        },
    ) as run_id:
        registry.log_params(
            params.train.model_dump(mode="json") | {"imgsz": params.base.imgsz, "seed": params.base.seed}
        )
        best, final = trainer.fit(params, out_dir=out_dir, on_epoch=registry.log_epoch)
        target = out_dir / "best.pt"
        tmp = target.with_name(".best.pt.tmp")
        shutil.copyfile(best, tmp)
        tmp.replace(target)
        results_csv = best.parent.parent / "results.csv"
        extras = [results_csv, plot_curves(results_csv, params.base.paths.reports / "train.png")]
        registry.log_artifacts([target] + [p for p in extras if p is not None and p.exists()], "train")
    result = TrainResult(
        weights=str(target),
        family=trainer.family,
        license=trainer.license,
        base_weights=base_weights,
        epochs=params.train.epochs,
        final_metrics=final,
        mlflow_run_id=run_id,
        wall_s=round(time.perf_counter() - start, 2),
    )
    write_json_atomic(params.base.paths.reports / "train.json", asdict(result))
    log.info("trained %s for %d epochs in %.0f s -> %s", trainer.family, result.epochs, result.wall_s, target)
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.train [--params P]``."""
    from tasks.env import apply_env

    args = stage_argparser("train", __doc__).parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(load_params(args.params))
    print(json.dumps({"weights": result.weights, "mlflow_run_id": result.mlflow_run_id}))


if __name__ == "__main__":
    main()
