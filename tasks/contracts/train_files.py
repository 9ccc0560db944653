"""Files of ``<models>/`` that cross stage boundaries around training.

- the parent checkpoint ``<models>/parent/best.pt`` (+ ``parent.json``): the cycle stage writes the champion's
  checkpoint there, the train stage warm-starts from it (a DVC dependency of ``train``);
- the training data record ``<models>/train/dataset/dataset.json``: the train stage writes which data it read
  (``mode``: ``merged`` / ``source``, ``manifest_md5`` when merged), the registry stage reads it for the
  version's lineage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.contracts import merged_manifest
from tasks.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

DATASET_RECORD = "dataset.json"
PARENT_RECORD = "parent.json"


def dataset_record_path(params: Params) -> Path:
    """Where training records which data it read: ``mode`` (``merged``/``source``), ``manifest_md5`` when merged."""
    return params.base.paths.models / "train" / "dataset" / DATASET_RECORD


def read_dataset_record(params: Params) -> dict[str, Any] | None:
    """The training data record, ``None`` before training wrote one."""
    path = dataset_record_path(params)
    return json.loads(path.read_text()) if path.is_file() else None


def parent_path(params: Params) -> Path:
    """Where the loop leaves the champion's checkpoint that the next training warm-starts from."""
    return params.base.paths.models / "parent" / "best.pt"


def parent_record_path(params: Params) -> Path:
    """``parent.json`` beside the parent checkpoint: which registered version it is (``name``, ``version``)."""
    return parent_path(params).with_name(PARENT_RECORD)


def read_parent_record(params: Params) -> dict[str, Any] | None:
    """``parent.json`` (``name``, ``version`` unless training starts from scratch, ``reason``); ``None`` when absent."""
    path = parent_record_path(params)
    return json.loads(path.read_text()) if path.is_file() else None


def write_parent(params: Params, weights: bytes, *, name: str, version: str) -> Path:
    """Write the parent checkpoint and its record (which registered version it is), each atomically."""
    parent = parent_path(params)
    write_bytes_atomic(parent, weights)
    write_json_atomic(parent_record_path(params), {"version": version, "name": name})
    return parent


def dataset_views(params: Params, root: Path) -> tuple[Path, Path]:
    """The training data in YOLO layout: merged image lists, or mirrors of the source sets.

    Merged (:func:`tasks.contracts.merged_manifest.use_merged`): shards extracted once into ``root/shards/<md5>/``
    and ``root/train.txt`` listing each training image ``repeat`` times (recency weighting), ``root/val.txt``.
    Otherwise (bootstrap, ``merge.enabled: false``): hard-linked mirrors of ``base.paths.train``/``val``.
    ``root/dataset.json`` records which, with the merged manifest's MD5 for lineage.
    """
    paths = params.base.paths
    if merged_manifest.use_merged(params):
        for stale in ("train", "val"):  # mirrors of an earlier source-mode run
            shutil.rmtree(root / stale, ignore_errors=True)
        start = time.perf_counter()
        view = merged_manifest.materialize_view(paths.merged, root)
        info: dict[str, Any] = {"mode": "merged", "manifest": str(paths.merged / merged_manifest.MANIFEST)}
        info |= asdict(view)
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
            _mirror(paths.train, root / "train") / "images",
            _mirror(paths.val, root / "val") / "images",
        )
        images = [sum(1 for p in entry.iterdir() if p.is_file()) for entry in entries]  # the mirrors' images
        info = {
            "mode": "source",
            "train": str(paths.train),
            "val": str(paths.val),
            "sources": {merged_manifest.HISTORICAL: sum(images)},
        }
    write_json_atomic(root / DATASET_RECORD, info)
    return entries


def _mirror(source: Path, view: Path) -> Path:
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
