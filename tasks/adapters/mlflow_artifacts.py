"""MLflow artifacts, file by file: the forget stage's rewrite of every stored artifact of the tracking store.

Beside :mod:`tasks.adapters.mlflow` (runs, versions, aliases). :func:`edit_artifacts` walks the artifacts of every
run of every experiment and of every logged model (MLflow 3 keeps a pyfunc model's files there), hands each file's
bytes to an ``edit`` function and stores what it returns: the same bytes leave the file alone, other bytes replace
it (delete, then log the new file at the same path), ``None`` deletes it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tasks.adapters.mlflow import client, tracking_uri
from tasks.config import Params

log = logging.getLogger(__name__)

Edit = Callable[[str, bytes], "bytes | None"]
"""``edit(artifact path, bytes)`` -> the bytes to keep (the same object: unchanged) or None (delete)."""


def _artifact_roots(params: Params) -> Iterator[tuple[str, str]]:
    """``(label, artifact URI)`` of every run and logged model in the store."""
    mlflow_client = client(params)
    experiments = mlflow_client.search_experiments(view_type=3)  # ViewType.ALL: deleted experiments keep files too
    ids = [e.experiment_id for e in experiments]
    for experiment in ids:
        for run in mlflow_client.search_runs([experiment], run_view_type=3, max_results=50_000):
            yield f"run {run.info.run_id}", run.info.artifact_uri
    if ids:
        for model in mlflow_client.search_logged_models(experiment_ids=ids):
            yield f"model {model.model_id}", model.artifact_location


def _files(repo: Any, path: str | None = None) -> Iterator[str]:
    for item in repo.list_artifacts(path):
        if item.is_dir:
            yield from _files(repo, item.path)
        else:
            yield item.path


def edit_artifacts(params: Params, edit: Edit, *, dry: bool = False) -> list[str]:
    """Apply ``edit`` to every artifact file of the store; returns ``"<run or model>:<path> (rewritten|deleted)"``.

    Args:
        params: the store (``MLFLOW_TRACKING_URI`` or ``registry.tracking_uri``).
        edit: see :data:`Edit`.
        dry: only report what ``edit`` would change.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = tracking_uri(params)
    changed: list[str] = []
    for label, root in _artifact_roots(params):
        repo = get_artifact_repository(root, tracking_uri=uri)
        for path in list(_files(repo)):
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(repo.download_artifacts(path, dst_path=tmp))
                data = local.read_bytes()
                new = edit(path, data)
                if new is data or new == data:
                    continue
                changed.append(f"{label}:{path} ({'deleted' if new is None else 'rewritten'})")
                if dry:
                    continue
                repo.delete_artifacts(path)
                if new is not None:
                    local.write_bytes(new)
                    folder = path.rpartition("/")[0] or None
                    repo.log_artifact(str(local), artifact_path=folder)
            log.info("mlflow: %s", changed[-1])
    return changed
