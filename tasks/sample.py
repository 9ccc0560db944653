"""Stage ``sample``: choose the production images to label this cycle from the prediction log.

Contract:
    inputs: the prediction log ``<base.paths.predictions>/date=YYYY-MM-DD/*.parquet`` (schema in
        :mod:`tasks.contracts.prediction_log`; every file of the window is schema-checked first and a bad one is named);
        the label ledger ``<base.paths.labels>/ledger.parquet`` (:mod:`tasks.contracts.ledger`; columns
        ``image_sha256``, ``status``, optional ``phash``; missing = nothing labeled yet); the drift monitor's
        ``<base.paths.reports>/monitor.json`` (``{"flagged_batches": [...]}``, optional) plus ``sample.drift_batches``;
        the image files of the candidates (read only for the near-duplicate check).
    params: ``base.seed``, ``base.paths``, ``sample`` (``predict.conf`` only for a warning).
    outputs: ``<base.paths.samples>/<cycle>/manifest.parquet`` (:mod:`tasks.contracts.sample_manifest`, one row per
        selected image, written atomically, empty when nothing is selected) and ``<base.paths.reports>/sample.json``
        (:class:`~tasks.contracts.reports.sample.SampleResult`: counts per strategy, budget used, exclusions by reason,
        the effective ``sample`` config under ``config``).
    side effects: none besides those two files; the log and the ledger are only read.

Selection, deterministic given ``base.seed`` and the cycle name:

1. Window: the newest ``sample.window_days`` dates of the log (counted back from its newest date, not from today).
   The champion is the model whose rows logged under ``sample.alias`` are the newest (largest ``ts``); only its rows
   are scored (:mod:`tasks.contracts.prediction_rows`: Polars, one file at a time, only the columns the scores need,
   grouped into per-image runs; a picture logged in two batches is two runs with equal scores and the manifest keeps
   it once). Images whose hash is in the ledger are excluded before anything is ranked.
2. Scores, each in [0, 1] or none (not a candidate): ``random``, ``low_confidence``, ``entropy``, ``margin``,
   ``class_balanced``, ``drift``, ``diversity`` (k-center over the window, off by default) per image (the
   uncertainty scores also read the sub-threshold evidence ``predict.evidence_conf`` logs) and ``disagreement`` of
   the champion against every other model version (``aliases``: only rows logged under those) on the same image,
   among the champion's files on the dates the other version logged; the largest over the other versions. The
   formulas are in :mod:`tasks.decisions.sampling`.
3. Each strategy nominates its best ``POOL_FACTOR x budget`` images (score, then a seeded tie-break). Nominations
   are taken greedily by ``weight x score``: an image goes to its best-weighted strategy that still has budget,
   unless its batch date is full (``max_per_day``) or it is a near-duplicate (perceptual hash, Hamming distance <=
   ``phash_distance``) of a ledger hash or of an image already taken, until ``budget`` images are taken. That loop
   runs over the nominations (bounded by the budgets), never over the log; only the images it reaches are opened.
   ``strategies`` lists every strategy that nominated the image. ``image_id``/``image_uri`` of the nominated images
   are read last, by position, from their files only.

Degenerate inputs give an empty manifest and a ``reason``, not an error: no log files, no rows under the alias in
the window, ``sample.budget: 0``, every strategy off (a shortfall of candidates is a ``reason`` too). A log file with
a wrong schema or a hash that is not 64 hex digits, a ledger without its columns, an unreadable ``monitor.json`` or
an unsafe cycle name raise, naming the file or the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import polars as pl

from tasks.adapters import image_store, log_store
from tasks.adapters.s3 import S3ObjectMissing
from tasks.cli import stage_main
from tasks.config import (
    ClassBalancedStrategy,
    DisagreementStrategy,
    DriftStrategy,
    EntropyStrategy,
    LowConfidenceStrategy,
    MarginStrategy,
    Params,
    RandomStrategy,
    SampleStrategy,
    VisionloopError,
)
from tasks.contracts import prediction_log
from tasks.contracts.ledger import ledger_path, read_ledger_hashes
from tasks.contracts.names import check_cycle_name
from tasks.contracts.prediction_rows import (
    ImageRows,
    LogPart,
    ModelKey,
    concat_rows,
    find_champion,
    image_meta,
    read_image_rows,
    read_parts,
    window_parts,
)
from tasks.contracts.reports import write_report
from tasks.contracts.reports.sample import SampleResult, StrategyCount
from tasks.contracts.sample_manifest import manifest_path, write_manifest
from tasks.core import phash
from tasks.decisions.sampling import (
    EXCLUSIONS,
    POOL_FACTOR,
    STRATEGIES,
    enabled_strategies,
    nominate,
    score_class_balanced,
    score_disagreement,
    score_diversity,
    score_drift,
    score_entropy,
    score_low_confidence,
    score_margin,
    score_random,
    seeded_uniform,
    select,
    shortfall,
)

__all__ = ["SampleError", "SampleResult", "main", "run"]

log = logging.getLogger(__name__)

MONITOR_FILE = "monitor.json"

_FloatArray = npt.NDArray[np.float64]


class SampleError(VisionloopError, ValueError):
    """An input of the sample stage (ledger, monitor report, cycle name) is unusable; the message names it."""


# --- inputs besides the log ------------------------------------------------------------------------------------------


def drift_batches(params: Params) -> list[str]:
    """Flagged batches: ``sample.drift_batches`` plus ``flagged_batches`` of ``<reports>/monitor.json`` if present.

    Raises:
        SampleError: ``monitor.json`` is not JSON or its ``flagged_batches`` is not a list of strings.
    """
    flagged = list(params.sample.drift_batches)
    path = params.base.paths.reports / MONITOR_FILE
    if path.exists():
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SampleError(f"{path}: drift monitor report is not readable JSON ({err})") from err
        found = report.get("flagged_batches", []) if isinstance(report, dict) else None
        if not isinstance(found, list) or not all(isinstance(b, str) for b in found):
            raise SampleError(f"{path}: flagged_batches must be a list of batch names, got {found!r}")
        flagged += [b for b in found if b not in flagged]
    return flagged


_UNREADABLE: tuple[type[Exception], ...] = (*phash.UNREADABLE, S3ObjectMissing)  # an object deleted since logged


def phash_uri(uri: str) -> phash.PackedHashes | None:
    """The packed 64-bit perceptual hash of a logged image (``image_uri``: a local file, or an ``s3://`` object read
    into memory through :mod:`tasks.adapters.image_store`), None when it cannot be read."""
    try:
        if image_store.is_s3(uri):
            return phash.phash_bytes(image_store.read_image_bytes(uri))
        return phash.phash_file(prediction_log.image_file(uri))
    except _UNREADABLE as err:
        log.warning("sample: cannot read %s for the duplicate check (%s); it is not selected", uri, err)
        return None


# --- scoring ---------------------------------------------------------------------------------------------------------


def _score(name: str, config: SampleStrategy, rows: ImageRows, *, params: Params, cycle: str) -> pl.DataFrame:
    """One per-image strategy's (I,) scores for ``rows``, dispatched on its config type (not disagreement)."""
    seed = params.base.seed
    if isinstance(config, RandomStrategy):
        return score_random(rows, rate=config.rate, seed=seed, cycle=cycle)
    if isinstance(config, LowConfidenceStrategy):
        return score_low_confidence(rows, band=config.band)
    if isinstance(config, EntropyStrategy):
        return score_entropy(rows, min_score=config.min_score)
    if isinstance(config, MarginStrategy):
        return score_margin(rows, threshold=config.threshold, min_score=config.min_score)
    if isinstance(config, ClassBalancedStrategy):
        return score_class_balanced(rows, min_score=config.min_score)
    if isinstance(config, DriftStrategy):
        return score_drift(rows, flagged=drift_batches(params), rate=config.rate, seed=seed, cycle=cycle)
    raise TypeError(f"sample.strategies.{name}: no scorer for {type(config).__name__}")  # pragma: no cover, config


class _Others(NamedTuple):
    """What disagreement compares: the other models' files, and which champion files share their dates."""

    files: dict[ModelKey, list[Path]]
    champion_parts: list[int]  # indices into the champion's file list


def _other_models(
    parts: list[LogPart], champion_paths: list[Path], *, champion: ModelKey, config: DisagreementStrategy
) -> _Others:
    files: dict[ModelKey, list[Path]] = {}
    for part in parts:
        for key in part.models:
            if (key.name, key.version) != (champion.name, champion.version) and (
                config.aliases is None or key.alias in config.aliases
            ):
                files.setdefault(key, []).append(part.path)
    dates = {p.date for p in parts if any(p.path in paths for paths in files.values())}
    date_of = {p.path: p.date for p in parts}
    return _Others(files, [i for i, path in enumerate(champion_paths) if date_of[path] in dates])


def _disagreement(
    rows: ImageRows, part_rows: list[ImageRows], others: _Others, config: DisagreementStrategy
) -> _FloatArray:
    """:func:`score_disagreement` against every other model version of the window; the largest per image.

    The champion's side is its files on the dates the other versions logged (read with corners by the main read);
    their images are the ``rows`` images whose ``part`` is one of those files, in the same order.
    """
    score = np.full(len(rows), np.nan)
    if not others.champion_parts:
        return score
    subset = concat_rows([part_rows[i] for i in others.champion_parts], boxes=True)
    where = np.flatnonzero(rows.images["part"].is_in(others.champion_parts).to_numpy())
    for key in sorted(others.files, key=lambda k: (k.name, k.version, k.alias or "")):
        other = read_image_rows(others.files[key], model=key, boxes=True)
        found = score_disagreement(subset, other, iou=config.iou, min_score=config.min_score)["score"]
        score[where] = np.fmax(score[where], found.fill_null(np.nan).to_numpy())
    return score


def _why_nothing(params: Params, parts: list[LogPart], champion: ModelKey | None) -> str | None:
    sample = params.sample
    if sample.budget == 0:
        return "sample.budget is 0"
    if not enabled_strategies(sample):
        return "every strategy is off (null or budget 0 under sample.strategies)"
    if not parts:
        return f"the prediction log {log_store.describe(params)} has no files"
    if champion is None:
        first, last = parts[0].date, parts[-1].date
        return f"no rows logged under alias {sample.alias!r} in the window {first}..{last} (sample.alias)"
    return None


@dataclass(frozen=True)
class _Outcome:
    """What the selection produced (internal; :class:`SampleResult` is the public summary)."""

    selected: list[dict[str, Any]]
    rejected: dict[str, str]
    nominated_by: dict[str, list[str]]
    candidates: dict[str, int]
    in_ledger: int
    timings_s: dict[str, dict[str, float]]


def sample_images(params: Params, parts: list[LogPart], *, champion: ModelKey, cycle: str) -> _Outcome:
    """Score the champion's images of the window, nominate, and fill the budget (the module docstring's steps)."""
    sample = params.sample
    enabled = enabled_strategies(sample)
    clock = _Clock()
    champion_paths = [p.path for p in parts if champion in p.models]
    disagreement = sample.strategies.disagreement if "disagreement" in enabled else None
    others = (
        None if disagreement is None else _other_models(parts, champion_paths, champion=champion, config=disagreement)
    )
    boxes_for = others.champion_parts if others else ()
    part_rows = read_parts(champion_paths, model=champion, boxes_for=boxes_for, stats="diversity" in enabled)
    rows = concat_rows(part_rows)
    ledger = read_ledger_hashes(ledger_path(params), error=SampleError)
    excluded = rows.images["image_sha256"].is_in(ledger.sha256.implode()).to_numpy()
    clock.lap("read")
    scores: dict[str, _FloatArray] = {}
    for name, config in enabled.items():
        if disagreement is not None and others is not None and name == "disagreement":
            scores[name] = _disagreement(rows, part_rows, others, disagreement)
        elif name == "diversity":
            k = POOL_FACTOR * config.budget
            scores[name] = score_diversity(rows, labeled=excluded, k=k, seed=params.base.seed, cycle=cycle)
        else:
            frame = _score(name, config, rows, params=params, cycle=cycle)
            scores[name] = frame["score"].fill_null(np.nan).to_numpy().astype(np.float64, copy=False)
        clock.lap(name)
    del part_rows  # only disagreement needed the corners
    order = seeded_uniform(rows, seed=params.base.seed, cycle=cycle, salt="order")
    pool = nominate(scores, strategies=enabled, eligible=~excluded, order=order)
    nominations = pl.DataFrame({"image_sha256": rows.images["image_sha256"].gather(pool.image), "s": pool.strategy})
    nominated_by = {
        sha: [STRATEGIES[i] for i in sorted(set(found))]
        for sha, found in nominations.group_by("image_sha256").agg("s").iter_rows()
    }
    clock.lap("nominate")
    meta = image_meta(champion_paths, model=champion, images=rows.images[np.unique(pool.image)])
    clock.lap("meta")
    selected, rejected = select(pool, meta, rows=rows, params=sample, ledger_phash=ledger.phash, phash=phash_uri)
    clock.lap("select")
    return _Outcome(
        selected=selected,
        rejected=rejected,
        nominated_by=nominated_by,
        candidates={name: int((~np.isnan(score) & ~excluded).sum()) for name, score in scores.items()},
        in_ledger=int(rows.images["image_sha256"].filter(pl.Series(excluded)).n_unique()),
        timings_s=clock.laps,
    )


class _Clock:
    """Wall and process CPU seconds per phase, for the report (CPU shows the cost on a busy machine)."""

    def __init__(self) -> None:
        self.laps: dict[str, dict[str, float]] = {}
        self._last = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.laps[name] = {"wall": round(now[0] - self._last[0], 4), "cpu": round(now[1] - self._last[1], 4)}
        self._last = now


def _warn_band_below_log_floor(params: Params) -> None:
    """Warn when ``low_confidence``'s band starts below ``predict.conf``.

    The predict stage logs only boxes at or above ``predict.conf``, so a lower band edge never sees a box: the
    band in effect starts at ``predict.conf``.
    """
    config = params.sample.strategies.low_confidence
    floor = params.predict.conf
    if config is not None and config.budget > 0 and config.band[0] < floor:
        log.warning(
            "sample.strategies.low_confidence.band starts at %s, below predict.conf %s: the prediction log holds "
            "no weaker boxes, so the band in effect is [%s, %s)",
            config.band[0],
            floor,
            floor,
            config.band[1],
        )


# --- the stage -------------------------------------------------------------------------------------------------------


def run(params: Params, *, cycle: str) -> SampleResult:
    """Select this cycle's images to label and write the manifest and ``reports/sample.json``.

    Args:
        params: the whole configuration (``base`` and ``sample`` are read).
        cycle: cycle name, e.g. ``2026-11-16``; the manifest goes to ``<samples>/<cycle>/manifest.parquet``.

    Returns:
        The :class:`SampleResult` (also written to the report).

    Raises:
        PredictionLogError: a log file of the window does not match the schema (the message names it).
        SampleError: an unsafe cycle name, an unusable ledger or ``monitor.json``.
    """
    check_cycle_name(cycle, error=SampleError)
    start = time.perf_counter()
    sample = params.sample
    _warn_band_below_log_floor(params)
    parts = window_parts(log_store.log_root(params), days=sample.window_days)
    champion = find_champion(parts, alias=sample.alias)
    reason = _why_nothing(params, parts, champion)
    if reason is None and champion is not None:
        outcome = sample_images(params, parts, champion=champion, cycle=cycle)
        reason = shortfall(sample, outcome.selected)
    else:
        outcome = _Outcome([], {}, {}, {}, 0, {})
    path = manifest_path(params.base.paths.samples, cycle)
    write_manifest(path, [row | {"strategies": outcome.nominated_by[row["image_sha256"]]} for row in outcome.selected])
    result = _result(params, cycle=cycle, manifest=path, parts=parts, champion=champion, outcome=outcome)
    result = dataclasses.replace(result, reason=reason, wall_s=round(time.perf_counter() - start, 3))
    write_report(params.base.paths.reports, "sample", result, params)
    log.info(
        "sample %s: %d of %d selected (%s); excluded %s%s",
        cycle,
        result.selected,
        result.budget,
        ", ".join(f"{k} {v.selected}" for k, v in result.by_strategy.items()),
        result.excluded,
        f"; {reason}" if reason else "",
    )
    return result


def _result(
    params: Params, *, cycle: str, manifest: Path, parts: list[LogPart], champion: ModelKey | None, outcome: _Outcome
) -> SampleResult:
    """The report record of a run (``reason`` and ``wall_s`` are filled in by :func:`run`)."""
    sample, selected = params.sample, outcome.selected
    return SampleResult(
        cycle=cycle,
        manifest=str(manifest),
        selected=len(selected),
        budget=sample.budget,
        by_strategy={
            name: StrategyCount(
                candidates=outcome.candidates.get(name, 0),
                selected=sum(row["strategy"] == name for row in selected),
                budget=config.budget,
                weight=config.weight,
            )
            for name, config in enabled_strategies(sample).items()
        },
        excluded={"ledger": outcome.in_ledger}
        | {r: sum(v == r for v in outcome.rejected.values()) for r in EXCLUSIONS[1:]},
        per_day={d.isoformat(): n for d, n in sorted(Counter(row["date"] for row in selected).items())},
        window=[d.isoformat() for d in sorted({p.date for p in parts})],
        champion=None if champion is None else f"{champion.name}/{champion.version}",
        reason=None,
        champion_alias=sample.alias,
        seed=params.base.seed,
        config=sample.model_dump(mode="json"),
        timings_s=outcome.timings_s,
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycle", required=True, help="cycle name: the manifest goes to <samples>/<cycle>/")


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.sample --params P [--params OVERLAY ...] --cycle C``."""
    stage_main(
        "sample",
        __doc__,
        run=lambda params, args: run(params, cycle=args.cycle),
        arguments=_arguments,
        summary=lambda r: json.dumps({"selected": r.selected, "manifest": r.manifest, "reason": r.reason}),
        argv=argv,
    )


if __name__ == "__main__":
    main()
