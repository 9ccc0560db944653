"""The lineage a registered model version is tagged with: which data, which code.

- :func:`training_data_lineage`: ``dataset_md5`` / ``dataset_mode`` of the data the current checkpoint was trained
  on, from the train stage's data record (:mod:`tasks.contracts.train_files`) or, without one, the merge report;
- :func:`dataset_md5`: DVC's content hash of a file or folder, as ``dvc.lock`` holds it;
- :func:`git_commit`: the commit of the working tree, ``-dirty`` when tracked files differ.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tasks.config import Params
from tasks.contracts.train_files import read_dataset_record


def dataset_md5(path: Path) -> str:
    """DVC's content hash of a file or folder (``<md5>.dir`` for folders), as in ``dvc.lock``."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(Path(path).resolve()), fs, "md5", dry_run=True)
    return str(obj.hash_info.value)


def _merge_report_lineage(params: Params) -> tuple[str | None, str | None]:
    """``(mode, manifest_md5)`` of the merge report when training reads the merged data; ``(None, None)`` else."""
    from tasks.contracts.merged_manifest import use_merged
    from tasks.contracts.reports import load_report, report_path

    reports = params.base.paths.reports
    if not use_merged(params) or not report_path(reports, "merge").is_file():
        return None, None
    merged = load_report(reports, "merge")
    return merged.mode, merged.manifest_md5


def training_data_lineage(params: Params) -> dict[str, str]:
    """``dataset_md5`` and ``dataset_mode`` of the data the current checkpoint was trained on.

    Merged data (what ``train`` recorded in its ``dataset.json``; without that record, the merge report when
    training reads the merged data): the MD5 of the merged manifest, which names every shard by its MD5.
    Otherwise DVC's hash of ``base.paths.train``.
    """
    record = read_dataset_record(params)
    if record is not None:
        mode, md5 = record.get("mode"), record.get("manifest_md5")
    else:
        mode, md5 = _merge_report_lineage(params)
    if mode == "merged" and md5:
        return {"dataset_md5": str(md5), "dataset_mode": "merged"}
    return {"dataset_md5": dataset_md5(params.base.paths.train), "dataset_mode": "source"}


def git_commit(cwd: Path | None = None) -> str:
    """HEAD commit, with ``-dirty`` when tracked files differ; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
