"""Stage ``monitor``: windows of the prediction log vs the champion's baseline → drift, the retrain trigger, the
watch over a fresh promotion, and the shadow's agreement.

Contract:
    inputs: the prediction log ``<base.paths.predictions>`` (v1 logs too: their input side is "not available"),
        the registered version behind ``monitor.alias`` and its baseline (the MLflow artifact
        ``monitor/baseline.parquet`` of its training run: its own predictions and input statistics on
        ``monitor.baseline.sets``; computed on demand, with a log line, when it has none), the alias audit trail
        ``promote.audit_log`` (which promotion to watch), ``<reports>/monitor/state.json`` (the trigger's memory);
    params: ``base``, ``registry``, ``predict`` (conf, shadow alias), ``export.speed.static_shapes``,
        ``promote.audit_log``, ``monitor``;
    outputs: ``<reports>/monitor.json`` (:class:`tasks.contracts.reports.monitor.MonitorReport`; its
        ``flagged_batches`` feed the ``drift`` sampling strategy), the Prometheus textfile
        ``<reports>/<monitor.metrics.textfile>``, plots ``<reports>/monitor/*.png``, MLflow metrics over time (one run
        per champion version in the ``monitor.experiment`` experiment, step = window);
    side effects: the baseline artifact logged to the champion's run when it was computed here.

What the stage does not do: start a cycle or roll back. It decides (pure functions in
:mod:`tasks.decisions.monitoring`); the monitor flow acts on the decision (``run_deployment`` / a subflow, the
rollback stage) and records what happened with :func:`record_trigger` / :func:`record_rollback`.

``python -m tasks.monitor [--params P ...]`` runs it; ``--serve`` serves the textfile on 127.0.0.1 (``make metrics``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.adapters import log_store
from tasks.adapters import metrics as metrics_adapter
from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters.model_cache import cached_onnx, open_deployed
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import prediction_log
from tasks.contracts.audit import newest_promotion
from tasks.contracts.model_version import ModelVersionInfo
from tasks.contracts.monitor_frames import Frames, frames, select
from tasks.contracts.reports import load_report, write_report
from tasks.contracts.reports.monitor import MonitorReport, Trigger, Watch, WatchWindow, Window
from tasks.contracts.yolo_labels import DatasetError, list_images
from tasks.core import plots
from tasks.core.bootstrap import paired_bootstrap
from tasks.decisions import monitoring
from tasks.io import write_bytes_atomic, write_json_atomic
from tasks.targets.gate_scoring import score_model
from tasks.targets.log_rows import image_records
from tasks.targets.scoring import detection_cache_of, predict_settings

log = logging.getLogger(__name__)

BASELINE_FOLDER = "monitor"
BASELINE_FILE = "baseline.parquet"
BASELINE_TAG = "monitor.baseline"


class MonitorError(VisionloopError, RuntimeError):
    """The monitor cannot judge: no champion rows in the log, a broken baseline, a damaged state file."""


# ------------------------------------------------------------------------------------------------- state


def state_path(params: Params) -> Path:
    """``<reports>/monitor/state.json``: the trigger's memory between runs."""
    return params.base.paths.reports / "monitor" / "state.json"


def read_state(params: Params) -> dict[str, Any]:
    """The trigger's memory (``{}`` before the first run); a damaged file is an error naming it."""
    path = state_path(params)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise MonitorError(f"{path}: not JSON ({exc}); fix or delete it (the trigger forgets its cool-down)") from None
    if not isinstance(data, dict):
        raise MonitorError(f"{path}: expected an object, got {type(data).__name__}; fix or delete it")
    return data


def _write_state(params: Params, state: dict[str, Any]) -> None:
    write_json_atomic(state_path(params), state)


# ---------------------------------------------------------------------------------------------- baseline


def compute_baseline(params: Params, info: ModelVersionInfo) -> pa.Table:
    """The version's predictions and input statistics on ``monitor.baseline.sets``, as prediction log rows.

    Rows carry ``batch = baseline/<set>``, ``source = baseline`` and the version's alias ``champion``.

    Raises:
        MonitorError: a configured set has no images.
    """
    detector, _ = open_deployed(params, info, predict_settings(params))
    folders = {"val": params.base.paths.val, "golden": params.base.paths.golden, "train": params.base.paths.train}
    tables = []
    for name in params.monitor.baseline.sets:
        try:
            images = list_images(folders[name] / "images")[: params.monitor.baseline.max_images]
        except DatasetError as exc:
            raise MonitorError(f"baseline set {name!r}: {exc} (monitor.baseline.sets)") from None
        if not images:
            raise MonitorError(f"baseline set {name!r}: no images in {folders[name] / 'images'}")
        records = image_records(
            detector, images, batch_size=params.predict.batch_size, source="baseline", desc=f"baseline {name}"
        )
        tables.append(
            prediction_log.rows_to_table(
                records,
                batch=f"baseline/{name}",
                date=dt.datetime.now(dt.UTC).date(),
                model_name=info.name,
                model_version=info.version,
                model_alias=params.monitor.alias,
                class_names=list(params.base.classes),
            )
        )
    return pa.concat_tables(tables)


def store_baseline(params: Params, info: ModelVersionInfo, table: pa.Table) -> str:
    """Log the baseline to the version's run (``monitor/baseline.parquet``) and tag the version; the artifact path."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / BASELINE_FILE
        pq.write_table(table, path, compression="zstd")
        artifact = mlflow_adapter.log_version_file(params, info, path, BASELINE_FOLDER)
    mlflow_adapter.set_version_tags(params, info.version, {BASELINE_TAG: artifact})
    return artifact


def ensure_baseline(params: Params, info: ModelVersionInfo) -> tuple[pa.Table, str]:
    """The version's stored baseline, or one computed now and stored (logged); returns (rows, ``artifact|computed``)."""
    artifact = info.tags.get(BASELINE_TAG)
    if artifact:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow_adapter.download_run_file(params, info.run_id, artifact, Path(tmp))
                return prediction_log.upgrade(pq.read_table(path)), "artifact"
            except Exception as exc:  # a missing or unreadable artifact is recomputed, loudly
                log.warning(
                    "%s v%s: baseline %s unusable (%s); computing it again", info.name, info.version, artifact, exc
                )
    log.info(
        "%s v%s has no monitoring baseline: computing it now on %s (its own validation images)",
        info.name,
        info.version,
        ", ".join(params.monitor.baseline.sets),
    )
    table = compute_baseline(params, info)
    store_baseline(params, info, table)
    return table, "computed"


# ------------------------------------------------------------------------------------------------- windows


def _where(fr: Frames, expr: pl.Expr) -> Frames:
    return dataclasses.replace(fr, images=fr.images.filter(expr), boxes=fr.boxes.filter(expr))


def _judge(params: Params, baseline: Frames, champion: Frames, shadow: Frames) -> tuple[list[Window], list[Window]]:
    """Every window of the champion's rows (all sources, then per source) vs the baseline, oldest first."""
    rules = params.monitor.drift
    chosen = monitoring.windows_of(champion, by=params.monitor.window)[-params.monitor.windows :]
    windows: list[Window] = []
    by_source: list[Window] = []
    for key, date, fr in chosen:
        window = monitoring.compare(baseline, fr, rules, key=key, date=date)
        batches = window.batches or sorted(fr.images["batch"].unique().to_list())
        agreement = None
        if not shadow.images.is_empty():
            in_window = select(shadow, batches=batches)
            if not in_window.images.is_empty():
                agreement = monitoring.agreement(fr, in_window, iou=params.monitor.shadow_iou)
        windows.append(dataclasses.replace(window, agreement=agreement, batches=batches))
        sources = sorted(fr.images["source"].unique().to_list())
        if len(sources) > 1:
            for source in sources:
                part = select(fr, source=source)
                by_source.append(monitoring.compare(baseline, part, rules, key=key, date=date, source=source))
    return windows, by_source


def _with_sources(windows: list[Window], by_source: list[Window]) -> list[Window]:
    """Windows that count as drifted when the whole window or any one source of it drifted."""
    drifted_keys = {w.key for w in by_source if w.drifted}
    return [
        dataclasses.replace(w, drifted=True) if w.key in drifted_keys and not w.drifted and not w.too_small else w
        for w in windows
    ]


def _trigger(params: Params, windows: list[Window], *, cycle_open: str | None, now: dt.datetime) -> Trigger:
    state = read_state(params)
    last = state.get("last_trigger_at")
    return monitoring.decide_trigger(
        windows,
        rules=params.monitor.trigger,
        now=now,
        last_trigger_at=dt.datetime.fromisoformat(last) if last else None,
        cycle_open=cycle_open,
        pending_batches=list(state.get("pending_batches", [])),
        triggered_batches=set(state.get("triggered_batches", [])),
    )


# --------------------------------------------------------------------------------------------------- watch


def _watch(params: Params, info: ModelVersionInfo, log_frames: Frames) -> Watch | None:
    """The newest promotion of the current champion vs the version it replaced, paired on the same images."""
    promotion = newest_promotion(params.promote.audit_log, model=info.name, to_version=info.version)
    if promotion is None or promotion.from_version is None:
        return None
    previous = promotion.from_version
    if info.version in read_state(params).get("rolled_back", []):
        return None
    promoted_at = dt.datetime.fromisoformat(promotion.ts)
    alias = params.monitor.alias
    new = select(log_frames, model_version=info.version, model_alias=alias)
    old = select(log_frames, model_version=previous, model_alias=alias)
    after = new.images.filter(pl.col("ts") >= promoted_at)
    batches = sorted(after["batch"].unique().to_list())
    results: list[WatchWindow] = []
    for batch in batches:
        pair_old = select(old, batches=[batch])
        if pair_old.images.is_empty():
            continue
        results.append(monitoring.watch_window(select(new, batches=[batch]), pair_old, params.monitor.watch, key=batch))
    results += _holdout_windows(params, info, previous, promoted_at)
    return monitoring.decide_watch(
        results,
        params.monitor.watch,
        new_version=info.version,
        previous_version=previous,
        promoted_at=promotion.ts,
        windows_since=len(batches),
    )


def holdouts_since(params: Params, since: dt.datetime) -> list[Path]:
    """Production holdouts frozen after ``since`` (folder time): labels that arrived after a promotion."""
    root = params.base.paths.holdouts
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = folder / "images"
        frozen = dt.datetime.fromtimestamp(folder.stat().st_mtime, dt.UTC)
        if (folder / "labels").is_dir() and images.is_dir() and any(images.iterdir()) and frozen > since:
            found.append(folder)
    return found


def _holdout_windows(
    params: Params, info: ModelVersionInfo, previous: str, promoted_at: dt.datetime
) -> list[WatchWindow]:
    """The gate's paired bootstrap (new − previous mAP50-95) on each holdout labeled after the promotion."""
    fresh = holdouts_since(params, promoted_at)
    if not fresh:
        return []
    old_info = mlflow_adapter.get_version(params, previous)
    sets = {folder.name: [folder] for folder in fresh}
    cache = detection_cache_of(params)  # each watch run re-scores both models on every holdout since the promotion
    new_scores = score_model(cached_onnx(params, info), sets, params=params, cache=cache)
    old_scores = score_model(cached_onnx(params, old_info), sets, params=params, cache=cache)
    windows = []
    for name in sets:
        new, old = new_scores.sets[name], old_scores.sets[name]
        interval = paired_bootstrap(
            new.matches,
            old.matches,
            resamples=params.gate.resamples,
            seed=params.gate.seed if params.gate.seed is not None else params.base.seed,
            level=params.gate.level,
        )
        windows.append(
            monitoring.holdout_window(
                name, interval.estimate, interval.low, interval.high, new.matches.num_images, params.monitor.watch
            )
        )
    return windows


# -------------------------------------------------------------------------------------------------- outputs


def _plots(params: Params, baseline: Frames, champion: Frames, windows: list[Window]) -> list[str]:
    folder = params.base.paths.reports / "monitor"
    written = []
    if windows:
        newest = select(champion, batches=windows[-1].batches)
        png = plots.plot_distributions(
            {
                name: baseline.images[name].drop_nulls().to_numpy()
                for name in plots.MONITOR_COLUMNS
                if name in baseline.images.columns
            },
            {
                name: newest.images[name].drop_nulls().to_numpy()
                for name in plots.MONITOR_COLUMNS
                if name in newest.images.columns
            },
            title=f"baseline vs window {windows[-1].key}",
        )
        if png:
            written.append(write_bytes_atomic(folder / "distributions.png", png))
        series = {
            s.name: [(w.key, next((x.effect for x in w.signals if x.name == s.name), None)) for w in windows]
            for s in windows[-1].signals
            if s.available
        }
        png = plots.plot_series(series, threshold=params.monitor.drift.min_effect, title="effect size per window")
        if png:
            written.append(write_bytes_atomic(folder / "effects.png", png))
    return [str(p) for p in written]


def _log_mlflow(params: Params, info: ModelVersionInfo, report: MonitorReport) -> None:
    """One run per champion version in ``monitor.experiment``; each window's numbers at step = its index."""
    name = f"monitor {info.name} v{info.version}"
    experiment = params.monitor.experiment
    run_id = mlflow_adapter.find_run(params, experiment, name)
    if run_id is None:
        with mlflow_adapter.mlflow_run(params, run_name=name, experiment=experiment) as new_id:
            run_id = new_id
    series: dict[str, list[tuple[int, int, float]]] = {}
    for step, window in enumerate(report.windows):
        stamp = int(dt.datetime.fromisoformat(window.date).replace(tzinfo=dt.UTC).timestamp() * 1000)
        points = {"images": float(window.images), "drifted": float(window.drifted)}
        points |= {f"latency_{q}_ms": v for q, v in window.latency_ms.items() if v is not None}
        points |= {f"{s.name}.effect": s.effect for s in window.signals if s.effect is not None}
        points |= {f"{s.name}.value": s.window for s in window.signals if s.window is not None}
        for key, value in points.items():
            series.setdefault(key, []).append((step, stamp, float(value)))
    mlflow_adapter.log_metric_series(params, run_id, series)
    paths = [Path(p) for p in report.plots] + [params.base.paths.reports / "monitor.json"]
    for path in paths:
        if path.is_file():
            mlflow_adapter.client(params).log_artifact(run_id, str(path), artifact_path="monitor")


# --------------------------------------------------------------------------------------------------- stage


def run(params: Params, *, cycle_open: str | None = None, now: dt.datetime | None = None) -> MonitorReport:
    """Judge the newest windows of the champion's log rows; write the report, the textfile, plots and metrics.

    Args:
        params: validated params.
        cycle_open: the name of a continuous-learning cycle that is still open (the trigger then waits); the
            monitor flow passes it, the command line does not know it.
        now: the time of the decision (tests pin it).

    Raises:
        mlflow_adapter.AliasNotFoundError: no version behind ``monitor.alias``.
        MonitorError: the log holds no rows of that version.
    """
    started = time.perf_counter()
    now = now or dt.datetime.now(dt.UTC)
    info = mlflow_adapter.get_alias(params, params.monitor.alias)
    log_root = log_store.log_root(params)
    table = prediction_log.read(log_root)
    rules = params.monitor.drift
    log_frames = frames(table, imgsz=params.base.imgsz, low_confidence=rules.low_confidence)
    champion = select(log_frames, model_version=info.version, model_alias=params.monitor.alias)
    if champion.images.is_empty():
        raise MonitorError(
            f"{log_root}: no prediction log rows of {info.name} v{info.version} "
            f"(@{params.monitor.alias}); run the predict flow first (make demo runs it)"
        )
    baseline_rows, baseline_from = ensure_baseline(params, info)
    baseline = frames(baseline_rows, imgsz=params.base.imgsz, low_confidence=rules.low_confidence)
    shadow = _where(  # other versions logged beside the champion under the shadow alias
        select(log_frames, model_alias=params.predict.shadow.alias), pl.col("model_version") != info.version
    )
    windows, by_source = _judge(params, baseline, champion, shadow)
    judged = _with_sources(windows, by_source)
    flagged = sorted({b for w in judged if w.drifted for b in w.batches})
    trigger = _trigger(params, judged, cycle_open=cycle_open, now=now)
    input_side = "available"
    if not champion.stats_logged or champion.images["brightness"].null_count() == champion.images.height:
        input_side = "not available: the log has no input statistics (written before they existed)"
    report = MonitorReport(
        model_name=info.name,
        model_version=info.version,
        alias=params.monitor.alias,
        baseline={
            "from": baseline_from,
            "sets": list(params.monitor.baseline.sets),
            "images": baseline.images.height,
        },
        windows=windows,
        by_source=by_source,
        flagged_batches=flagged,
        drift_confirmed=trigger.confirmed,
        trigger=trigger,
        watch=_watch(params, info, log_frames),
        input_side=input_side,
        plots=_plots(params, baseline, champion, windows),
    )
    textfile = params.base.paths.reports / params.monitor.metrics.textfile
    report = dataclasses.replace(report, textfile=str(textfile), wall_s=round(time.perf_counter() - started, 2))
    metrics_adapter.write_textfile(report, textfile, now=now.timestamp())
    write_report(params.base.paths.reports, "monitor", report, params)
    _log_mlflow(params, info, report)
    _log_summary(report, log_frames.problems)
    return report


def _log_summary(report: MonitorReport, problems: list[str]) -> None:
    for problem in problems:
        log.warning("prediction log: %s", problem)
    for window in report.windows:
        drifted = [s.name for s in window.signals if s.drifted]
        log.info(
            "window %s: %d images, %s%s",
            window.key,
            window.images,
            "too small" if window.too_small else ("DRIFT in " + ", ".join(drifted) if window.drifted else "no drift"),
            "".join(f"; {advice}" for advice in window.advice),
        )
    if report.trigger is not None:
        log.info("trigger: %s", report.trigger.reason)
    if report.watch is not None:
        log.info("watch v%s vs v%s: %s", report.watch.new_version, report.watch.previous_version, report.watch.reason)


def record_trigger(params: Params, trigger: Trigger, *, started: str | None, error: str | None) -> MonitorReport:
    """After the flow tried to start a cycle: remember it (cool-down, batches) and put it into the report."""
    state = read_state(params)
    if started is not None:
        state["last_trigger_at"] = dt.datetime.now(dt.UTC).isoformat()
        state["triggered_batches"] = sorted(set(state.get("triggered_batches", [])) | set(trigger.batches))
        state["pending_batches"] = []
        state["last_flow_run"] = started
    else:
        state["pending_batches"] = sorted(set(state.get("pending_batches", [])) | set(trigger.batches))
        state["last_error"] = error
    _write_state(params, state)
    report: MonitorReport = load_report(params.base.paths.reports, "monitor")
    report = dataclasses.replace(report, trigger=dataclasses.replace(trigger, started=started, error=error))
    write_report(params.base.paths.reports, "monitor", report, params)
    return report


def record_rollback(params: Params, watch: Watch, *, error: str | None) -> MonitorReport:
    """After the flow rolled back (or failed to): remember the version and put it into the report."""
    state = read_state(params)
    if error is None:
        state["rolled_back"] = sorted(set(state.get("rolled_back", [])) | {watch.new_version})
    _write_state(params, state)
    report: MonitorReport = load_report(params.base.paths.reports, "monitor")
    done = dataclasses.replace(watch, rolled_back=error is None, rollback_error=error)
    report = dataclasses.replace(report, watch=done)
    write_report(params.base.paths.reports, "monitor", report, params)
    return report


def rollback_reason(watch: Watch) -> str:
    """The audit trail's ``why`` of an automatic rollback: the rule and its numbers."""
    bad = [w for w in watch.windows if w.regressed]
    numbers = "; ".join(
        f"{w.kind} {w.key}: " + ", ".join(f"{k} {v:+.3f}" for k, v in w.numbers.items() if v is not None) for w in bad
    )
    head = f"automatic rollback: v{watch.new_version} regressed against v{watch.previous_version}"
    return f"{head} ({watch.reason}) {numbers}".strip()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--serve", action="store_true", help="serve the Prometheus textfile on 127.0.0.1 (Ctrl-C stops)"
    )


def _run_cli(params: Params, args: argparse.Namespace) -> MonitorReport | None:
    if args.serve:
        textfile = params.base.paths.reports / params.monitor.metrics.textfile
        server = metrics_adapter.make_server(textfile, params.monitor.metrics.port)
        log.info("serving %s on http://127.0.0.1:%d/metrics (Ctrl-C stops)", textfile, params.monitor.metrics.port)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return None
    return run(params)


def _summary(report: MonitorReport | None) -> str:
    if report is None:
        return "metrics server stopped"
    return json.dumps({"flagged_batches": report.flagged_batches, "trigger": report.trigger and report.trigger.reason})


def main(argv: list[str] | None = None) -> MonitorReport | None:
    """``python -m tasks.monitor [--params P ...] [--serve]``."""
    return stage_main("monitor", __doc__, run=_run_cli, arguments=_arguments, summary=_summary, argv=argv)


if __name__ == "__main__":
    main()
