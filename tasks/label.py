"""Stage ``label``: sampled images → Label Studio (pre-annotated by the champion) → YOLO labels.

Contract:
    inputs: the sample manifest ``<base.paths.samples>/<cycle>/manifest.parquet`` (one row per image:
        ``image_sha256, image_id, image_uri, batch, date, strategy, score, rank, model_name, model_version``);
        the prediction log ``<base.paths.predictions>`` (rows of those images by the manifest's model version,
        used as pre-annotations); the image files themselves; finished annotations in Label Studio (backend
        ``labelstudio``) or Label Studio JSON exports in the inbox folder (backend ``files``);
    params: ``base`` (classes, paths), ``label``;
    outputs: the ledger ``<base.paths.labels>/ledger.parquet`` (one row per image ever queued;
        :mod:`tasks.contracts.ledger`),
        labeled images ``<base.paths.labels>/<cycle>/images/<image_id>.<ext>`` (hard link, else copy; an
        ``s3://`` image's bytes written atomically) with
        ``<base.paths.labels>/<cycle>/labels/<image_id>.txt`` (YOLO, classes in ``base.classes`` order; an empty
        file = annotated, no objects), ``<cycle>`` being the cycle that sampled the image;
        ``<base.paths.reports>/label.json``; backend ``files``: task JSON in the outbox folder;
    side effects: backend ``labelstudio`` creates (once) the project titled ``label.project_title`` with a
        labeling config generated from ``base.classes`` and records its id in ``<base.paths.labels>/projects.json``
        (per server URL and title, under a file lock: one project per title whatever runs at once; every later
        run and the annotator simulator read it from there), registers a Local Files import storage per image
        folder, or for ``s3://`` images one S3 import storage per bucket with presigned URLs
        (:mod:`tasks.adapters.labelstudio_s3`; keys from the environment go to the server, nowhere else), never
        synced (tasks are imported by this stage), and imports tasks.

Idempotent: an image (by SHA-256) already in the ledger, or already a task of the project, is never imported
again; the ledger records only tasks the server confirmed (re-listed after the import) and is replaced
atomically. Collection is incremental: only tasks updated since the last collection are fetched (a Data
Manager filter on ``updated_at``, with a small overlap), never a full export. The latest non-cancelled
annotation of a task counts; a task whose annotations are all cancelled is ``skipped``.

The run is *waiting* (``LabelResult.waiting``) while fewer than ``label.min_labeled`` images of the cycle are
labeled and some are still queued: the flow ends "waiting for labels" and a later run of the same cycle
continues. Connection: ``label.url`` (``LABEL_STUDIO_URL`` wins), token only from ``LABEL_STUDIO_API_KEY``;
a server that is down is retried ``label.retries`` times (in the adapter, :mod:`tasks.adapters.labelstudio`),
then fails with the command that starts it. The backends live in ``tasks/adapters/`` (``labelstudio.py``,
``label_files.py``), the task JSON in :mod:`tasks.contracts.label_tasks`; this module queues and collects.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.adapters import image_store, log_store
from tasks.adapters.label_files import FilesBackend, exchange_folders
from tasks.adapters.labelstudio import (
    DOCUMENT_ROOT_ENV,
    START_COMMAND,
    LabelStudioBackend,
    LabelStudioError,
    document_root,
    projects_path,
)
from tasks.adapters.s3 import S3ObjectMissing
from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts import annotations as ls
from tasks.contracts import sample_manifest
from tasks.contracts.label_tasks import (
    LabelBackend,
    LabelError,
    TaskRef,
    build_task,
    image_path,
    image_suffix,
    is_s3_uri,
    load_predictions,
)
from tasks.contracts.ledger import LABELED, QUEUED, SKIPPED, LedgerRow, ledger_path, read_ledger, write_ledger
from tasks.contracts.names import check_cycle_name, check_image_id
from tasks.contracts.reports import write_report
from tasks.contracts.reports.label import LabelResult
from tasks.contracts.sample_manifest import SampleRow
from tasks.core import phash
from tasks.io import write_bytes_atomic

log = logging.getLogger(__name__)

Ledger = dict[str, LedgerRow]


# --------------------------------------------------------------------------------------------------------------
# Inputs.


def manifest_path(params: Params, cycle: str) -> Path:
    """``<base.paths.samples>/<cycle>/manifest.parquet`` (:mod:`tasks.contracts.sample_manifest`)."""
    return sample_manifest.manifest_path(params.base.paths.samples, cycle)


def perceptual_hash(path: Path) -> str | None:
    """The image's pHash as the ledger stores it (:func:`tasks.core.phash.to_hex`); None when it cannot be read."""
    try:
        return phash.to_hex(phash.phash_file(path))
    except phash.UNREADABLE as exc:  # a bad hash must not stop labeling; validate checks the images
        log.warning("pHash of %s failed: %s", path, exc)
        return None


# --------------------------------------------------------------------------------------------------------------
# Queueing: manifest images not in the ledger -> tasks -> the backend -> ledger rows.


@dataclass
class _Queued:
    imported: int = 0
    without_predictions: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


@dataclass
class _Tasks:
    tasks: list[dict[str, Any]] = field(default_factory=list)
    folders: set[Path] = field(default_factory=set)
    present: list[SampleRow] = field(default_factory=list)  # rows whose image file still exists
    phashes: dict[str, str | None] = field(default_factory=dict)  # s3:// images hashed while checked
    missing: list[str] = field(default_factory=list)
    without_predictions: list[str] = field(default_factory=list)


def queue_images(
    params: Params, *, cycle: str, rows: Sequence[SampleRow], ledger: Ledger, backend: LabelBackend
) -> _Queued:
    """Submit the manifest images not in ``ledger`` yet and record the tasks the backend confirmed.

    ``ledger`` gains a ``queued`` row per confirmed task and is written before anything is collected, so an
    import is recorded even if the collection fails.

    Raises:
        LabelError: two images with one id in the cycle, an image outside the document root.
        LabelStudioError: some tasks were not confirmed (the ledger records the confirmed ones; a re-run retries).
    """
    new = [r for r in rows if r.image_sha256 not in ledger]
    if not new:
        return _Queued()
    _check_unique_ids(new, ledger, cycle)
    built = build_tasks(params, cycle=cycle, rows=new)
    confirmed, imported = backend.submit(built.tasks, folders=built.folders) if built.tasks else ({}, 0)
    now = dt.datetime.now(dt.UTC)
    for row in built.present:
        ref = confirmed.get(row.image_sha256)
        if ref is not None:
            phash = row.phash or built.phashes.get(row.image_sha256) or perceptual_hash(image_path(row.image_uri))
            ledger[row.image_sha256] = _queued_row(row, cycle=cycle, backend=backend, ref=ref, now=now, phash=phash)
    write_ledger(ledger_path(params), ledger)
    unconfirmed = [r.image_id for r in built.present if r.image_sha256 not in confirmed]
    if unconfirmed:
        raise LabelStudioError(
            f"{backend.name}: {len(unconfirmed)} task(s) not confirmed after import (e.g. {unconfirmed[:5]}); "
            "the ledger records only confirmed ones: re-run to retry"
        )
    return _Queued(imported, built.without_predictions, built.missing)


def build_tasks(params: Params, *, cycle: str, rows: Sequence[SampleRow]) -> _Tasks:
    """The tasks of ``rows`` (pre-annotated from the prediction log); images deleted since sampling are named.

    A local image is referenced through Label Studio's local files URL (its folder becomes a Local Files storage);
    an ``s3://`` image by its URI, which Label Studio presigns through the project's S3 import storage
    (:mod:`tasks.adapters.labelstudio_s3`). S3 images are read once here: that they still exist, and their pHash.
    """
    root = document_root(params.label)
    predictions = load_predictions(log_store.log_root(params), rows)
    built = _Tasks()
    for row in rows:
        if is_s3_uri(row.image_uri):
            try:
                content = image_store.read_image_bytes(row.image_uri)
            except S3ObjectMissing:
                built.missing.append(
                    f"{row.image_uri}: image {row.image_id} of the sample manifest is gone; not imported"
                )
                log.warning("%s", built.missing[-1])
                continue
            built.phashes[row.image_sha256] = row.phash or perceptual_hash_bytes(content, where=row.image_uri)
            url = row.image_uri
        else:
            path = image_path(row.image_uri)
            if not path.is_file():
                built.missing.append(f"{path}: image {row.image_id} of the sample manifest is gone; not imported")
                log.warning("%s", built.missing[-1])
                continue
            url = ls.local_files_url(_relative_to_root(path, root))
            built.folders.add(path.parent)
        built.present.append(row)
        prediction = predictions.get(row.image_sha256)
        built.tasks.append(build_task(row, cycle=cycle, url=url, classes=params.base.classes, prediction=prediction))
    built.without_predictions = [r.image_id for r in built.present if r.image_sha256 not in predictions]
    if built.without_predictions:
        log.warning(
            "%d sampled image(s) have no logged predictions: imported without pre-annotations",
            len(built.without_predictions),
        )
    return built


def _queued_row(
    row: SampleRow, *, cycle: str, backend: LabelBackend, ref: TaskRef, now: dt.datetime, phash: str | None
) -> LedgerRow:
    return LedgerRow(
        image_sha256=row.image_sha256,
        image_id=row.image_id,
        image_uri=row.image_uri,
        batch=row.batch,
        cycle=cycle,
        status=QUEUED,
        backend=backend.name,
        project_id=backend.project_id,
        task_id=ref.task_id,
        annotation_id=None,
        annotation_updated_at=None,
        task_updated_at=ref.updated_at,
        n_boxes=None,
        phash=phash,
        queued_at=now,
        updated_at=now,
    )


def _check_unique_ids(new: Sequence[SampleRow], ledger: Mapping[str, LedgerRow], cycle: str) -> None:
    """Label files are named by image id: two different images with one id in a cycle would overwrite each other,
    and an id that is not a plain file stem (``../..``, a separator) would write outside ``labels/<cycle>/``.
    """
    for index, row in enumerate(new):
        check_image_id(row.image_id, where=f"cycle {cycle}: sample manifest row {index}", error=LabelError)
    owner = {r["image_id"]: r["image_sha256"] for r in ledger.values() if r["cycle"] == cycle}
    for row in new:
        other = owner.setdefault(row.image_id, row.image_sha256)
        if other != row.image_sha256:
            raise LabelError(
                f"cycle {cycle}: image id {row.image_id!r} names two different images (sha256 {other[:12]} and "
                f"{row.image_sha256[:12]}); image ids must be unique (they name the label files)"
            )


def _relative_to_root(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise LabelError(
            f"{path}: not below the Label Studio document root {root}; Label Studio serves only files below "
            f"{DOCUMENT_ROOT_ENV}. Start it with {DOCUMENT_ROOT_ENV}=<a common parent> (`{START_COMMAND}` uses the "
            f"project folder) and set label.document_root (or {DOCUMENT_ROOT_ENV}) to the same folder here."
        ) from None


# --------------------------------------------------------------------------------------------------------------
# Collection: annotations -> YOLO files + ledger.


@dataclass
class _Collected:
    collected: int = 0
    skipped: int = 0
    rejected: list[str] = field(default_factory=list)


def collect_annotations(params: Params, *, ledger: Ledger, backend: LabelBackend) -> _Collected:
    """Fetch what changed from the backend, write YOLO labels, and write the updated ``ledger``."""
    fetched = backend.fetch(list(ledger.values()))
    done = collect(fetched, ledger, classes=params.base.classes, labels_root=params.base.paths.labels)
    write_ledger(ledger_path(params), ledger)
    for reason in done.rejected:
        log.warning("left out: %s", reason)
    return done


def collect(
    tasks: Sequence[Mapping[str, Any]], ledger: Ledger, *, classes: Sequence[str], labels_root: Path
) -> _Collected:
    """Convert the annotations of ``tasks`` to YOLO files and update ``ledger`` rows in place.

    Every task is converted before anything is written, so an unknown label aborts the whole collection
    with all offending tasks named. Unchanged annotations (same id and ``updated_at`` as recorded) are not
    written or counted again.

    Raises:
        LabelError: annotations that cannot be converted (each task named), or a labeled image file missing.
    """
    plans = _plan_collection(tasks, ledger, classes=classes)
    now = dt.datetime.now(dt.UTC)
    done = _Collected()
    for row, decision, label in plans:
        where = f"label ledger row of task {row['task_id']}"
        check_cycle_name(row["cycle"], error=LabelError)  # the ledger is data: never trust it as a path
        check_image_id(row["image_id"], where=where, error=LabelError)
        images_dir = labels_root / row["cycle"] / "images"
        label_file = labels_root / row["cycle"] / "labels" / f"{row['image_id']}.txt"
        if label is not None:
            target = images_dir / f"{row['image_id']}{image_suffix(row['image_uri'])}"
            _copy_image(row["image_uri"], target, where=f"image of task {row['task_id']}")
            write_bytes_atomic(label_file, label.to_text().encode())
            done.rejected += label.rejected
            row["status"], row["n_boxes"] = LABELED, len(label.class_id)
            done.collected += 1
        else:
            label_file.unlink(missing_ok=True)  # a labeled task re-answered as skipped no longer has labels
            for stale in images_dir.glob(f"{row['image_id']}.*"):
                stale.unlink()
            row["status"], row["n_boxes"] = SKIPPED, None
            done.skipped += 1
        row["annotation_id"], row["annotation_updated_at"] = decision.annotation_id, decision.annotation_updated_at
        row["updated_at"] = now
    return done


def _plan_collection(
    tasks: Sequence[Mapping[str, Any]], ledger: Ledger, *, classes: Sequence[str]
) -> list[tuple[LedgerRow, ls.Decision, ls.YoloLabel | None]]:
    """What each changed task amounts to (task ids and server times recorded on the way); nothing written.

    Raises:
        LabelError: annotations that cannot be converted, every offending task named.
    """
    plans: list[tuple[LedgerRow, ls.Decision, ls.YoloLabel | None]] = []
    errors: list[str] = []
    for task in tasks:
        sha = (task.get("data") or {}).get("image_sha256")
        row = ledger.get(sha) if sha else None
        if row is None:
            continue  # not queued by this stage (e.g. a task added by hand)
        if task.get("id") is not None:
            row["task_id"] = int(task["id"])
        if task.get("updated_at") is not None:
            row["task_updated_at"] = ls.parse_time(task["updated_at"])
        decision = ls.choose_annotation(task.get("annotations") or [])
        if decision.status == "pending" or (
            decision.status == row["status"]
            and decision.annotation_id == row["annotation_id"]
            and decision.annotation_updated_at == row["annotation_updated_at"]
        ):
            continue
        label = None
        if decision.status == LABELED:
            where = f"task {row['task_id']} (image {row['image_id']}, sha256 {row['image_sha256'][:12]})"
            try:
                label = ls.annotation_to_yolo(
                    (decision.annotation or {}).get("result") or [], classes=classes, where=where
                )
            except ls.LabelConversionError as exc:
                errors.append(str(exc))
                continue
        plans.append((row, decision, label))
    if errors:
        raise LabelError(
            f"{len(errors)} annotation(s) cannot be converted, nothing collected:\n  " + "\n  ".join(errors)
        )
    return plans


def _copy_image(uri: str, target: Path, *, where: str) -> None:
    """Put the image at ``target``: a local file hard-linked (else copied), an S3 object's bytes written atomically.

    Raises:
        LabelError: the image is gone (``where`` names whose).
    """
    if not is_s3_uri(uri):
        source = image_path(uri)
        if not source.is_file():
            raise LabelError(f"{source}: {where} not found (image_uri {uri})")
        _link_or_copy(source, target)
        return
    try:
        content = image_store.read_image_bytes(uri)
    except S3ObjectMissing as exc:
        raise LabelError(f"{uri}: {where} not found ({exc})") from None
    if not (target.is_file() and target.read_bytes() == content):
        write_bytes_atomic(target, content)


def perceptual_hash_bytes(content: bytes, *, where: str) -> str | None:
    """The pHash of an image's bytes (:func:`perceptual_hash` for an object read from S3); None when undecodable."""
    try:
        return phash.to_hex(phash.phash_bytes(content))
    except phash.UNREADABLE as exc:
        log.warning("pHash of %s failed: %s", where, exc)
        return None


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if target.stat().st_size == source.stat().st_size and (
            target.samefile(source) or target.read_bytes() == source.read_bytes()
        ):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


# --------------------------------------------------------------------------------------------------------------
# The stage.


def make_backend(params: Params, cycle: str, ledger: Mapping[str, LedgerRow]) -> LabelBackend:
    """The backend ``label.backend`` names (``labelstudio`` connects and checks the server now).

    ``ledger`` (:func:`~tasks.contracts.ledger.read_ledger`) names the Label Studio projects its tasks are in:
    among duplicate projects of one title, the one most of them are in is used.
    """
    settings = params.label
    if settings.backend == "files":
        outbox, inbox = exchange_folders(params)
        return FilesBackend(outbox, inbox, cycle)
    counts = collections.Counter(
        int(r["project_id"]) for r in ledger.values() if r["backend"] == "labelstudio" and r["project_id"] is not None
    )
    return LabelStudioBackend(
        settings,
        params.base.classes,
        record=projects_path(params),
        ledger_project_ids=[i for i, _ in counts.most_common()],
    )


def run(params: Params, *, cycle: str, backend: LabelBackend | None = None) -> LabelResult:
    """Queue the cycle's sampled images for labeling and collect finished annotations as YOLO labels.

    Args:
        params: validated params (``base``, ``label``).
        cycle: the labeling cycle (a folder name under ``base.paths.samples``).
        backend: a ready backend (tests); default: the one ``label.backend`` names.

    Returns:
        The :class:`~tasks.contracts.reports.label.LabelResult` (also written to ``<reports>/label.json``).

    Raises:
        LabelError: bad cycle name, image outside the document root or missing, unconvertible annotation.
        SampleManifestError: the sample manifest is missing or malformed.
        LabelStudioUnavailable / LabelStudioAuthError / LabelStudioError: see
            :func:`tasks.adapters.labelstudio.call_with_retries`.
        LabelStudioStorageError: Label Studio refused the S3 storage of ``s3://`` images (endpoint named; SSRF, keys).
        S3Error: an ``s3://`` image cannot be read (not a deleted one: that is reported in ``missing``).
    """
    check_cycle_name(cycle, error=LabelError)
    start = time.perf_counter()
    rows = sample_manifest.read_manifest(manifest_path(params, cycle))
    ledger = read_ledger(ledger_path(params), error=LabelError)
    backend = backend if backend is not None else make_backend(params, cycle, ledger)
    queued = queue_images(params, cycle=cycle, rows=rows, ledger=ledger, backend=backend)
    done = collect_annotations(params, ledger=ledger, backend=backend)
    mine = [r for r in ledger.values() if r["cycle"] == cycle]
    labeled = sum(r["status"] == LABELED for r in mine)
    pending = sum(r["status"] == QUEUED for r in mine)
    result = LabelResult(
        cycle=cycle,
        backend=backend.name,
        project_id=backend.project_id,
        imported=queued.imported,
        already_imported=len(rows) - queued.imported - len(queued.missing),  # queued earlier, or adopted
        collected=done.collected,
        skipped=done.skipped,
        pending=pending,
        labeled=labeled,
        min_labeled=params.label.min_labeled,
        waiting=labeled < params.label.min_labeled and pending > 0,
        labels_dir=str(params.base.paths.labels / cycle),
        ledger=str(ledger_path(params)),
        rejected=done.rejected,
        without_predictions=queued.without_predictions,
        missing=queued.missing,
        wall_s=round(time.perf_counter() - start, 2),
    )
    log.info(
        "label %s: imported %d (already %d), collected %d, skipped %d, pending %d, labeled %d/%d%s",
        cycle,
        result.imported,
        result.already_imported,
        result.collected,
        result.skipped,
        pending,
        labeled,
        result.min_labeled,
        " -> waiting for labels" if result.waiting else "",
    )
    write_report(params.base.paths.reports, "label", result, params)
    return result


def _summary(result: LabelResult) -> str:
    hidden = ("rejected", "without_predictions", "wall_s")
    return json.dumps({k: v for k, v in asdict(result).items() if k not in hidden})


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycle", required=True, help="labeling cycle (folder under base.paths.samples)")


def main(argv: list[str] | None = None) -> LabelResult:
    """``python -m tasks.label --params P [--params OVERLAY ...] --cycle C``."""
    return stage_main(
        "label",
        __doc__,
        run=lambda params, args: run(params, cycle=args.cycle),
        arguments=_arguments,
        summary=_summary,
        argv=argv,
    )


if __name__ == "__main__":
    main()
