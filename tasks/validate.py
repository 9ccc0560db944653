"""Stage ``validate``: Great Expectations suites over a cycle's new labels; bad images go to quarantine.

Contract:
    inputs: the cycle's labeled images from the label stage, ``<base.paths.labels>/<cycle>/images/*`` with
        ``labels/<stem>.txt`` (YOLO ``class cx cy w h`` normalised; an empty file = no objects) and an optional
        manifest ``<base.paths.labels>/<cycle>/<validate.manifest>`` declaring image sizes; the frozen test
        images ``<base.paths.golden>/images`` (required) and the other cycles' ``<base.paths.holdouts>/*/images``
        (optional; the cycle's own holdout is carved from it by merge, see :func:`frozen_image_folders`);
        the prediction log ``<base.paths.predictions>`` (missing = nothing to check);
    params: ``base`` (classes, paths), ``validate``;
    outputs: ``<reports>/validate.json`` (summary: counts, share, reasons, effective params);
        ``<reports>/validate/<cycle>/<suite>.json`` (GX validation results, ``COMPLETE`` format with the failing
        rows named by ``unexpected_index_column_names``), ``<reports>/validate/<cycle>/images.json`` (size,
        SHA-256 and perceptual hash of every checked image), ``<reports>/validate/data_docs/`` (GX HTML data docs,
        when ``validate.data_docs``); ``<base.paths.quarantine>/<cycle>/quarantine.json`` (per quarantined image:
        where it came from, where it is, which expectation failed and why; merged over earlier runs);
    side effects: every image that fails any expectation is *moved* (never deleted, never overwritten) with its
        label file from ``<labels>/<cycle>/{images,labels}/`` to ``<quarantine>/<cycle>/{images,labels}/`` (one
        ``os.replace`` per file: atomic on one filesystem; the image goes first, so an interrupted run never leaves
        a quarantined image downstream). What stays in ``<labels>/<cycle>/`` is exactly the validated set the
        merge stage reads.

Failure: the stage raises, *moving nothing*, when the quarantined share of the checked images exceeds
``validate.max_quarantine_share`` (:class:`QuarantineShareError`, naming the share and the top reasons; the rule is
:func:`tasks.decisions.quarantine.judge_share`) or when
the prediction log does not match :data:`tasks.contracts.prediction_log.SCHEMA`
(:class:`PredictionLogSchemaError`, naming each file). Reports are written in both cases. Re-running a cycle
checks only what is still there.

Where the parts live: the frames the suites validate, :mod:`tasks.contracts.validation_frames`; the expectations
as a table and the reading of GX results, :mod:`tasks.decisions.expectations`; the leak index,
:mod:`tasks.contracts.frozen_images`; the quarantine folder and its moves, :mod:`tasks.contracts.quarantine`.

Suites (each expectation carries ``meta.check``, the name used in reasons and reports):
    ``labels`` (one row per box, plus one row for an image whose label file has no boxes): the line parses, no
    null field, class in ``range(len(base.classes))``, corners within [0, 1], width and height above
    ``validate.min_box_px``, ``(image_id, box)`` unique, boxes per image within ``validate.boxes_per_image``;
    ``images`` (one row per image): fully decodable, has a label file, size as the manifest declares, not a
    byte copy (SHA-256) or a near-duplicate (perceptual hash, Hamming distance <= ``validate.leak_max_distance``)
    of any golden or holdout image;
    ``prediction_log_schema`` (one row per file and column): readable, each column's Arrow type as in ``SCHEMA``,
    no missing, extra or repeated column (a file written before the log's version 3, missing exactly the newer
    versions' columns, passes: every reader upgrades it); ``prediction_log_rows`` (the first
    ``validate.log_sample_rows`` rows of each file, old files upgraded): no nulls where ``SCHEMA`` forbids them,
    classes, confidences, normalised corners, input statistics, margins and the sub-threshold evidence in range,
    SHA-256 well formed, ``error`` null or a known kind; an error row (an image without prediction) has no boxes,
    no statistics and no evidence and may have size 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.adapters import log_store
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import prediction_log, prediction_schema
from tasks.contracts.frozen_images import FrozenImageIndex, frozen_image_folders, index_test_images
from tasks.contracts.names import check_cycle_name
from tasks.contracts.quarantine import QUARANTINE_REPORT, Reason, quarantine
from tasks.contracts.reports import write_report
from tasks.contracts.reports.validate import ValidateReport
from tasks.contracts.validation_frames import (
    ABSENT,
    FrameError,
    image_frame,
    label_frame,
    log_files,
    log_rows_frame,
    log_schema_frame,
    read_declared_sizes,
    reader_problems,
    schema_failures,
)
from tasks.contracts.yolo_labels import list_images
from tasks.decisions.expectations import (
    IMAGES,
    INDEX_COLUMNS,
    LABELS,
    LOG_ROWS,
    LOG_SCHEMA,
    _gx,
    build_suites,
    collect_reasons,
    log_problems,
    records,
)
from tasks.decisions.quarantine import judge_share, top_reasons
from tasks.io import write_json_atomic

if TYPE_CHECKING:  # GX costs 3-4 s to import: only inside the functions that run it
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.expectations.expectation import Expectation

log = logging.getLogger(__name__)

STAGE = "validate"


class ValidateError(VisionloopError, RuntimeError):
    """The validate stage refused the cycle; the message says why and where."""


class ValidateInputMissing(ValidateError, FileNotFoundError):
    """The cycle's images are missing."""


class QuarantineShareError(ValidateError):
    """More of the cycle failed validation than ``validate.max_quarantine_share`` allows (nothing was moved)."""


class PredictionLogSchemaError(ValidateError):
    """A prediction log file does not match :data:`tasks.contracts.prediction_log.SCHEMA` (names each file)."""


@dataclass(frozen=True)
class ValidateResult:
    """What one run of the stage did (also summarised in ``<reports>/validate.json``).

    Attributes:
        cycle: the cycle validated.
        checked: images checked in this run.
        passed: images left in place (the set that continues downstream).
        quarantined: images moved to quarantine in this run.
        share: ``quarantined / checked`` (0 when nothing was checked).
        reasons: number of quarantined images per check name.
        report: the summary JSON.
        gx_results: GX validation result JSON per suite that ran.
        images_report: size and hashes of every checked image.
        quarantine_report: ``quarantine.json`` of the cycle, None when nothing was ever quarantined.
        data_docs: GX data docs index, None when not built.
    """

    cycle: str
    checked: int
    passed: int
    quarantined: int
    share: float
    reasons: dict[str, int]
    report: Path
    gx_results: dict[str, Path]
    images_report: Path
    quarantine_report: Path | None = None
    data_docs: Path | None = None


# --------------------------------------------------------------------------------------------------- suites


def run_suites(
    frames: dict[str, pd.DataFrame], suites: dict[str, list[Expectation]], *, docs_dir: Path | None
) -> dict[str, ExpectationSuiteValidationResult]:
    """Validate each frame against its suite in one in-memory (ephemeral) GX context.

    The context keeps suites and results in memory and writes nothing but the data docs, and those only under
    ``docs_dir``. Frames without rows are not validated (they have nothing to fail).

    Args:
        frames: DataFrame per suite name.
        suites: expectations per suite name (from :func:`build_suites`).
        docs_dir: where to build the HTML data docs; None builds none.

    Returns:
        The GX validation result per suite that ran, with every failing row named by :data:`INDEX_COLUMNS`.
    """
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[STAGE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    source = context.data_sources.add_pandas(STAGE)
    results = {}
    for name, frame in frames.items():
        if frame.empty:
            continue
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=suites[name]))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        results[name] = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": INDEX_COLUMNS[name]},
        )
    if docs_dir is not None and results:
        context.build_data_docs()
    return results


# --------------------------------------------------------------------------------------------------- stage


def build_frames(
    params: Params, *, cycle_dir: Path, images: Sequence[Path], test_index: FrozenImageIndex
) -> dict[str, pd.DataFrame]:
    """The four DataFrames the suites validate, keyed by suite name (see the module docstring).

    Raises:
        ValidateError: the size declaration is malformed.
        PredictionLogSchemaError: a prediction log file's schema reads but its rows do not.
    """
    v = params.validate
    labels_dir = cycle_dir / "labels"
    try:
        declared = read_declared_sizes(cycle_dir / v.manifest)
    except FrameError as exc:
        raise ValidateError(str(exc)) from exc
    frames = {
        IMAGES: image_frame(
            images, labels_dir=labels_dir, declared=declared, test_index=test_index, phash_size=v.phash_size
        )
    }
    sizes = {
        row["image"]: (int(row["width"]), int(row["height"]))
        for row in records(frames[IMAGES])
        if row["width"] is not None
    }
    frames[LABELS] = label_frame(images, labels_dir=labels_dir, sizes=sizes)
    files = log_files(log_store.log_root(params))
    frames[LOG_SCHEMA] = accept_v1_files(log_schema_frame(files))
    bad = schema_failures(frames[LOG_SCHEMA])
    frames[LOG_ROWS] = log_rows([f for f in files if str(f) not in bad], rows_per_file=v.log_sample_rows)
    return frames


def accept_v1_files(frame: pd.DataFrame) -> pd.DataFrame:
    """The schema frame without the rows of a file written before the log's version 2 for its version-2 columns.

    A file missing exactly the columns of the versions after its own (:data:`prediction_schema.OLD_MISSING`) is an
    old file every reader still accepts (and upgrades); a file missing only some of them keeps its failing rows.
    """
    new = frame["column"].isin(prediction_schema.V2_COLUMNS + prediction_schema.V3_COLUMNS)
    new &= frame["actual_type"] == ABSENT
    missing = frame[new].groupby("file")["column"].agg(frozenset)
    old = {file for file, columns in missing.items() if columns in prediction_schema.OLD_MISSING}
    return frame[~(new & frame["file"].isin(old))].reset_index(drop=True)


def log_rows(files: Sequence[Path], *, rows_per_file: int) -> pd.DataFrame:
    """The first ``rows_per_file`` rows of each schema-valid log file; an old file's rows upgraded to version 2.

    Raises:
        PredictionLogSchemaError: a file's schema reads but its rows do not (names the file).
    """
    old = [path for path in files if prediction_schema.is_old(pq.read_schema(path))]
    try:
        frame = log_rows_frame([path for path in files if path not in old], rows_per_file=rows_per_file)
    except FrameError as exc:
        raise PredictionLogSchemaError(str(exc)) from exc
    parts = [frame] if len(frame) else []
    for path in old:
        try:
            first = next(pq.ParquetFile(path).iter_batches(batch_size=rows_per_file), None)
        except (pa.ArrowException, OSError) as exc:
            raise PredictionLogSchemaError(f"{path}: prediction log rows are not readable ({exc})") from exc
        if first is not None:
            part = prediction_log.upgrade(pa.Table.from_batches([first]), check_nulls=False).to_pandas()
            part.insert(0, "file", str(path))
            parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else frame


@dataclass(frozen=True)
class _Checked:
    """What the suites found on one cycle, before anything is moved."""

    images: list[Path]
    test_images: int
    frames: dict[str, pd.DataFrame]
    results: dict[str, ExpectationSuiteValidationResult]
    gx_results: dict[str, Path]
    images_report: Path
    docs_index: Path | None
    reasons: dict[str, list[Reason]]
    counts: Counter[str]
    orphans: list[str]


def check_cycle(params: Params, *, cycle: str) -> _Checked:
    """Build the frames of a cycle, run the suites, write their GX results; move nothing.

    Raises:
        ValidateInputMissing: the cycle's ``images/`` folder is missing.
        FrozenImagesMissing: the golden images are missing.
    """
    v, paths = params.validate, params.base.paths
    cycle_dir = paths.labels / cycle
    images_dir = cycle_dir / "images"
    if not images_dir.is_dir():
        raise ValidateInputMissing(f"{images_dir}: no labeled images for cycle {cycle!r}; run the label stage first")
    report_dir = paths.reports / STAGE / cycle
    docs_dir = paths.reports / STAGE / "data_docs" if v.data_docs else None
    images = list_images(images_dir)
    test_index = index_test_images(frozen_image_folders(params, cycle=cycle), phash_size=v.phash_size)
    frames = build_frames(params, cycle_dir=cycle_dir, images=images, test_index=test_index)
    log.info(
        "cycle %s: %d images, %d label rows, %d test images, %d prediction log files",
        cycle,
        len(images),
        len(frames[LABELS]),
        len(test_index.names),
        frames[LOG_SCHEMA]["file"].nunique(),
    )
    results = run_suites(frames, build_suites(params), docs_dir=docs_dir)
    gx_results = {
        name: write_json_atomic(report_dir / f"{name}.json", result.to_json_dict()) for name, result in results.items()
    }
    reasons = collect_reasons(results, frames, params)
    stems = {p.stem for p in images}
    orphans = sorted(p.name for p in (cycle_dir / "labels").glob("*.txt") if p.stem not in stems)
    if orphans:
        log.warning("cycle %s: %d label file(s) without an image, ignored: %s", cycle, len(orphans), orphans[:5])
    return _Checked(
        images=images,
        test_images=len(test_index.names),
        frames=frames,
        results=results,
        gx_results=gx_results,
        images_report=write_json_atomic(report_dir / "images.json", records(frames[IMAGES])),
        docs_index=docs_dir / "index.html" if docs_dir is not None and results else None,
        reasons=reasons,
        counts=Counter(check for items in reasons.values() for check in dict.fromkeys(r.check for r in items)),
        orphans=orphans,
    )


def _summary(params: Params, cycle: str, run_at: str, found: _Checked) -> ValidateReport:
    """The ``reports/validate.json`` record of a check (status ``passed`` until a refusal replaces it)."""
    checked, quarantined = len(found.images), len(found.reasons)
    suites: dict[str, dict[str, Any]] = {
        name: {"success": found.results[name].success, "statistics": found.results[name].statistics}
        | {"result": str(path)}
        for name, path in found.gx_results.items()
    }
    return ValidateReport(
        stage=STAGE,
        cycle=cycle,
        run_at=run_at,
        status="passed",
        error=None,
        checked=checked,
        passed=checked - quarantined,
        quarantined=quarantined,
        share=round(quarantined / checked if checked else 0.0, 4),
        max_quarantine_share=params.validate.max_quarantine_share,
        reasons=dict(found.counts.most_common()),
        quarantined_images={name: [r.message for r in items] for name, items in sorted(found.reasons.items())},
        orphan_labels=found.orphans,
        suites=suites | {name: {"skipped": "no rows"} for name in found.frames if name not in found.results},
        prediction_log={
            "files": int(found.frames[LOG_SCHEMA]["file"].nunique()),
            "rows_sampled": len(found.frames[LOG_ROWS]),
        },
        test_images=found.test_images,
        images_report=str(found.images_report),
        data_docs=str(found.docs_index) if found.docs_index else None,
    )


def _refusal(params: Params, cycle: str, found: _Checked) -> ValidateError | None:
    """Why the cycle is refused whole (a broken prediction log, or too large a share), else None."""
    paths = params.base.paths
    problems = log_problems(found.results, found.frames) or reader_problems(log_store.log_root(params))
    if problems:
        return PredictionLogSchemaError(
            f"prediction log {log_store.describe(params)} does not match tasks.contracts.prediction_log.SCHEMA "
            f"({len(problems)} problem(s)); nothing was moved:\n  " + "\n  ".join(problems)
        )
    share = judge_share(
        checked=len(found.images), quarantined=len(found.reasons), max_share=params.validate.max_quarantine_share
    )
    if share.refused:
        return QuarantineShareError(
            f"cycle {cycle}: {share.quarantined} of {share.checked} images ({share.share:.1%}) fail validation, above "
            f"validate.max_quarantine_share = {share.max_share:.1%}; top reasons: {top_reasons(found.counts)}. "
            f"Nothing was moved; details in {paths.reports / f'{STAGE}.json'} and {paths.reports / STAGE / cycle}"
        )
    return None


def run(params: Params, *, cycle: str) -> ValidateResult:
    """Validate a cycle's new labels, their images and the prediction log; quarantine the images that fail.

    Args:
        params: the effective configuration.
        cycle: the cycle name, a folder under ``base.paths.labels``.

    Returns:
        The :class:`ValidateResult` (also written to ``<reports>/validate.json``).

    Raises:
        ValidateInputMissing / FrozenImagesMissing: the cycle's ``images/`` folder or the golden images are missing.
        PredictionLogSchemaError: a prediction log file does not match the schema (nothing moved).
        QuarantineShareError: the failing share exceeds ``validate.max_quarantine_share`` (nothing moved).
        ValidateError: a bad cycle name, or a malformed size declaration.
        ExpectationError: GX could not evaluate an expectation.
    """
    check_cycle_name(cycle, error=ValidateError)
    start = time.perf_counter()
    paths = params.base.paths
    run_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    found = check_cycle(params, cycle=cycle)
    summary = _summary(params, cycle, run_at, found)
    refusal = _refusal(params, cycle, found)
    if refusal is not None:
        failed = replace(summary, status="failed", error=str(refusal), wall_s=round(time.perf_counter() - start, 2))
        write_report(paths.reports, STAGE, failed, params)
        raise refusal
    quarantine_dir = paths.quarantine / cycle
    if found.reasons:
        cycle_dir = paths.labels / cycle
        quarantine(found.reasons, cycle_dir=cycle_dir, quarantine_dir=quarantine_dir, cycle=cycle, run_at=run_at)
    quarantine_report = quarantine_dir / QUARANTINE_REPORT
    quarantine_report_or_none = quarantine_report if quarantine_report.is_file() else None
    summary = replace(
        summary,
        quarantine_report=str(quarantine_report_or_none) if quarantine_report_or_none else None,
        wall_s=round(time.perf_counter() - start, 2),
    )
    summary_path = write_report(paths.reports, STAGE, summary, params)
    checked, quarantined = len(found.images), len(found.reasons)
    log.info(
        "cycle %s: %d checked, %d passed, %d quarantined (%.1f%%); reasons: %s",
        cycle,
        checked,
        checked - quarantined,
        quarantined,
        100 * summary.share,
        top_reasons(found.counts),
    )
    return ValidateResult(
        cycle=cycle,
        checked=checked,
        passed=checked - quarantined,
        quarantined=quarantined,
        share=quarantined / checked if checked else 0.0,
        reasons=dict(found.counts),
        report=summary_path,
        gx_results=found.gx_results,
        images_report=found.images_report,
        quarantine_report=quarantine_report_or_none,
        data_docs=found.docs_index,
    )


def main(argv: list[str] | None = None) -> ValidateResult:
    """``python -m tasks.validate --params P [--params OVERLAY ...] --cycle C``."""

    def _arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cycle", required=True, help="cycle name: a folder under base.paths.labels")

    def _line(result: ValidateResult) -> str:
        return json.dumps({"cycle": result.cycle, "checked": result.checked, "quarantined": result.quarantined})

    result: ValidateResult = stage_main(
        STAGE,
        __doc__,
        lambda params, args: run(params, cycle=args.cycle),
        arguments=_arguments,
        summary=_line,
        argv=argv,
    )
    return result


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
