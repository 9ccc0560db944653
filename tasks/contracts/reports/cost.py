"""``reports/cycles/<cycle>/cost.json``: what one cycle cost, measured, and priced where the user set prices.

The cycle stage fills a :class:`CycleCost` (:func:`tasks.decisions.cost.price_cycle`) and writes it with
:func:`tasks.contracts.reports.write_report` (``"cost"``, ``path=<cycle folder>/cost.json``) beside ``report.json``;
the folder is logged to the candidate's MLflow run with the report. Readers use
``load_report(reports, "cost", path=...)``.

The storage figures diff two snapshots of the stores' sizes (:func:`measure_stores` over :func:`store_paths`): one
taken when the cycle opened (kept in the cycle's state, ``<samples>/<cycle>/cycle.json``, key ``sizes``) and one
when the report is written.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tasks.config import Params

# store -> what it holds; the cost report groups them (tasks.decisions.cost.STORE_GROUPS)
STORES = ("labels", "merged", "holdouts", "samples", "quarantine", "models", "predictions", "mlflow", "mlflow_db")


@dataclass(frozen=True)
class ComputeCost:
    """Wall time of the cycle's stages on the loop's machine.

    Attributes:
        wall_s: seconds per stage, from each stage report's own ``wall_s`` (the latest run of it in the cycle).
        missing: stage -> why it has no time (no report written in the cycle, or a report without ``wall_s``).
        hours: the sum of ``wall_s``, in hours (instance-hours: wall time, not CPU time).
        cost: ``hours`` x ``cycle.cost.instance_price_per_hour`` (``None``: no price set).
    """

    wall_s: dict[str, float]
    missing: dict[str, str]
    hours: float
    cost: float | None = None


@dataclass(frozen=True)
class StorageCost:
    """Bytes the cycle added to the stores (negative: freed), from the snapshots at its opening and at the report.

    Attributes:
        opened: bytes per store when the cycle opened (``None``: its state has no snapshot, opened before sizes were
            recorded); a store ``None`` inside was not measured (a remote MLflow store).
        now: bytes per store when the report was written.
        added: ``now - opened`` per store (``None`` where either side is unmeasured).
        by_group: ``added`` summed per group (data, models, logs, mlflow).
        total: the sum of the measured groups (``None``: nothing measured on both sides).
        cost_per_month: ``total`` in GB (10^9 bytes) x ``cycle.cost.storage_price_per_gb_month``.
    """

    opened: dict[str, int | None] | None
    now: dict[str, int | None]
    added: dict[str, int | None] | None
    by_group: dict[str, int | None]
    total: int | None
    cost_per_month: float | None = None


@dataclass(frozen=True)
class LabelCost:
    """Images labeled in the cycle (the label report's ``labeled``, all runs; quarantined ones were paid for too).

    Attributes:
        images: ``None`` when the cycle wrote no label report.
        cost: ``images`` x ``cycle.cost.label_price_per_image``.
    """

    images: int | None
    cost: float | None = None


@dataclass(frozen=True)
class InferenceCost:
    """What 1 k inferences of the cycle's selected export artifact cost, from its measured throughput.

    The throughput is the export stage's network-only figure (pre/post-processing are not in it) at ``batch`` with
    ``threads`` intra-op threads on the machine the export ran on: price that machine's hour.

    Attributes:
        artifact: the selected target (``None``: nothing selected, or no export report in the cycle).
        throughput_ips: images per second at ``batch``.
        batch: batch size of the throughput run.
        threads: intra-op threads the runtime was given.
        latency_p50_ms: batch-1 median latency.
        instance_s_per_1k: seconds of the machine per 1 000 images at ``throughput_ips``.
        cost_per_1k: ``instance_s_per_1k`` / 3600 x ``cycle.cost.instance_price_per_hour``.
    """

    artifact: str | None = None
    throughput_ips: float | None = None
    batch: int | None = None
    threads: int | None = None
    latency_p50_ms: float | None = None
    instance_s_per_1k: float | None = None
    cost_per_1k: float | None = None


@dataclass(frozen=True)
class CycleCost:
    """What ``reports/cycles/<cycle>/cost.json`` holds.

    Attributes:
        cycle: the cycle's name.
        currency: ``cycle.cost.currency`` (the label every money figure carries).
        prices: the ``cycle.cost`` prices used (``None``: not set, the money figure it makes is ``None``).
        compute, storage, labels, inference: the measured quantities and their prices.
        total: labels + compute of this cycle, when both have a price (storage is per month, inference per 1 k).
        notes: what was not measured and why, in words.
    """

    cycle: str
    currency: str
    prices: dict[str, float | None]
    compute: ComputeCost
    storage: StorageCost
    labels: LabelCost
    inference: InferenceCost
    total: float | None = None
    notes: list[str] = field(default_factory=list)


def store_paths(params: Params, *, log: Path | None, mlflow_uri: str) -> dict[str, Path | None]:
    """The folder of each store in :data:`STORES`; ``None`` for one that is not a local folder.

    Args:
        params: the paths of the data and model stores.
        log: the prediction log's folder (``None``: the log is on S3, its local folder only a mirror).
        mlflow_uri: the MLflow store; a local one (``sqlite:``) keeps its artifacts in ``registry.artifact_root`` and
            its runs in the database file (``mlflow_db``), a ``file:`` store both in its folder, a server on a disk
            this machine cannot measure (``None``).
    """
    paths = params.base.paths
    mlflow = database = None
    if mlflow_uri.startswith("sqlite:///"):
        mlflow, database = params.registry.artifact_root, Path(mlflow_uri.removeprefix("sqlite:///"))
    elif mlflow_uri.startswith("file:"):
        mlflow = Path(mlflow_uri.removeprefix("file://").removeprefix("file:"))
    return {
        "labels": paths.labels,
        "merged": paths.merged,
        "holdouts": paths.holdouts,
        "samples": paths.samples,
        "quarantine": paths.quarantine,
        "models": paths.models,
        "predictions": log,
        "mlflow": mlflow,
        "mlflow_db": database,
    }


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files below ``path`` (0 when it does not exist); links are not followed."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):  # os.walk: no error for a missing folder, no link followed
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed while walking (a temp file of a running stage)
                continue
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def measure_stores(stores: Mapping[str, Path | None]) -> dict[str, int | None]:
    """Bytes in each store (``None`` for a store that is not a local folder)."""
    return {name: None if path is None else folder_bytes(Path(path)) for name, path in stores.items()}
