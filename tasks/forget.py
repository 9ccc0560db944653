"""Stage ``forget``: one image out of every store (a privacy request), and the retention policy for raw data.

Contract:
    inputs: an image reference, its content hash (64 hex digits) or its id (file stem); every store it may have
        reached: the prediction log (``base.paths.predictions``), production batches (``base.paths.production``,
        ``base.paths.oracle``, and the objects under ``base.storage.production`` when production lives on S3),
        sample manifests (``base.paths.samples``), the label ledger, Label Studio tasks and label folders
        (``base.paths.labels``), quarantine, merged shards + manifest, holdouts, reports, model folders (dataset
        views), the DVC cache and remote (when run in a DVC project), the MLflow store's artifacts (runs and
        logged models: the monitor baseline parquet, tables, attached reports);
    params: ``base`` (paths), ``label`` (the Label Studio connection), ``registry`` (the MLflow store),
        ``forget`` (``audit_log``, ``retention``);
    outputs: ``<reports>/forget.json`` (:class:`~tasks.contracts.reports.forget.ForgetReport`: what was removed
        where, and any trace still found) and one line in ``forget.audit_log`` (the hash, never the pixels, ids only
        as digests: :mod:`tasks.contracts.privacy_audit`);
    side effects: the removals. Everything else stays byte-identical ("never discard" holds for every other image):
        Parquet files lose only the image's rows, JSON its entries, text its lines; merged shards holding it are
        written again without it as a new shard generation by the merge stage's own writer
        (:func:`tasks.merge.forget_images`) and the old ones deleted; DVC objects that hold it (its file, old shards,
        manifests and folder listings naming it) are deleted from the cache and the remote after the changed
        stages are committed again, so a pinned version that used them is no longer restorable; MLflow artifacts
        holding its bytes are deleted, those holding its rows rewritten.

Errors: a reference found in no store (and never forgotten before) is :class:`ImageNotFoundError` naming where it
was looked for; an id naming several different images asks for the hash. Forgetting twice is fine: the audit trail
knows the hash, the second run re-checks every store and removes whatever an interrupted first run left. Every file
is rewritten atomically (temp file + rename), so an interrupt leaves each file old or new, and a re-run finishes.

Retention (``python -m tasks.forget --retention``, schedule it like any deployment; default off): prediction log
partitions whose date is more than ``forget.retention.prediction_log_days`` days before today, and production batch
folders (``YYYY-MM-DD...`` names) older than ``forget.retention.production_image_days`` days, are deleted; labeled
copies (label folders, merged data, holdouts) are training data and stay.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.adapters import image_store, log_store
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import privacy_audit
from tasks.contracts.image_traces import ImageKey, contains, scrub
from tasks.contracts.ledger import ledger_path, read_ledger
from tasks.contracts.merged_forget import forget_images
from tasks.contracts.reports import write_report
from tasks.contracts.reports.forget import ForgetReport
from tasks.core.hashing import file_sha256
from tasks.io import write_bytes_atomic

log = logging.getLogger(__name__)

STAGE = "forget"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class ForgetError(VisionloopError):
    """The forget stage cannot do what was asked; the message names the image or store and the fix."""


class ImageNotFoundError(ForgetError, LookupError):
    """The image reference is in no store and was never forgotten."""


# ------------------------------------------------------------------------------------------------ finding the image


def _roots(params: Params) -> list[Path]:
    """The local folders that may hold an image or its rows, outermost only (no folder twice); the prediction log's
    mirror is synced from S3 first when the log lives there."""
    paths = params.base.paths
    folders = [
        paths.world, paths.production, paths.oracle, paths.train, paths.val, paths.golden, log_store.log_root(params),
        paths.samples, paths.labels, paths.quarantine, paths.holdouts, paths.merged, paths.models, paths.reports,
    ]  # fmt: skip
    resolved = sorted({p.resolve() for p in folders}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for folder in resolved:
        if not any(folder.is_relative_to(o) for o in out):
            out.append(folder)
    return out


def _files(params: Params) -> Iterator[Path]:
    """Every file of :func:`_roots` but the privacy trail and this stage's report (they hold the hash by design)."""
    own = {params.forget.audit_log.resolve(), (params.base.paths.reports / f"{STAGE}.json").resolve()}
    for root in _roots(params):
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.resolve() not in own:
                    yield path


def _table_hits(path: Path, ref: str) -> tuple[set[str], set[str]]:
    """``(hashes, ids)`` of the rows of a Parquet table whose hash or id column equals ``ref``."""
    try:
        table = pq.read_table(path)
    except Exception:  # not a table we know: the trace scan handles it
        return set(), set()
    names = table.column_names
    sha_col = next((c for c in ("image_sha256", "sha256") if c in names), None)
    if sha_col is None or "image_id" not in names:
        return set(), set()
    hit = pc.or_(pc.equal(table[sha_col], ref), pc.equal(table["image_id"], ref))
    rows = table.filter(pc.fill_null(hit, False))
    return set(rows[sha_col].to_pylist()), set(rows["image_id"].to_pylist())


def resolve(params: Params, ref: str) -> ImageKey | None:
    """The image ``ref`` (a hash or an id) names: its hash, every id it has, its bytes when a copy is left.

    Looks in every Parquet table with ``image_sha256``/``sha256`` + ``image_id`` columns (log, ledger, manifests)
    and at every image file (by stem, and by hash when ``ref`` is one).

    Raises:
        ForgetError: an id that names images with different bytes (pass the hash).
    """
    hashes: set[str] = {ref} if _SHA256.match(ref) else set()
    ids: set[str] = set()
    images: list[Path] = []
    for path in _files(params):
        if path.suffix == ".parquet":
            found_hashes, found_ids = _table_hits(path, ref)
            hashes |= found_hashes
            ids |= found_ids
        elif path.suffix.lower() in _IMAGE_SUFFIXES:
            images.append(path)
    by_hash: dict[str, list[Path]] = {}
    for path in images:
        if path.stem == ref or path.stem in ids or hashes:
            by_hash.setdefault(file_sha256(path), []).append(path)
    for sha, paths in by_hash.items():
        if any(p.stem == ref for p in paths):
            hashes.add(sha)
    s3_copy = _s3_copy(params, ref) if not hashes else None  # only on S3 (the staging folder cleaned): hash it there
    if s3_copy is not None:
        hashes.add(s3_copy.sha256)
    if not hashes:
        return None
    if len(hashes) > 1:
        raise ForgetError(f"image id {ref!r} names {len(hashes)} different images {sorted(hashes)}; forget by hash")
    (sha,) = hashes
    copies = by_hash.get(sha, [])
    ids |= {p.stem for p in copies} | ({ref} if ref != sha else set())
    if not ids and not copies and not _seen_anywhere(params, sha):
        return None
    data = copies[0].read_bytes() if copies else (s3_copy.data if s3_copy is not None else None)
    return ImageKey(sha256=sha, ids=frozenset(ids), data=data)


def _s3_copy(params: Params, ref: str) -> image_store.FetchedImage | None:
    """The bytes and hash of the S3 production image whose id is ``ref`` (None: production is local, or no such)."""
    location = params.base.storage.production
    if location is None or _SHA256.match(ref):
        return None
    found = image_store.find_images(location, {ref})
    return image_store.fetch_image(found[0]) if found else None


def _forget_s3_production(params: Params, key: ImageKey, *, dry: bool = False) -> list[str]:
    """Delete the image's objects under ``base.storage.production`` (those named by one of its ids)."""
    location = params.base.storage.production
    if location is None or not key.ids:
        return []
    found = image_store.find_images(location, key.ids)
    for uri in [] if dry else found:
        image_store.delete_image(uri)
    return [f"{uri} (deleted)" for uri in found]


def _seen_anywhere(params: Params, sha: str) -> bool:
    key = ImageKey(sha256=sha, ids=frozenset())
    return any(contains(path.read_bytes(), key) for path in _files(params))


# ------------------------------------------------------------------------------------------------ removing it


def _forget_label_studio(params: Params, key: ImageKey) -> list[str]:
    """Delete the image's Label Studio tasks: those the ledger names, and any task naming its hash in their projects
    or in the project the label stage recorded (an import whose ledger write was lost); nothing when it never went
    there (no ledger row and no recorded project)."""
    rows = [r for r in read_ledger(ledger_path(params)).values() if r["image_sha256"] == key.sha256]
    rows = [r for r in rows if r["backend"] == "labelstudio"]
    projects = {int(r["project_id"]) for r in rows if r["project_id"] is not None}
    from tasks.adapters.labelstudio import label_studio_url, projects_path, read_project_record

    url, title = label_studio_url(params.label), params.label.project_title
    recorded = read_project_record(projects_path(params), url=url, title=title)  # None: no record (file)
    projects |= set() if recorded is None else {recorded}
    if not rows and not projects:
        return []
    from tasks.adapters.labelstudio_forget import delete_image_tasks

    deleted = delete_image_tasks(
        params.label,
        task_ids=[int(r["task_id"]) for r in rows if r["task_id"] is not None],
        project_ids=sorted(projects),
        sha256=key.sha256,
    )
    return [f"task {t}" for t in deleted]


def _sweep(params: Params, key: ImageKey, *, dry: bool = False) -> list[str]:
    """Every local file: the image's copies and files named after it deleted, its rows and entries taken out."""
    changed = []
    for path in _files(params):
        if path.stem in key.ids and not path.name.endswith(".parquet"):
            action, new = "deleted", None
        else:
            data = path.read_bytes()
            new = scrub(path.name, data, key)
            if new is data:
                continue
            action = "deleted" if new is None else "rewritten"
        changed.append(f"{path} ({action})")
        if dry:
            continue
        if new is None:
            path.unlink()
        else:
            write_bytes_atomic(path, new)
    return changed


def _forget_dvc(params: Params, key: ImageKey, root: Path) -> tuple[list[str], list[str]]:
    """Commit the changed stages again, then purge every cached/remote object holding the image; (removed, notes)."""
    from tasks.adapters import dvc

    reason = dvc.not_this_project(params, root)
    if reason is not None:
        return [], [f"dvc: not searched ({reason})"]
    locked = [s for s in dvc.locked_stages(root) if s != dvc.PARAMS_STAGE]
    recorded = dvc.record(params, locked, root=root)
    purged = dvc.purge_objects(root, lambda blob: contains(blob, key))
    pushed = dvc.push(root)
    removed = [f"cache {o}" for o in purged.local] + [f"remote {o}" for o in purged.remote]
    notes = [f"dvc: stages {', '.join(recorded.stages)} committed again without the image"]
    if purged.local or purged.remote:
        notes.append("dvc: versions pinned before this forget that used the purged objects are no longer restorable")
    if not pushed.ok:
        notes.append(f"dvc: push of the new outputs failed ({pushed.error}); run `make gc` after fixing the remote")
    return removed, notes


def _mlflow_store_exists(params: Params) -> bool:
    from tasks.adapters.mlflow import tracking_uri

    uri = tracking_uri(params)
    return not uri.startswith("sqlite:") or Path(uri.removeprefix("sqlite:///")).is_file()


def _forget_mlflow(params: Params, key: ImageKey) -> list[str]:
    if not _mlflow_store_exists(params):
        return []
    from tasks.adapters.mlflow_artifacts import edit_artifacts

    return edit_artifacts(params, lambda path, data: scrub(path.rpartition("/")[2], data, key))


# long: the store-by-store sequence of one forget, each step a call to the store's owner
def forget(params: Params, ref: str, *, root: Path = Path(".")) -> tuple[ForgetReport, list[str]]:
    """Remove the image ``ref`` names from every store (see the module contract); the report and the image's ids.

    Raises:
        ImageNotFoundError: in no store and not in the audit trail.
    """
    start = time.perf_counter()
    ref = ref.strip().lower() if _SHA256.match(ref.strip().lower()) else ref.strip()
    key = resolve(params, ref)
    mode: str = "forget"
    if key is None:
        earlier = privacy_audit.forgotten_hash(params.forget.audit_log, ref)
        if earlier is None:
            where = ", ".join(str(p) for p in _roots(params))
            raise ImageNotFoundError(
                f"image {ref!r}: no store holds it (searched the prediction log, manifests, ledger and image files "
                f"under {where}) and {params.forget.audit_log} has no forget of it; check the hash or id"
            )
        key, mode = ImageKey(sha256=earlier, ids=frozenset({ref} - {earlier})), "already_forgotten"
    removed: dict[str, list[str]] = {}
    notes: list[str] = []
    if mode == "forget":
        removed["label_studio"] = _forget_label_studio(params, key)
    merged = forget_images(params, {key.sha256})
    removed["merged"] = [*merged.rows, *(f"{s} (deleted)" for s in merged.deleted_shards)]
    removed["merged"] += [f"{s} (new generation)" for s in merged.new_shards] + list(merged.holdout_files)
    removed["files"] = _sweep(params, key)
    removed["production_s3"] = _forget_s3_production(params, key)
    republished = log_store.publish_local_changes(params)  # an S3 log: the rewritten parts replace the old objects
    if republished is not None:
        notes.append(f"prediction log {log_store.describe(params)}: {len(republished.parts)} part(s) republished")
    removed["dvc"], dvc_notes = _forget_dvc(params, key, root)
    notes += dvc_notes
    removed["mlflow"] = _forget_mlflow(params, key)
    left = {"files": _sweep(params, key, dry=True), "production_s3": _forget_s3_production(params, key, dry=True)}
    left["s3_prediction_log"] = log_store.traces(params, lambda blob: contains(blob, key))
    if _mlflow_store_exists(params):
        from tasks.adapters.mlflow_artifacts import edit_artifacts

        left["mlflow"] = edit_artifacts(params, lambda path, data: scrub(path.rpartition("/")[2], data, key), dry=True)
    pattern = ImageKey(sha256="-" * 64, ids=key.ids).token_pattern() if key.ids else None

    def redact(items: list[str]) -> list[str]:  # the report and the trail name the image by its hash only
        return [pattern.sub("<image>", item) for item in items] if pattern else items

    report = ForgetReport(
        mode=mode,  # type: ignore[arg-type]
        image_sha256=key.sha256,
        removed={k: redact(v) for k, v in removed.items() if v},
        left={k: redact(v) for k, v in left.items() if v},
        notes=tuple(notes),
        wall_s=round(time.perf_counter() - start, 3),
    )
    return report, sorted(key.ids)


# ------------------------------------------------------------------------------------------------ retention


def _remove_tree(folder: Path) -> None:
    """Rename aside (hidden, atomic) then delete: readers see the folder whole or not at all."""
    aside = folder.with_name(f".{folder.name}.forget")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(folder, aside)
    shutil.rmtree(aside)


def retain(params: Params, *, today: dt.date | None = None) -> ForgetReport:
    """Apply ``forget.retention`` (off: nothing changes): old log partitions and raw production batches deleted."""
    start = time.perf_counter()
    today = today or dt.datetime.now(dt.UTC).date()
    policy, paths = params.forget.retention, params.base.paths
    removed: dict[str, list[str]] = {}
    targets: list[tuple[int | None, Path, str, str]] = []
    if policy.prediction_log_days is not None:  # an S3 log: its mirror is synced, then what is removed withdrawn
        log_root = log_store.log_root(params)
        targets.append((policy.prediction_log_days, log_root, "prediction_log", r"date=(\d{4}-\d{2}-\d{2})$"))
    targets.append((policy.production_image_days, paths.production, "production", _DATED.pattern))
    for days, folder, store, pattern in targets:
        if days is None or not folder.is_dir():
            continue
        cutoff = today - dt.timedelta(days=days)
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            match = re.search(pattern, child.name)
            if match and dt.date.fromisoformat(match.group(1)) < cutoff:
                _remove_tree(child)
                removed.setdefault(store, []).append(f"{child} (older than {cutoff})")
    if policy.production_image_days is not None and params.base.storage.production is not None:
        location, cutoff = params.base.storage.production, today - dt.timedelta(days=policy.production_image_days)
        for batch in image_store.list_batches(location):
            match = _DATED.match(batch)
            if match and dt.date.fromisoformat(match.group(1)) < cutoff:
                count = image_store.delete_batch(location, batch)
                removed.setdefault("production_s3", []).append(
                    f"{location}/{batch} ({count} objects, older than {cutoff})"
                )
    if "prediction_log" in removed:
        log_store.publish_local_changes(params)
    return ForgetReport(
        mode="retention", image_sha256="", removed=removed, wall_s=round(time.perf_counter() - start, 3)
    )


# ------------------------------------------------------------------------------------------------ the stage


def run(
    params: Params,
    *,
    image: str | None = None,
    retention: bool = False,
    today: dt.date | None = None,
    root: Path = Path("."),
) -> ForgetReport:
    """Forget ``image`` (a hash or an id), or apply the retention policy; audit it and write ``reports/forget.json``.

    Raises:
        ForgetError: neither or both of ``image`` and ``retention``; see :func:`forget`.
    """
    if (image is None) == (not retention):
        raise ForgetError("say what to forget: IMAGE=<sha256 or image id> (make forget), or --retention")
    if image is not None:
        report, ids = forget(params, image, root=root)
    else:
        report, ids = retain(params, today=today), []
    if report.removed or report.mode != "retention":
        privacy_audit.append_entry(params.forget.audit_log, report, ids=ids)
    write_report(params.base.paths.reports, STAGE, report, params)
    for store, items in report.removed.items():
        log.info("forget: %s: %d removed or rewritten", store, len(items))
    if report.left:
        log.warning("forget: traces left in %s", json.dumps(report.left))
    return report


def main(argv: list[str] | None = None) -> ForgetReport:
    """``python -m tasks.forget [--params P ...] (--image SHA256_OR_ID | --retention)``."""

    def _arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image", default=None, help="content hash (64 hex digits) or image id to forget")
        parser.add_argument("--retention", action="store_true", help="apply forget.retention (schedule this)")

    def _summary(report: ForgetReport) -> str:
        counts = {store: len(items) for store, items in report.removed.items()}
        return json.dumps({"mode": report.mode, "image_sha256": report.image_sha256, "removed": counts})

    result: ForgetReport = stage_main(
        STAGE,
        __doc__,
        lambda params, args: run(params, image=args.image, retention=args.retention),
        arguments=_arguments,
        summary=_summary,
        argv=argv,
    )
    return result


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
