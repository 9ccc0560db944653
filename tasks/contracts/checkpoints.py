"""Which ``.pt`` checkpoints may be unpickled: those the project produced, or those params names.

Ultralytics checkpoints are pickles of whole model objects (they do not load with ``torch.load(weights_only=True)``),
so opening one runs whatever code it carries. Before any checkpoint is opened, its SHA-256 must be one the project
recorded itself or one ``train.trusted_checkpoints`` lists:

- ``reports/train.json`` ``checkpoint_sha256``: the checkpoint the train stage wrote (``<models>/train/best.pt``);
- ``reports/compress.json`` ``checkpoint_sha256``: the pruned and fine-tuned one (``<models>/compressed/best.pt``);
- the ``checkpoint_sha256`` tag of a registered model version (the registry stage copies the train report's):
  the warm start from the champion (``<models>/parent/best.pt``) and any registered version's checkpoint;
- ``train.trusted_checkpoints``: a foreign checkpoint someone vetted (64 lowercase hex digits each).

:func:`check_trusted` is the pure rule; :func:`require_trusted` hashes the file and applies it; the caller builds
the trusted set with :func:`trusted_checkpoints` (local records) plus what the registry records (read through
:mod:`tasks.adapters.mlflow`). Nothing here opens a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from tasks.config import Params, VisionloopError
from tasks.contracts.reports import report_path
from tasks.core.hashing import file_sha256

CHECKPOINT_SHA256 = "checkpoint_sha256"  # train report field and model version tag
ALLOW_LIST = "train.trusted_checkpoints"
PRODUCERS = ("train", "compress")  # stages whose report records the checkpoint they wrote


class UntrustedCheckpointError(VisionloopError, ValueError):
    """A checkpoint the project did not produce and params does not allow: it is never unpickled."""


def check_trusted(path: Path, sha256: str, trusted: Mapping[str, str]) -> str:
    """Where ``sha256`` is recorded (``trusted`` maps hash -> record); the pure rule of this module.

    Raises:
        UntrustedCheckpointError: the hash is in no record; the message names the file, its hash and the fix.
    """
    found = trusted.get(sha256)
    if found is not None:
        return found
    raise UntrustedCheckpointError(
        f"{path}: checkpoint sha256 {sha256} was not produced by this project (not in reports/train.json nor in "
        f"the {CHECKPOINT_SHA256} tag of a registered model version) and is not allowed by {ALLOW_LIST}; "
        "Ultralytics checkpoints are pickles that run code when opened, so it was not opened. If you trust it, add "
        f"'{sha256}' to {ALLOW_LIST} in params.yaml"
    )


def require_trusted(path: Path, trusted: Mapping[str, str]) -> str:
    """Hash ``path`` (reading bytes only, never unpickling) and return its SHA-256 when ``trusted`` records it.

    Raises:
        UntrustedCheckpointError: see :func:`check_trusted`.
        FileNotFoundError: ``path`` does not exist.
    """
    sha256 = file_sha256(path)
    check_trusted(path, sha256, trusted)
    return sha256


def trusted_checkpoints(params: Params, *, registered: Mapping[str, str] | None = None) -> dict[str, str]:
    """Hash -> where it is recorded: ``train.trusted_checkpoints``, the train and compress reports, ``registered``.

    Args:
        params: config (the allow-list, the reports folder).
        registered: hashes the registry records (``{sha256: "model <name> v<version>"}``), read by the caller.
    """
    found = {sha: ALLOW_LIST for sha in params.train.trusted_checkpoints}
    for stage in PRODUCERS:
        report = report_path(params.base.paths.reports, stage)
        try:
            recorded = json.loads(report.read_text()).get(CHECKPOINT_SHA256)
        except (OSError, ValueError, AttributeError):  # no report yet, or not one the stage wrote
            recorded = None
        if isinstance(recorded, str) and recorded:
            found[recorded] = str(report)
    return found | dict(registered or {})
