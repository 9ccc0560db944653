"""Stage ``cycle``: the bookkeeping of one continuous-learning cycle and its report.

Contract:
    inputs: ``<base.paths.samples>/<cycle>/`` (the cycle's folder, opened by :func:`start`); the reports the loop's
        stages wrote under ``<base.paths.reports>`` (``sample``, ``label``, ``validate``, ``merge``, ``train``,
        ``export``, ``gate``, ``registry``, ``promote`` JSON; missing ones are left out of the report); the prediction
        log (confidence histograms); the registry (the champion's files, :func:`fetch_champion`);
    params: ``base``, ``cycle``;
    outputs: ``<base.paths.samples>/<cycle>/cycle.json`` (the cycle's state: ``open`` → ``waiting`` → ``closed``,
        with the outcome); ``<base.paths.reports>/cycles/<cycle>/`` with ``report.md``, ``report.json`` and the plots
        ``per_class_ap.png`` (champion vs candidate per gate set), ``confidence.png`` (the champion's logged
        confidences, sampled images vs the rest) and ``strategies.png`` (images per sampling strategy);
        ``<base.paths.reports>/cycle.json`` (the latest report); the report folder and the gate figures logged to
        the candidate's MLflow run (``cycles/<cycle>/``);
    side effects: :func:`fetch_champion` downloads the champion into ``<base.paths.models>/champion/v<version>/``
        (its deployed artifact into the predict stage's cache, ``<base.paths.models>/registry/``) and copies its
        checkpoint to ``<base.paths.models>/parent/best.pt``, the warm start of the train stage.

A cycle is named by its UTC start time (``20261123T101500Z``), so names sort chronologically as the merge stage
needs. A run of the loop continues the newest cycle that is not closed (it is waiting for labels, or it failed
half-way), so the next run picks up where the last one stopped; a closed cycle is never reopened (naming it again
does nothing: no task, no model version, no dataset row).

``python -m tasks.cycle --params P --cycle C [--outcome O]`` rebuilds a cycle's report from the stage reports.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks import registry
from tasks.config import Params, load_params, stage_argparser
from tasks.io import write_bytes_atomic, write_json_atomic
from tasks.predict import find_deployed
from tasks.runtimes.detectors import Deployed
from tasks.train import parent_path

log = logging.getLogger(__name__)

Status = Literal["open", "waiting", "closed"]
STATE_FILE = "cycle.json"
_CYCLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")  # as the label and sample stages
STAGE_REPORTS = ("sample", "label", "validate", "merge", "train", "export", "gate", "registry", "promote")


class CycleError(ValueError):
    """A cycle that cannot be opened or continued (bad name, closed already)."""


@dataclass(frozen=True)
class CycleState:
    """``<samples>/<cycle>/cycle.json``.

    Attributes:
        cycle: the cycle's name.
        status: ``open`` (stages still to run), ``waiting`` (for labels), ``closed`` (decided or nothing to do).
        started_at, updated_at: ISO UTC times.
        runs: how many loop runs worked on the cycle.
        outcome: how it ended (``promote``, ``reject``, ``waiting for labels``, ``nothing to label``, ...).
        resumed: this run continues a cycle an earlier run opened.
    """

    cycle: str
    status: Status
    started_at: str
    updated_at: str
    runs: int = 1
    outcome: str | None = None
    resumed: bool = False


@dataclass(frozen=True)
class ChampionFiles:
    """The champion of the registry at the start of a cycle, downloaded.

    Attributes:
        version: its model version.
        weights: its PyTorch checkpoint (the warm start).
        onnx: its FP32 ONNX file (the gate scores it).
        deployed: the artifact it runs in production (:func:`tasks.predict.find_deployed`: its selected export
            artifact, or its ONNX file with the reason); the gate times it against the candidate's.
    """

    version: str
    weights: str
    onnx: str
    deployed: Deployed | None = None


@dataclass(frozen=True)
class CycleReport:
    """What ``reports/cycles/<cycle>/report.json`` holds (besides the stage reports it summarises)."""

    cycle: str
    outcome: str
    summary: dict[str, Any]
    markdown: str
    folder: str
    plots: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None


# ------------------------------------------------------------------------------------------------- cycle state


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_cycle_name(now: dt.datetime | None = None) -> str:
    """The name of a cycle started at ``now`` (UTC): sorts chronologically."""
    return (now or _now()).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def state_path(params: Params, cycle: str) -> Path:
    return params.base.paths.samples / cycle / STATE_FILE


def read_state(params: Params, cycle: str) -> CycleState | None:
    """The cycle's state, ``None`` when it has none; a damaged state file is an error naming it."""
    path = state_path(params, cycle)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return CycleState(**{k: raw[k] for k in CycleState.__dataclass_fields__ if k in raw})
    except (ValueError, TypeError, KeyError) as exc:
        raise CycleError(f"{path}: not a cycle state ({exc}); fix or delete it") from exc


def write_state(params: Params, state: CycleState) -> CycleState:
    write_json_atomic(state_path(params, state.cycle), asdict(state))
    return state


def open_cycles(params: Params) -> list[CycleState]:
    """Cycles with a state that is not ``closed``, oldest first."""
    root = params.base.paths.samples
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        state = read_state(params, folder.name)
        if state is not None and state.status != "closed":
            found.append(state)
    return found


def start(params: Params, *, cycle: str | None = None, now: dt.datetime | None = None) -> CycleState:
    """Open the cycle this run works on: ``cycle`` if given, else the newest unclosed one, else a new one.

    A closed ``cycle`` is returned as it is (``status == "closed"``): the caller does nothing more with it.

    Raises:
        CycleError: ``cycle`` is not a safe folder name.
    """
    if cycle is not None and not _CYCLE.match(cycle):
        raise CycleError(f"cycle {cycle!r}: use letters, digits and . _ = - (it names folders)")
    stamp = (now or _now()).isoformat(timespec="seconds")
    if cycle is None:
        unclosed = open_cycles(params)
        if len(unclosed) > 1:
            log.warning("unclosed cycles %s: continuing the newest", [s.cycle for s in unclosed])
        previous = unclosed[-1] if unclosed else None
        cycle = previous.cycle if previous else new_cycle_name(now)
    else:
        previous = read_state(params, cycle)
    if previous is None:
        state = CycleState(cycle=cycle, status="open", started_at=stamp, updated_at=stamp)
        log.info("cycle %s: opened", cycle)
    elif previous.status == "closed":
        log.info(
            "cycle %s is closed (%s): nothing to do; omit the cycle name to start a new one", cycle, previous.outcome
        )
        return previous
    else:
        state = CycleState(
            cycle=cycle,
            status="open",
            started_at=previous.started_at,
            updated_at=stamp,
            runs=previous.runs + 1,
            outcome=None,
            resumed=True,
        )
        log.info("cycle %s: continuing (run %d, was %s)", cycle, state.runs, previous.status)
    return write_state(params, state)


def finish(params: Params, state: CycleState, *, status: Status, outcome: str) -> CycleState:
    """Record how this run left the cycle (``waiting`` keeps it open for the next run)."""
    done = CycleState(
        cycle=state.cycle,
        status=status,
        started_at=state.started_at,
        updated_at=_now().isoformat(timespec="seconds"),
        runs=state.runs,
        outcome=outcome,
        resumed=state.resumed,
    )
    log.info("cycle %s: %s (%s)", state.cycle, status, outcome)
    return write_state(params, done)


# ------------------------------------------------------------------------------------------------ champion


def fetch_champion(params: Params) -> ChampionFiles | None:
    """Download the current champion's checkpoint, ONNX file and deployed artifact; ``None`` without a champion."""
    info = registry.find_alias(params, registry.CHAMPION)
    if info is None:
        log.info("no champion in the registry: the candidate is judged on its own")
        return None
    folder = params.base.paths.models / "champion" / f"v{info.version}"
    weights = registry.download_weights(params, info, folder)
    onnx = registry.download_onnx(params, info, folder)
    deployed = find_deployed(params, info)  # the same lookup (and ONNX fallback) the predict stage runs
    parent = parent_path(params)  # what train warm-starts from (cycle.warm_start); a DVC dependency of train
    parent.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(parent, weights.read_bytes())
    write_json_atomic(parent.with_name("parent.json"), {"version": info.version, "name": info.name})
    log.info("champion v%s fetched into %s (parent checkpoint %s)", info.version, folder, parent)
    return ChampionFiles(version=info.version, weights=str(weights), onnx=str(onnx), deployed=deployed)


# -------------------------------------------------------------------------------------------------- report


def read_report(params: Params, cycle: str) -> dict[str, Any] | None:
    """The summary of a reported cycle, ``None`` before its report exists."""
    path = params.base.paths.reports / "cycles" / cycle / "report.json"
    return json.loads(path.read_text())["summary"] if path.is_file() else None


def read_reports(reports: Path, since: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
    """The stage reports present under ``reports`` (written at or after ``since`` when given)."""
    found = {}
    for name in STAGE_REPORTS:
        path = reports / f"{name}.json"
        if not path.is_file():
            continue
        if since is not None and dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC) < since:
            continue
        try:
            found[name] = json.loads(path.read_text())
        except ValueError as exc:
            raise CycleError(f"{path}: not JSON ({exc})") from exc
    return found


def summarise(cycle: str, outcome: str, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the summary table (one row per cycle in the demo)."""
    sample, label, validate = stages.get("sample", {}), stages.get("label", {}), stages.get("validate", {})
    merge, gate, export = stages.get("merge", {}), stages.get("gate", {}), stages.get("export", {})
    registered, promote = stages.get("registry", {}), stages.get("promote", {})
    sets = gate.get("sets", {})

    def maps(who: str) -> dict[str, float | None]:
        return {name: s.get(f"{who}_map50_95") for name, s in sets.items()}

    return {
        "cycle": cycle,
        "outcome": outcome,
        "sampled": sample.get("selected"),
        "sampled_by_strategy": {k: v.get("selected", 0) for k, v in sample.get("by_strategy", {}).items()},
        "labeled": label.get("labeled"),
        "pending": label.get("pending"),
        "quarantined": validate.get("quarantined"),
        "merged_images": merge.get("images"),
        "train_images": merge.get("train_images"),
        "holdout_images": merge.get("holdout_images"),
        "champion_map50_95": maps("champion"),
        "candidate_map50_95": maps("candidate"),
        "intervals": {name: s.get("interval") for name, s in sets.items()},
        "decision": gate.get("decision"),
        "failed_rules": [r["message"] for r in gate.get("reasons", []) if not r.get("passed", True)],
        "deploy_artifact": (export.get("selected") or {}).get("target"),
        "candidate_version": registered.get("version"),
        "alias_moves": promote.get("moves", {}),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_markdown(summary: dict[str, Any], stages: dict[str, dict[str, Any]], plots: list[str]) -> str:
    """The human report: outcome, numbers per stage, the gate's reasons, links to the plots."""
    lines = [f"# Cycle {summary['cycle']}: {summary['outcome']}", ""]
    by_strategy = ", ".join(f"{k} {v}" for k, v in summary["sampled_by_strategy"].items() if v) or "-"
    lines += [
        "| stage | result |",
        "|---|---|",
        f"| sample | {summary['sampled'] if summary['sampled'] is not None else '-'} images ({by_strategy}) |",
        f"| label | {summary['labeled'] if summary['labeled'] is not None else '-'} labeled, "
        f"{summary['pending'] if summary['pending'] is not None else '-'} pending |",
        f"| validate | {summary['quarantined'] if summary['quarantined'] is not None else '-'} quarantined |",
        f"| merge | {summary['merged_images'] or '-'} images, {summary['train_images'] or '-'} train, "
        f"{summary['holdout_images'] or '-'} holdout |",
        f"| export | deploys {summary['deploy_artifact'] or '-'} |",
        f"| registry | candidate v{summary['candidate_version'] or '-'} |",
        f"| decision | {summary['decision'] or '-'}; alias moves {summary['alias_moves'] or '-'} |",
        "",
    ]
    sets = stages.get("gate", {}).get("sets", {})
    if sets:
        lines += [
            "## Gate: candidate vs champion on the same sets",
            "",
            "| set | images | champion | candidate | difference [CI] |",
            "|---|---|---|---|---|",
        ]
        for name, s in sets.items():
            ci = s.get("interval")
            diff = f"{ci['estimate']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]" if ci else "-"
            lines.append(
                f"| {name} | {s['images']} | {_fmt(s.get('champion_map50_95'))} | "
                f"{_fmt(s.get('candidate_map50_95'))} | {diff} |"
            )
        lines += ["", "Rules:", ""]
        for reason in stages["gate"].get("reasons", []):
            lines.append(f"- {'pass' if reason.get('passed') else '**FAIL**'} `{reason['code']}`: {reason['message']}")
        lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import io

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _paired_bars(ax: Any, names: list[str], pairs: dict[str, list[float | None]], colors: tuple[str, str]) -> None:
    """Two bars per name (``pairs``: label -> values, two labels), a legend, names as ticks."""
    x = np.arange(len(names))
    for offset, (label, values), color in zip((-0.2, 0.2), pairs.items(), colors, strict=True):
        ax.bar(x + offset, [np.nan if v is None else v for v in values], 0.4, label=label, color=color)
    ax.set_xticks(x, names, rotation=30)
    ax.legend(fontsize=8)


def plot_per_class(gate: dict[str, Any]) -> bytes | None:
    """Grouped bars: per-class AP50-95 of champion and candidate, one panel per gate set."""
    sets = gate.get("sets", {})
    if not sets:
        return None
    fig, axes = _pyplot().subplots(1, len(sets), figsize=(6 * len(sets), 3.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets.items(), strict=True):
        classes = list(s["per_class"])
        pairs = {who: [s["per_class"][c].get(who) for c in classes] for who in ("champion", "candidate")}
        _paired_bars(ax, classes, pairs, ("#8c8c8c", "#2a7ab9"))
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} ({s['images']} images)")
        ax.set_ylabel("AP50-95")
    return _png(fig)


def plot_confidence(params: Params, cycle: str, bins: int) -> bytes | None:
    """Histograms of the champion's logged box confidences: images the cycle sampled vs the other images."""
    import polars as pl

    manifest = params.base.paths.samples / cycle / "manifest.parquet"
    logs = sorted(params.base.paths.predictions.rglob("*.parquet"))
    if not manifest.is_file() or not logs:
        return None
    chosen = pl.read_parquet(manifest, columns=["image_sha256", "model_version"])
    if chosen.height == 0:
        return None
    version = chosen["model_version"][0]
    rows = (
        pl.scan_parquet(logs, hive_partitioning=False)
        .filter((pl.col("model_version") == version) & pl.col("confidence").is_not_null())
        .select("image_sha256", "confidence")
        .collect()
    )
    picked = rows["image_sha256"].is_in(chosen["image_sha256"].implode())
    fig, ax = _pyplot().subplots(figsize=(6, 3.4))
    edges = np.linspace(0, 1, bins + 1).tolist()
    ax.hist(rows.filter(~picked)["confidence"].to_numpy(), bins=edges, alpha=0.6, density=True, label="not sampled")
    ax.hist(rows.filter(picked)["confidence"].to_numpy(), bins=edges, alpha=0.6, density=True, label="sampled")
    ax.set_xlabel(f"confidence (champion v{version}, logged boxes)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_strategies(sample: dict[str, Any]) -> bytes | None:
    """Bars: candidates and selected images per sampling strategy."""
    by = sample.get("by_strategy", {})
    if not by:
        return None
    names = list(by)
    fig, ax = _pyplot().subplots(figsize=(6, 3.4))
    pairs = {key: [by[n].get(key, 0) for n in names] for key in ("candidates", "selected")}
    _paired_bars(ax, names, pairs, ("#c9c9c9", "#2a7ab9"))
    ax.set_ylabel("images")
    return _png(fig)


def _log_to_mlflow(params: Params, run_id: str, folder: Path, cycle: str, summary: dict[str, Any]) -> None:
    import mlflow

    metrics = {}
    for who in ("champion", "candidate"):
        for name, value in summary[f"{who}_map50_95"].items():
            if value is not None:
                metrics[f"cycle.{who}.{name}.map50_95"] = float(value)
    with registry.mlflow_run(params, run_name="", run_id=run_id):
        mlflow.log_artifacts(str(folder), artifact_path=f"cycles/{cycle}")
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.set_tag("cycle", cycle)


def run(params: Params, *, cycle: str, outcome: str, since: dt.datetime | None = None) -> CycleReport:
    """Write the cycle's report (markdown, JSON, plots) and log it to the candidate's MLflow run.

    Args:
        params: validated config.
        cycle: the cycle.
        outcome: how the cycle ended (the decision, or why it stopped early).
        since: only stage reports written at or after this time belong to the cycle (the loop passes the start of
            its run; ``None`` takes whatever is there).
    """
    if not _CYCLE.match(cycle):
        raise CycleError(f"cycle {cycle!r}: use letters, digits and . _ = - (it names folders)")
    reports = params.base.paths.reports
    stages = read_reports(reports, since)
    folder = reports / "cycles" / cycle
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(cycle, outcome, stages)
    plots = []
    for name, data in (
        ("per_class_ap.png", plot_per_class(stages.get("gate", {}))),
        ("confidence.png", plot_confidence(params, cycle, params.cycle.histogram_bins)),
        ("strategies.png", plot_strategies(stages.get("sample", {}))),
    ):
        if data is not None:
            write_bytes_atomic(folder / name, data)
            plots.append(str(folder / name))
    markdown = render_markdown(summary, stages, plots)
    write_bytes_atomic(folder / "report.md", markdown.encode())
    run_id = stages.get("train", {}).get("mlflow_run_id") if "registry" in stages else None
    report = CycleReport(
        cycle=cycle,
        outcome=outcome,
        summary=summary,
        markdown=markdown,
        folder=str(folder),
        plots=plots,
        mlflow_run_id=run_id,
    )
    payload = asdict(report) | {"stages": stages}
    write_json_atomic(folder / "report.json", payload)
    write_json_atomic(reports / "cycle.json", payload)
    if run_id:
        _log_to_mlflow(params, run_id, folder, cycle, summary)
    log.info("cycle %s report: %s", cycle, folder / "report.md")
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.cycle [--params P] --cycle C [--outcome O]``: (re)build a cycle's report."""
    from tasks.env import apply_env

    parser = stage_argparser("cycle", __doc__)
    parser.add_argument("--cycle", required=True)
    parser.add_argument("--outcome", default=None, help="default: the outcome in the cycle's state")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    state = read_state(params, args.cycle)
    outcome = args.outcome or (state.outcome if state and state.outcome else "unknown")
    report = run(params, cycle=args.cycle, outcome=outcome)
    print(report.markdown)


if __name__ == "__main__":
    main()
