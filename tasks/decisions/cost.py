"""What a cycle cost: measured hours, bytes, labels and inference speed, times the prices the user set.

Pure, table-tested maths (``tests/unit/test_cost.py``) the cycle stage applies to its stage reports and to the
store-size snapshots (:mod:`tasks.contracts.reports.cost`). A price that is not set (``None``) gives no money figure:
the quantity is still reported, and the report line says "no price set".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter

from tasks.config import CostParams, VisionloopError
from tasks.contracts.reports.cost import ComputeCost, CycleCost, InferenceCost, LabelCost, StorageCost
from tasks.contracts.reports.export import ExportReport

# the loop's stages whose reports carry their own wall time, in loop order (the cycle report itself is not timed)
COST_STAGES = (
    "predict",
    "sample",
    "label",
    "validate",
    "merge",
    "train",
    "evaluate",
    "export",
    "gate",
    "registry",
    "promote",
)
# group -> the stores of tasks.contracts.reports.cost.STORES it sums
STORE_GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("labels", "merged", "holdouts", "samples", "quarantine"),
    "models": ("models",),
    "logs": ("predictions",),
    "mlflow": ("mlflow", "mlflow_db"),
}
GB = 10**9  # storage is billed in decimal gigabytes
NO_REPORT = "no report written in this cycle"
NO_WALL = "its report has no wall_s"


class CostError(VisionloopError, ValueError):
    """A price that cannot be used (negative)."""


def priced(quantity: float | None, price: float | None, *, key: str) -> float | None:
    """``quantity x price``; ``None`` when either is unknown.

    Raises:
        CostError: ``price`` is negative (names ``cycle.cost.<key>``).
    """
    if price is not None and price < 0:
        raise CostError(f"cycle.cost.{key} = {price}: a price cannot be negative; set it >= 0, or null for no price")
    if quantity is None or price is None:
        return None
    return round(quantity * price, 6)


def stage_times(
    stages: Mapping[str, Mapping[str, Any]], names: Sequence[str] = COST_STAGES
) -> tuple[dict[str, float], dict[str, str]]:
    """Each stage's own ``wall_s`` from its report, and why the others have none.

    Args:
        stages: stage -> its report as JSON (only the reports written in the cycle).
        names: the stages to account for.

    Returns:
        ``(wall_s, missing)``: stage -> seconds, and stage -> reason for each of ``names`` without a time.
    """
    wall: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in names:
        report = stages.get(name)
        value = None if report is None else report.get("wall_s")
        if report is None:
            missing[name] = NO_REPORT
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            missing[name] = NO_WALL
        else:
            wall[name] = float(value)
    return wall, missing


def storage_added(
    opened: Mapping[str, int | None] | None, now: Mapping[str, int | None]
) -> dict[str, int | None] | None:
    """``now - opened`` per store of ``now`` (``None`` where either side was not measured); ``None`` without
    an opening snapshot."""
    if opened is None:
        return None
    added: dict[str, int | None] = {}
    for name, value in now.items():
        before = opened.get(name)
        added[name] = None if value is None or before is None else value - before
    return added


def group_bytes(added: Mapping[str, int | None] | None) -> dict[str, int | None]:
    """``added`` summed per :data:`STORE_GROUPS` group (``None``: no store of the group measured)."""
    groups: dict[str, int | None] = {}
    for group, stores in STORE_GROUPS.items():
        measured = [value for store in stores if (value := (added or {}).get(store)) is not None]
        groups[group] = sum(measured) if measured else None
    return groups


def inference_cost(export: ExportReport | None, price_per_hour: float | None) -> InferenceCost:
    """1 k inferences of the selected artifact at its measured throughput (export report, network only)."""
    if export is None or not export.selected:
        return InferenceCost()
    target = export.selected["target"]
    check = export.check(target)
    speed = check.speed if check is not None else None
    if speed is None or speed.throughput_ips <= 0:
        return InferenceCost(artifact=target)
    seconds = 1000.0 / speed.throughput_ips
    return InferenceCost(
        artifact=target,
        throughput_ips=speed.throughput_ips,
        batch=speed.batch,
        threads=speed.threads,
        latency_p50_ms=speed.latency_ms.get("p50"),
        instance_s_per_1k=round(seconds, 6),
        cost_per_1k=priced(seconds / 3600, price_per_hour, key="instance_price_per_hour"),
    )


def price_cycle(
    *,
    cycle: str,
    stages: Mapping[str, Mapping[str, Any]],
    opened: Mapping[str, int | None] | None,
    now: Mapping[str, int | None],
    prices: CostParams,
) -> CycleCost:
    """The cost record of a cycle.

    Args:
        cycle: the cycle's name.
        stages: stage -> its report as JSON, only those written in the cycle (``wall_s`` per stage, ``label``'s
            ``labeled``, ``export``'s selected artifact and its speed).
        opened: bytes per store when the cycle opened (``None``: not recorded).
        now: bytes per store now.
        prices: ``cycle.cost``.

    Raises:
        CostError: a negative price.
    """
    wall, missing = stage_times(stages)
    hours = round(sum(wall.values()) / 3600, 6)
    compute = ComputeCost(
        wall_s=wall,
        missing=missing,
        hours=hours,
        cost=priced(hours, prices.instance_price_per_hour, key="instance_price_per_hour"),
    )
    added = storage_added(opened, now)
    by_group = group_bytes(added)
    measured = [v for v in by_group.values() if v is not None]
    total_bytes = sum(measured) if added is not None and measured else None
    storage = StorageCost(
        opened=dict(opened) if opened is not None else None,
        now=dict(now),
        added=added,
        by_group=by_group,
        total=total_bytes,
        cost_per_month=priced(
            None if total_bytes is None else total_bytes / GB,
            prices.storage_price_per_gb_month,
            key="storage_price_per_gb_month",
        ),
    )
    labeled = (stages.get("label") or {}).get("labeled")
    labels = LabelCost(images=labeled, cost=priced(labeled, prices.label_price_per_image, key="label_price_per_image"))
    export = TypeAdapter(ExportReport).validate_python(stages["export"]) if "export" in stages else None
    inference = inference_cost(export, prices.instance_price_per_hour)
    total = None if labels.cost is None or compute.cost is None else round(labels.cost + compute.cost, 6)
    return CycleCost(
        cycle=cycle,
        currency=prices.currency,
        prices={
            "label_price_per_image": prices.label_price_per_image,
            "instance_price_per_hour": prices.instance_price_per_hour,
            "storage_price_per_gb_month": prices.storage_price_per_gb_month,
        },
        compute=compute,
        storage=storage,
        labels=labels,
        inference=inference,
        total=total,
        notes=_notes(opened, now, labels, inference, export),
    )


def _notes(
    opened: Mapping[str, int | None] | None,
    now: Mapping[str, int | None],
    labels: LabelCost,
    inference: InferenceCost,
    export: ExportReport | None,
) -> list[str]:
    notes = []
    if opened is None:
        notes.append("the cycle's state has no store sizes (opened before they were recorded): storage added unknown")
    if "predictions" in now and now["predictions"] is None:
        notes.append("the prediction log is on S3 (its local folder is only a mirror): logs not measured")
    if "mlflow" in now and now["mlflow"] is None:
        notes.append("the MLflow store is a server: its artifacts and runs not measured")
    if labels.images is None:
        notes.append("no label report in this cycle: labels bought unknown")
    if export is None:
        notes.append("no export report in this cycle: no artifact to price inferences for")
    elif inference.artifact is None:
        notes.append("the export selected no artifact: no inference cost")
    elif inference.throughput_ips is None:
        notes.append(f"the selected artifact {inference.artifact} was not timed: no inference cost")
    return notes


# ------------------------------------------------------------------------------------------------ report line


def _bytes(value: int) -> str:
    for unit, size in (("GB", GB), ("MB", 10**6)):
        if abs(value) >= size:
            return f"{value / size:+.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{value / 1000:+.1f} kB"


def _money(value: float, currency: str) -> str:
    return f"{value:,.2f} {currency}" if abs(value) >= 1 else f"{value:.3g} {currency}"


def _compute_part(compute: ComputeCost, currency: str) -> str:
    """``compute 0.210 h (756 s, 8 stages) = ...; not timed: predict (no report); export, registry (no wall_s)``."""
    if compute.wall_s:
        text = f"compute {compute.hours:.3f} h ({sum(compute.wall_s.values()):.0f} s, {len(compute.wall_s)} stages)"
    else:
        text = "compute not timed"
    if compute.cost is not None:
        text += f" = {_money(compute.cost, currency)}"
    why = {NO_REPORT: "no report", NO_WALL: "no wall_s"}
    missing = [
        f"{', '.join(s for s, r in compute.missing.items() if r == reason)} ({short})"
        for reason, short in why.items()
        if reason in compute.missing.values()
    ]
    return text + (f", not timed: {'; '.join(missing)}" if missing else "")


def cost_line(cost: CycleCost) -> str:
    """One line for the cycle report: the measured quantities, and money where a price is set."""
    cur = cost.currency
    parts = [_compute_part(cost.compute, cur)]
    storage = cost.storage
    if storage.total is None:
        parts.append("storage added unknown")
    else:
        groups = ", ".join(f"{g} {'not measured' if v is None else _bytes(v)}" for g, v in storage.by_group.items())
        money = f" = {_money(storage.cost_per_month, cur)}/month" if storage.cost_per_month is not None else ""
        parts.append(f"storage {_bytes(storage.total)}{money} ({groups})")
    if cost.labels.images is not None:
        money = f" = {_money(cost.labels.cost, cur)}" if cost.labels.cost is not None else ""
        parts.append(f"{cost.labels.images} labels{money}")
    inference = cost.inference
    if inference.instance_s_per_1k is not None:
        money = f" = {_money(inference.cost_per_1k, cur)}" if inference.cost_per_1k is not None else ""
        parts.append(
            f"1 k inferences {inference.instance_s_per_1k:.2f} instance-s{money} "
            f"({inference.artifact}, {inference.throughput_ips:.0f} img/s network only)"
        )
    if cost.total is not None:
        parts.append(f"cycle total {_money(cost.total, cur)} (labels + compute)")
    unset = [key for key, price in cost.prices.items() if price is None]
    if len(unset) == len(cost.prices):
        parts.append("no price set")
    elif unset:
        parts.append(f"no price set for {', '.join(unset)}")
    return "; ".join(parts)
