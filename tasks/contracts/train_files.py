"""Files of ``<models>/`` that cross stage boundaries around training.

- the parent checkpoint ``<models>/parent/best.pt`` (+ ``parent.json``): the cycle stage writes the champion's
  checkpoint there, the train stage warm-starts from it (a DVC dependency of ``train``);
- the training data record ``<models>/train/dataset/dataset.json``: the train stage writes which data it read
  (``mode``: ``merged`` / ``source``, ``manifest_md5`` when merged), the registry stage reads it for the
  version's lineage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.io import write_bytes_atomic, write_json_atomic

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
