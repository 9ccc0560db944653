"""Stage ``cycle``: the bookkeeping of one continuous-learning cycle and its report.

Contract:
    inputs: ``<base.paths.samples>/<cycle>/`` (the cycle's folder, opened by :func:`start`); the reports the loop's
        stages wrote under ``<base.paths.reports>`` (:data:`STAGE_REPORTS`, ``predict`` to ``promote``, JSON; missing
        ones are left out of the report); the prediction log (confidence histograms); the registry (the champion's
        files, :func:`fetch_champion`); the sizes of the stores (cost);
    params: ``base``, ``cycle``;
    outputs: ``<base.paths.samples>/<cycle>/cycle.json`` (the cycle's state: ``open`` → ``waiting`` → ``closed``, with
        the outcome and the stores' sizes at opening); ``<base.paths.reports>/cycles/<cycle>/`` with ``report.md``,
        ``report.json``, ``cost.json`` (:mod:`tasks.decisions.cost`: measured hours, bytes, labels, priced by
        ``cycle.cost``) and the plots ``per_class_ap.png`` (champion vs candidate per gate set), ``confidence.png`` (the
        champion's logged confidences, sampled images vs the rest) and ``strategies.png`` (images per sampling
        strategy); ``<base.paths.reports>/cycle.json`` (the latest report); the report folder and the gate figures
        logged to the candidate's MLflow run (``cycles/<cycle>/``);
    side effects: :func:`fetch_champion` downloads the champion into ``<base.paths.models>/champion/v<version>/``
        (its deployed artifact into the version cache of :mod:`tasks.adapters.model_cache`,
        ``<base.paths.models>/registry/``) and copies its
        checkpoint to ``<base.paths.models>/parent/best.pt``, the warm start of the train stage; :func:`lease`
        holds the cycle lease of the model for a whole run of the loop (one cycle at a time).

A cycle is named by its UTC start time (``20261123T101500Z``), so names sort chronologically as the merge stage
needs. A run of the loop continues the newest cycle that is not closed (it is waiting for labels, or it failed
half-way), so the next run picks up where the last one stopped; a closed cycle is never reopened (naming it again
does nothing: no task, no model version, no dataset row).

The stage reports are read back through their typed records (``load_report``), so a report that does not match
its stage's record fails here naming the field; the figures are drawn by :mod:`tasks.core.plots`.
:func:`candidate_lineage` is what a cycle adds to its candidate's model version (the loop flow hands it to the
registry stage).

``python -m tasks.cycle --params P --cycle C [--outcome O]`` rebuilds a cycle's report from the stage reports.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tasks.adapters import log_store
from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters.model_cache import find_deployed
from tasks.adapters.registry_lease import LeaseHeldError
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts.cycle_history import HISTORY, record_cycle
from tasks.contracts.deployed import Deployed
from tasks.contracts.license_record import RECORD_TAG, LicenseRecordError, parse_record
from tasks.contracts.model_version import CHAMPION, ModelVersionInfo, check_classes
from tasks.contracts.names import check_cycle_name
from tasks.contracts.reports import load_report, load_report_json, report_path, write_report
from tasks.contracts.reports.cost import measure_stores, store_paths
from tasks.contracts.reports.cycle import CycleReport
from tasks.contracts.sample_manifest import manifest_path
from tasks.contracts.train_files import parent_path, parent_record_path, read_parent_record, write_parent
from tasks.core import plots
from tasks.decisions.cost import COST_STAGES, cost_line, price_cycle
from tasks.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

Status = Literal["open", "waiting", "closed"]
STATE_FILE = "cycle.json"
STAGE_REPORTS = COST_STAGES  # predict, sample, label, validate, merge, train, evaluate, export, gate, registry, promote


class CycleError(VisionloopError, ValueError):
    """A cycle that cannot be opened or continued (bad name, a damaged state file)."""


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
        sizes: bytes per store when the cycle opened (the cost report diffs them); ``None`` in older states.
    """

    cycle: str
    status: Status
    started_at: str
    updated_at: str
    runs: int = 1
    outcome: str | None = None
    resumed: bool = False
    sizes: dict[str, int | None] | None = None


@dataclass(frozen=True)
class ChampionFiles:
    """The champion of the registry at the start of a cycle, downloaded.

    Attributes:
        version: its model version.
        weights: its PyTorch checkpoint (the warm start).
        onnx: its FP32 ONNX file.
        deployed: the artifact it runs in production (:func:`tasks.adapters.model_cache.find_deployed`: its
            selected export artifact, or its ONNX file with the reason); the gate scores and times it against the
            candidate's.
    """

    version: str
    weights: str
    onnx: str
    deployed: Deployed | None = None

    @property
    def scored(self) -> Path:
        """What the gate scores: the deployed artifact, or the ONNX file when none is known."""
        return Path(self.deployed.path) if self.deployed is not None else Path(self.onnx)


# ------------------------------------------------------------------------------------------------- cycle state


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_cycle_name(now: dt.datetime | None = None) -> str:
    """The name of a cycle started at ``now`` (UTC): sorts chronologically."""
    return (now or _now()).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def state_path(params: Params, cycle: str) -> Path:
    """``<samples>/<cycle>/cycle.json``."""
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


def store_sizes(params: Params) -> dict[str, int | None]:
    """Bytes in each store now (:data:`tasks.contracts.reports.cost.STORES`); ``None``: an S3 log, an MLflow server."""
    log = None if params.base.storage.predictions else log_store.log_root(params)  # S3: the folder is only a mirror
    return measure_stores(store_paths(params, log=log, mlflow_uri=mlflow_adapter.tracking_uri(params)))


def write_state(params: Params, state: CycleState) -> CycleState:
    """Write the cycle's state atomically and return it."""
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
    if cycle is not None:
        check_cycle_name(cycle, error=CycleError)
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
        state = CycleState(cycle=cycle, status="open", started_at=stamp, updated_at=stamp, sizes=store_sizes(params))
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
            sizes=previous.sizes,
        )
        log.info("cycle %s: continuing (run %d, was %s)", cycle, state.runs, previous.status)
    return write_state(params, state)


@contextmanager
def lease(params: Params, *, holder: str) -> Iterator[str | None]:
    """Hold the cycle lease for a whole run of the loop (:func:`tasks.adapters.mlflow.registry_lock` with ``cycle``):
    one cycle at a time per model, across clones and hosts when the registry is a server.

    Yields ``None`` while held (released on exit, whatever happens), or, when another run holds it, the message
    that names that run, since when, and what to do: the caller then does nothing.
    """
    with ExitStack() as stack:
        try:
            stack.enter_context(mlflow_adapter.registry_lock(params, holder=holder, cycle=True))
        except LeaseHeldError as exc:
            busy = f"not starting a cycle: {exc}"
            log.warning("%s", busy)
            yield busy
            return
        yield None


def finish(params: Params, state: CycleState, *, status: Status, outcome: str) -> CycleState:
    """Record how this run left the cycle (``waiting`` keeps it open for the next run)."""
    done = replace(state, status=status, updated_at=_now().isoformat(timespec="seconds"), outcome=outcome)
    log.info("cycle %s: %s (%s)", state.cycle, status, outcome)
    return write_state(params, done)


# ------------------------------------------------------------------------------------------------ champion


def write_family_parent(params: Params, champion: ModelVersionInfo, weights: Path, folder: Path) -> Path | None:
    """Write the parent checkpoint train warm-starts from (a DVC dependency of train) and its record; its path.

    The champion's own ``weights`` when its ``model_family`` tag is ``train.family`` (or untagged). A warm start
    cannot cross model families: otherwise the newest version of ``train.family`` (downloaded below ``folder``),
    else no parent (``None``: the parent files are removed and training starts from scratch). The record
    (``parent.json``) says which, and why.
    """
    wanted, found = params.train.family, champion.tags.get("model_family", params.train.family)
    own = [] if found == wanted else mlflow_adapter.versions_tagged(params, "model_family", wanted)
    source = champion if found == wanted else max(own, key=lambda v: int(v.version), default=None)
    if source is None:
        for stale in (parent_path(params), parent_record_path(params)):
            stale.unlink(missing_ok=True)
        why = f"champion v{champion.version} is {found}, train.family is {wanted} and no {wanted} version is registered"
        write_json_atomic(parent_record_path(params), {"name": champion.name, "reason": why})  # no version: no parent
        log.info("%s: the candidate trains from scratch", why)
        return None
    if source is not champion:
        weights = mlflow_adapter.download_weights(params, source, folder / "parent")
    parent = write_parent(params, weights.read_bytes(), name=source.name, version=source.version)
    if source is not champion:
        why = f"champion v{champion.version} is {found}, train.family is {wanted}: its newest version v{source.version}"
        write_json_atomic(parent_record_path(params), {"version": source.version, "name": source.name, "reason": why})
        log.info("%s is the parent checkpoint", why)
    return parent


def fetch_champion(params: Params) -> ChampionFiles | None:
    """Download the current champion's checkpoint, ONNX file and deployed artifact; ``None`` without a champion.

    Raises:
        BrokenAliasError: the champion's version was deleted, or its files are gone: never judged as no champion.
        ClassListError: the champion was trained on other classes than ``base.classes`` (its ``classes`` tag).
    """
    try:
        info = mlflow_adapter.get_alias(params, CHAMPION)
    except mlflow_adapter.AliasNotFoundError:
        log.info("no champion in the registry: the candidate is judged on its own")
        return None
    folder = params.base.paths.models / "champion" / f"v{info.version}"
    weights = mlflow_adapter.download_weights(params, info, folder)
    onnx = mlflow_adapter.download_onnx(params, info, folder)
    # a champion trained on other classes cannot be scored on these labels: stop before anything is written
    check_classes(info.tags, params.base.classes, where=f"champion v{info.version} of {info.name}")
    deployed = find_deployed(params, info)  # the same lookup (and ONNX fallback) the predict stage runs
    parent = write_family_parent(params, info, weights, folder)  # what train warm-starts from (cycle.warm_start)
    log.info("champion v%s fetched into %s (parent checkpoint %s)", info.version, folder, parent)
    return ChampionFiles(version=info.version, weights=str(weights), onnx=str(onnx), deployed=deployed)


# ------------------------------------------------------------------------------------------------ lineage


def _parent_version(params: Params, champion: ChampionFiles | None) -> str | None:
    """The version :func:`write_family_parent` left in the parent folder: ``parent.json``'s, which differs from the
    champion's when the champion is of another family (``None`` there: no version of the family, scratch)."""
    if champion is None:
        return None
    record = read_parent_record(params)
    if record is None:
        return champion.version
    version = record.get("version")
    return str(version) if version is not None else None


def candidate_lineage(
    params: Params,
    *,
    cycle: str,
    champion: ChampionFiles | None,
    gx_report: Path,
    gate_decision: str,
) -> tuple[dict[str, str], dict[str, Path]]:
    """What the cycle adds to the candidate's version: lineage tags, and the reports it carries as files.

    Returns:
        ``(lineage, reports)``: tags (cycle, parent and champion version, warm start, gate decision) and name ->
        file (the sample, validate, merge and gate reports, the sample manifest).
    """
    reports = params.base.paths.reports
    manifest = manifest_path(params.base.paths.samples, cycle)
    parent = _parent_version(params, champion)
    lineage = {
        "cycle": cycle,
        "parent_version": parent or "none",  # whose checkpoint the parent folder (a dep of train) held
        "champion_version": champion.version if champion else "none",  # what the candidate was gated against
        "warm_start": str(bool(params.cycle.warm_start and parent)),
        "gate_decision": gate_decision,
    }  # the sample manifest, GX report and merged manifest travel as files; the manifest's MD5 is dataset_md5
    files = {
        "sample": report_path(reports, "sample"),
        "validate": gx_report,
        "merge": report_path(reports, "merge"),
        "gate": report_path(reports, "gate"),
        "sample_manifest": manifest,
    }
    return lineage, files


# -------------------------------------------------------------------------------------------------- report


def read_report(params: Params, cycle: str) -> dict[str, Any] | None:
    """The summary of a reported cycle, ``None`` before its report exists."""
    path = params.base.paths.reports / "cycles" / cycle / "report.json"
    return load_report(params.base.paths.reports, "cycle", path=path).summary if path.is_file() else None


def read_reports(reports: Path, since: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
    """The stage reports present under ``reports`` (written at or after ``since`` when given), as their JSON.

    Each is read back through its stage's typed record (:func:`tasks.contracts.reports.load_report`), so a report
    that does not match its record fails here, naming the field.
    """
    found = {}
    for name in STAGE_REPORTS:
        path = report_path(reports, name)
        if not path.is_file():
            continue
        if since is not None and dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC) < since:
            continue
        found[name] = load_report_json(reports, name)
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
        "license_verdict": (registered.get("tags") or {}).get("license.verdict"),
        "license_refused": [
            r["why"] for r in promote.get("records", []) if r.get("action") == "reject" and "license gate" in r["why"]
        ],
    }


def license_section(tags: dict[str, str]) -> list[str]:
    """The report's "Licenses" section from the candidate's ``license.*`` tags: the verdict, what was refused
    and why, the exceptions used, the obligations, and one row per component of the record."""
    if RECORD_TAG not in tags:
        return []
    try:
        record = parse_record(tags[RECORD_TAG], where="the candidate's tags")
    except LicenseRecordError as exc:
        return ["## Licenses", "", f"record unreadable: {exc}", ""]
    lines = ["## Licenses", "", f"policy **{tags.get('license.policy', '?')}**: {tags.get('license.verdict', '?')}", ""]
    for key, title in (
        ("license.refused", "Refused"),
        ("license.excepted", "Covered by an exception"),
        ("license.obligations", "Obligations"),
        ("license.warnings", "Warnings"),
    ):
        if tags.get(key):
            lines += [f"{title}:", "", *(f"- {part}" for part in tags[key].split(" | ")), ""]
    lines += ["| kind | component | license | declared in |", "|---|---|---|---|"]
    lines += [f"| {c.kind} | {c.name} | {c.license or 'UNKNOWN'} | {c.source} |" for c in record.components]
    return [*lines, ""]


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
        f"| cost | {summary.get('cost') or '-'} |",
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
    if summary.get("license_refused"):
        lines += ["Not promoted:", "", *(f"- {why}" for why in summary["license_refused"]), ""]
    lines += license_section(stages.get("registry", {}).get("tags") or {})
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(lines)


def confidence_plot(params: Params, cycle: str, bins: int) -> bytes | None:
    """Histograms of the champion's logged box confidences: images the cycle sampled vs the other images."""
    import polars as pl

    manifest = manifest_path(params.base.paths.samples, cycle)
    logs = sorted(log_store.log_root(params).rglob("*.parquet"))
    if not manifest.is_file() or not logs:
        return None
    chosen = pl.read_parquet(manifest, columns=["image_sha256", "model_version"])
    if chosen.height == 0:
        return None
    version = chosen["model_version"][0]
    rows = (
        pl.scan_parquet(logs, hive_partitioning=False, missing_columns="insert", extra_columns="ignore")
        .filter((pl.col("model_version") == version) & pl.col("confidence").is_not_null())
        .select("image_sha256", "confidence")
        .collect()
    )
    picked = rows["image_sha256"].is_in(chosen["image_sha256"].implode())
    return plots.plot_confidence(
        rows.filter(picked)["confidence"].to_numpy(),
        rows.filter(~picked)["confidence"].to_numpy(),
        label=f"confidence (champion v{version}, logged boxes)",
        bins=bins,
    )


def write_plots(params: Params, cycle: str, stages: dict[str, dict[str, Any]], folder: Path) -> list[str]:
    """Write the report's figures into ``folder``; return the files written (figures with no data are left out)."""
    written = []
    for name, data in (
        ("per_class_ap.png", plots.plot_per_class(stages.get("gate", {}).get("sets", {}))),
        ("confidence.png", confidence_plot(params, cycle, params.cycle.histogram_bins)),
        ("strategies.png", plots.plot_strategies(stages.get("sample", {}).get("by_strategy", {}))),
    ):
        if data is not None:
            write_bytes_atomic(folder / name, data)
            written.append(str(folder / name))
    return written


def _log_to_mlflow(params: Params, run_id: str, folder: Path, cycle: str, summary: dict[str, Any]) -> None:
    metrics = {}
    for who in ("champion", "candidate"):
        for name, value in summary[f"{who}_map50_95"].items():
            if value is not None:
                metrics[f"cycle.{who}.{name}.map50_95"] = float(value)
    with mlflow_adapter.mlflow_run(params, run_name="", run_id=run_id):
        mlflow_adapter.log_folder(folder, f"cycles/{cycle}")
        mlflow_adapter.log_metrics(metrics)
        mlflow_adapter.set_run_tag("cycle", cycle)


def run(params: Params, *, cycle: str, outcome: str, since: dt.datetime | None = None) -> CycleReport:
    """Write the cycle's report (markdown, JSON, plots) and log it to the candidate's MLflow run.

    Args:
        params: validated config.
        cycle: the cycle.
        outcome: how the cycle ended (the decision, or why it stopped early).
        since: only stage reports written at or after this time belong to the cycle (the loop passes the start of
            its run; ``None`` takes whatever is there).
    """
    check_cycle_name(cycle, error=CycleError)
    reports = params.base.paths.reports
    stages = read_reports(reports, since)
    folder = reports / "cycles" / cycle
    folder.mkdir(parents=True, exist_ok=True)
    opened = state.sizes if (state := read_state(params, cycle)) else None
    cost = price_cycle(cycle=cycle, stages=stages, opened=opened, now=store_sizes(params), prices=params.cycle.cost)
    write_report(reports, "cost", cost, params, path=folder / "cost.json")
    summary = summarise(cycle, outcome, stages) | {"cost": cost_line(cost)}
    figures = write_plots(params, cycle, stages, folder)
    markdown = render_markdown(summary, stages, figures)
    write_bytes_atomic(folder / "report.md", markdown.encode())
    run_id = stages.get("train", {}).get("mlflow_run_id") if "registry" in stages else None
    report = CycleReport(
        cycle=cycle,
        outcome=outcome,
        summary=summary,
        markdown=markdown,
        folder=str(folder),
        plots=figures,
        mlflow_run_id=run_id,
        stages=stages,
    )
    write_report(reports, "cycle", report, params, path=folder / "report.json")
    write_report(reports, "cycle", report, params)
    record_cycle(reports / HISTORY, summary)
    if run_id:
        _log_to_mlflow(params, run_id, folder, cycle, summary)
    log.info("cycle %s report: %s", cycle, folder / "report.md")
    return report


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycle", required=True)
    parser.add_argument("--outcome", default=None, help="default: the outcome in the cycle's state")


def _rebuild(params: Params, args: argparse.Namespace) -> CycleReport:
    state = read_state(params, args.cycle)
    outcome = args.outcome or (state.outcome if state and state.outcome else "unknown")
    return run(params, cycle=args.cycle, outcome=outcome)


def main(argv: list[str] | None = None) -> CycleReport:
    """``python -m tasks.cycle [--params P ...] --cycle C [--outcome O]``: (re)build a cycle's report."""
    return stage_main(
        "cycle", __doc__, run=_rebuild, arguments=_arguments, summary=lambda report: report.markdown, argv=argv
    )


if __name__ == "__main__":
    main()
