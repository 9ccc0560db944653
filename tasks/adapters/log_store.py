"""Where the prediction log lives: the local folder ``base.paths.predictions``, or S3 with a local read-through mirror.

Every stage gets the log's root from :func:`log_root` and writes through :func:`append`; with
``base.storage.predictions`` null both are exactly the local log of :mod:`tasks.contracts.prediction_log`.

With ``base.storage.predictions: s3://bucket/prefix`` the S3 location is the log's source of truth, the same
hive-partitioned Parquet dataset: ``<prefix>/date=YYYY-MM-DD/<part>-<publish id>.parquet``. S3 has no rename and a
single-object PUT is what is atomic, so a write uploads its parts under unique names and then one manifest
``<prefix>/_manifests/<publish id>.json`` naming them (:func:`tasks.adapters.s3.publish`); parts no manifest names
(a killed writer's, :func:`tasks.adapters.s3.unpublished_parts`; an upload never completed is not even an object,
:func:`tasks.adapters.s3.incomplete_uploads`) are never read. Publish ids sort by time, and the latest publish
naming a logical part (``date=.../<part>.parquet``) wins: appending the same part again (a re-run) replaces it, as
the local log does, and a publish may withdraw parts (``removed``: forget, retention). After a writer's manifest is
written, and never before, :func:`collect` deletes the objects superseded parts left and the manifests that name
nothing live any more.

Readers: ``base.paths.predictions`` becomes a mirror of the published parts under their logical names, so every
local reader (:func:`tasks.contracts.prediction_log.read`, ``logged_batches``, ``window_files``, DuckDB, Polars)
works on it unchanged. Parts are immutable once published: the mirror is a cache keyed by object key + SHA-256
(``.mirror.json`` beside the parts; manifests are cached there by ETag, so a sync costs one LIST when nothing
changed). A part no longer published leaves the mirror; a mirror file whose size or mtime changed is hashed and
fetched again when its SHA-256 differs (``verify=True`` hashes every file); a download is atomic and checked against
the manifest's SHA-256. A ``*.parquet`` file in the mirror that S3 does not hold is refused (it would make the
local readers disagree with S3): :func:`publish_local_changes` publishes it (what forget does after rewriting
parts, and how a local log moves onto S3), or move it aside.

Reading the S3 dataset without the mirror: :func:`open_dataset` (PyArrow's ``S3FileSystem`` over the published
part list, endpoint and region from the environment). DuckDB's httpfs would need its extension downloaded, which
this project's offline machines cannot do, so PyArrow it is.

Endpoint, region and credentials come from the environment only (:mod:`tasks.adapters.s3`). The mirror lock
(``.mirror.lock``) serialises writers and syncs on one host; writers on several hosts are ordered by publish id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.adapters import s3
from tasks.config import Params, VisionloopError
from tasks.contracts import prediction_log
from tasks.core.hashing import file_sha256
from tasks.io import write_json_atomic

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

INDEX = ".mirror.json"
LOCK = ".mirror.lock"
LOCK_TIMEOUT_S = 120.0
FETCH_THREADS = 8  # parts are small: downloads wait on round trips, not bandwidth
SYNC_ATTEMPTS = 3  # a part collected between listing and fetching: list again
_NAME = re.compile(r"^date=\d{4}-\d{2}-\d{2}/[A-Za-z0-9=-][A-Za-z0-9._=-]*\.parquet$")
_last_id = 0
_id_lock = threading.Lock()


class LogStoreError(VisionloopError):
    """The prediction log's store is inconsistent or unusable; the message names the location and the fix."""


@dataclass(frozen=True)
class Synced:
    """What one mirror sync did: parts fetched, kept (already there) and removed, and its wall time."""

    location: str
    fetched: tuple[str, ...] = ()
    kept: int = 0
    removed: tuple[str, ...] = ()
    wall_s: float = 0.0


@dataclass(frozen=True)
class Collected:
    """What :func:`collect` deleted: superseded part objects and manifests that name nothing live."""

    objects: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()


@dataclass
class _Index:
    location: str
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"etag", "document"}
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"key", "sha256", "size", "mtime_ns"}
    dirty: bool = field(default=False, compare=False)  # changed since loaded: save it


# ------------------------------------------------------------------ the one entry for stages


def log_root(params: Params, *, verify: bool = False) -> Path:
    """The folder the local readers read: ``base.paths.predictions``, synced from S3 first when the log is there.

    Raises:
        LogStoreError: the mirror holds parts S3 does not (name them; fix: publish or move aside).
        tasks.adapters.s3.S3Error: the endpoint, bucket or credentials (named in the message).
    """
    root = Path(params.base.paths.predictions)
    location = params.base.storage.predictions
    if location is not None:
        sync(location, root, verify=verify)
    return root


def describe(params: Params) -> str:
    """The log's location for messages: the local folder, or ``s3://... (mirror <folder>)``."""
    root, location = params.base.paths.predictions, params.base.storage.predictions
    return str(root) if location is None else f"{location} (mirror {root})"


def append(params: Params, table: pa.Table, *, part: str) -> list[Path]:
    """Append ``table`` as ``part`` (:func:`tasks.contracts.prediction_log.append`'s contract), locally or on S3.

    On S3: the part files are written to a staging folder beside the mirror (the log's own writer and checks),
    published (unique objects, then the manifest), moved into the mirror, and the parts they supersede collected.

    Returns:
        The part files in the log root (the mirror on S3), sorted by date; empty when ``table`` has no rows.
    """
    root = Path(params.base.paths.predictions)
    location = params.base.storage.predictions
    if location is None:
        return prediction_log.append(root, table, part=part)
    staging = root.parent / f".{root.name}.append-{uuid.uuid4().hex[:12]}"
    try:
        files = prediction_log.append(staging, table, part=part)
        if not files:
            return []
        names = {f.relative_to(staging).as_posix(): f for f in files}
        conn = _connect()
        with _mirror_lock(root):
            done = s3.publish(conn, location, names, publish_id=new_publish_id())
            index = _load_index(root, location)
            for item in done.parts:
                target = root / item.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(names[item.name], target)
                index.files[item.name] = _entry(target, item)
            index.dirty = True
            _sync_locked(conn, location, root, verify=False, index=index)
            publishes = _cached_publishes(root, location)
        collect(location, conn=conn, publishes=publishes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(root / name for name in names)


def publish_local_changes(params: Params) -> s3.Published | None:
    """Publish what changed in the mirror since its last sync: new and rewritten parts, and withdraw deleted ones.

    Forget rewrites mirror parts without an image's rows (and retention deletes old dates) through this; it also
    moves an existing local log onto S3 (every file is new to the mirror). The superseded objects are collected
    afterwards, so the forgotten rows are gone from S3 too. None when the log is local or nothing changed.
    """
    location = params.base.storage.predictions
    if location is None:
        return None
    root = Path(params.base.paths.predictions)
    conn = _connect()
    with _mirror_lock(root):
        index = _load_index(root, location)
        local = {p.relative_to(root).as_posix(): p for p in _mirror_files(root)}
        changed = {
            name: path
            for name, path in local.items()
            if name not in index.files or file_sha256(path) != index.files[name]["sha256"]
        }
        removed = sorted(set(index.files) - set(local))
        bad = [name for name in changed if not _NAME.match(name)]
        if bad:
            raise LogStoreError(f"{root}: {bad} are not date=YYYY-MM-DD/<part>.parquet names; move them aside")
        if not changed and not removed:
            return None
        done = s3.publish(conn, location, changed, publish_id=new_publish_id(), removed=removed)
        for item in done.parts:
            index.files[item.name] = _entry(root / item.name, item)
        for name in removed:
            index.files.pop(name, None)
        index.dirty = True
        _sync_locked(conn, location, root, verify=False, index=index)
        publishes = _cached_publishes(root, location)
    collect(location, conn=conn, publishes=publishes)
    log.info("prediction log %s: published %d changed part(s), withdrew %d", location, len(changed), len(removed))
    return done


def traces(params: Params, predicate: Callable[[bytes], bool]) -> list[str]:
    """The log's S3 objects (published or not: a killed writer's too) whose bytes ``predicate`` flags, as URIs.

    Forget's check that no copy of an image's rows is left; empty for a local log. Reads every object once.
    """
    location = params.base.storage.predictions
    if location is None:
        return []
    conn = _connect()
    uri = s3.parse_uri(location)
    manifests = uri.key(s3.MANIFESTS) + "/"
    found = []
    for item in s3.list_objects(conn, uri):
        if item.key.startswith(manifests):
            continue
        try:
            if predicate(s3.read_bytes(conn, uri.bucket, item.key)):
                found.append(f"s3://{uri.bucket}/{item.key}")
        except s3.S3ObjectMissing:
            continue  # collected while listing
    return found


# ------------------------------------------------------------------ resolving publishes


def new_publish_id() -> str:
    """A publish id that sorts after every earlier one of this process (nanoseconds since the epoch + a nonce)."""
    global _last_id
    with _id_lock:
        _last_id = max(time.time_ns(), _last_id + 1)
        now = _last_id
    return f"{now:020d}-{uuid.uuid4().hex[:8]}"


def part_name(publish: s3.Published, part: s3.PublishedPart, uri: s3.S3Uri) -> str:
    """The logical name (``date=.../<part>.parquet``) of a published part (derived from its key in old manifests)."""
    if part.name:
        return part.name
    relative = part.key.removeprefix(f"{uri.prefix}/" if uri.prefix else "")
    return relative.replace(f"-{publish.publish_id}.", ".", 1)


def resolve(publishes: Sequence[s3.Published], uri: s3.S3Uri) -> dict[str, s3.PublishedPart]:
    """Logical name -> the part a reader reads: the latest publish (by id) naming it, unless a later one withdrew it."""
    live: dict[str, s3.PublishedPart] = {}
    for publish in sorted(publishes, key=lambda p: p.publish_id):
        for part in publish.parts:
            live[part_name(publish, part, uri)] = part
        for name in publish.removed:
            live.pop(name, None)
    return dict(sorted(live.items()))


def live_parts(location: str, *, conn: s3.S3Connection | None = None) -> dict[str, s3.PublishedPart]:
    """The parts readers of ``location`` read now, by logical name."""
    conn = conn or _connect()
    uri = s3.parse_uri(location)
    return resolve(s3.published(conn, uri), uri)


def collect(
    location: str, *, conn: s3.S3Connection | None = None, publishes: Sequence[s3.Published] | None = None
) -> Collected:
    """Delete superseded part objects, and manifests that name nothing live (never a live part or its manifest).

    A withdrawal (``removed``) stays while an older manifest that still holds live parts names what it withdrew.
    Manifests go first, then the objects: a reader that listed before sees a missing part and lists again.
    ``publishes``: the manifests as just listed (a writer's synced mirror caches them), else they are read.
    """
    conn = conn or _connect()
    uri = s3.parse_uri(location)
    publishes = sorted(s3.published(conn, uri) if publishes is None else publishes, key=lambda p: p.publish_id)
    live_keys = {part.key for part in resolve(publishes, uri).values()}
    holding = [p for p in publishes if any(part.key in live_keys for part in p.parts)]
    holding_ids = {p.publish_id for p in holding}
    dead_manifests = []
    for publish in publishes:
        if publish.publish_id in holding_ids:
            continue
        withdrawn = set(publish.removed)
        older = (p for p in holding if p.publish_id < publish.publish_id)
        if not (withdrawn and any(part_name(p, part, uri) in withdrawn for p in older for part in p.parts)):
            dead_manifests.append(publish.manifest)
    dead_objects = sorted({part.key for p in publishes for part in p.parts} - live_keys)
    for key in [*dead_manifests, *dead_objects]:
        s3.delete_object(conn, uri.bucket, key)
    if dead_manifests or dead_objects:
        log.info(
            "prediction log %s: collected %d object(s), %d manifest(s)", uri, len(dead_objects), len(dead_manifests)
        )
    return Collected(objects=tuple(dead_objects), manifests=tuple(dead_manifests))


_ENV_KEYS = (*s3.ENDPOINT_ENVS, "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", *s3.SECRET_ENVS)
_connections: dict[str, s3.S3Connection] = {}


def _connect() -> s3.S3Connection:
    """One client per process and environment (building one costs ~0.3 s; stages sync the mirror often)."""
    settings = "\0".join(os.environ.get(name, "") for name in _ENV_KEYS)
    ident = hashlib.sha256(settings.encode()).hexdigest()  # the secret is in the settings: keep only a digest
    with _id_lock:
        if ident not in _connections:
            _connections[ident] = s3.connect()
        return _connections[ident]


# ------------------------------------------------------------------ the mirror


def sync(location: str, root: Path, *, verify: bool = False, conn: s3.S3Connection | None = None) -> Synced:
    """Make ``root`` mirror the parts published at ``location`` (see the module docstring); read-only on S3."""
    conn = conn or _connect()
    with _mirror_lock(Path(root)):
        return _sync_locked(conn, location, Path(root), verify=verify)


def _sync_locked(
    conn: s3.S3Connection, location: str, root: Path, *, verify: bool, index: _Index | None = None
) -> Synced:
    start = time.perf_counter()
    for attempt in range(1, SYNC_ATTEMPTS + 1):
        index = index if attempt == 1 and index is not None else _load_index(root, location)
        try:
            synced = _sync_once(conn, location, root, index, verify=verify)
        except s3.S3ObjectMissing:
            _save_index(root, index)
            if attempt == SYNC_ATTEMPTS:
                raise
            log.info("prediction log %s: a part was collected while syncing; listing again", location)
            continue
        return dataclasses.replace(synced, wall_s=round(time.perf_counter() - start, 3))
    raise AssertionError("unreachable")  # pragma: no cover, the loop returns or raises


def _sync_once(conn: s3.S3Connection, location: str, root: Path, index: _Index, *, verify: bool) -> Synced:
    uri = s3.parse_uri(location)
    live = resolve(_manifests(conn, uri, index), uri)
    bad = [name for name in live if not _NAME.match(name)]
    if bad:
        raise LogStoreError(f"{uri} at {conn.endpoint}: manifests name parts outside date=YYYY-MM-DD/*.parquet: {bad}")
    kept, dirty, wanted = 0, index.dirty, {}
    for name, part in live.items():
        path = root / name
        if _current(path, index.files.get(name), part, verify=verify):
            kept += 1
        elif path.is_file() and file_sha256(path) == part.sha256:
            index.files[name], dirty = _entry(path, part), True  # the right bytes, not yet indexed
        else:
            wanted[name] = part
    fetched = _fetch(conn, uri, root, index, wanted)
    dirty |= bool(fetched)
    removed = []
    for name in sorted(set(index.files) - set(live)):
        (root / name).unlink(missing_ok=True)
        del index.files[name]
        removed.append(name)
    if dirty or removed:
        _save_index(root, index)
    foreign = [p for p in _mirror_files(root) if p.relative_to(root).as_posix() not in live]
    if foreign:
        raise LogStoreError(
            f"{root}: {len(foreign)} log file(s) that {uri} does not hold ({', '.join(map(str, foreign[:5]))}); "
            "the local readers would see rows S3 does not: publish them "
            "(tasks.adapters.log_store.publish_local_changes) or move them aside"
        )
    _remove_empty_dates(root)
    if fetched or removed:
        log.info(
            "prediction log %s -> %s: %d fetched, %d removed, %d kept", uri, root, len(fetched), len(removed), kept
        )
    return Synced(location=str(uri), fetched=tuple(fetched), kept=kept, removed=tuple(removed))


def _fetch(
    conn: s3.S3Connection, uri: s3.S3Uri, root: Path, index: _Index, wanted: Mapping[str, s3.PublishedPart]
) -> list[str]:
    """Download ``wanted`` into the mirror, ``FETCH_THREADS`` at a time, each checked against its SHA-256."""

    def fetch(name: str) -> str:
        part = wanted[name]
        path = root / name
        got = s3.download_file(conn, uri.bucket, part.key, path)
        if got.sha256 != part.sha256:
            path.unlink(missing_ok=True)
            raise LogStoreError(
                f"s3://{uri.bucket}/{part.key} at {conn.endpoint}: SHA-256 {got.sha256} differs from its "
                f"manifest's {part.sha256}; the object was changed in place (parts are immutable): re-publish it"
            )
        return name

    fetched: list[str] = []
    with ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="log-mirror") as pool:
        try:
            for name in pool.map(fetch, sorted(wanted)):
                index.files[name] = _entry(root / name, wanted[name])
                fetched.append(name)
        finally:
            if fetched:
                _save_index(root, index)  # a sync cut short keeps what it fetched
    return fetched


def _manifests(conn: s3.S3Connection, uri: s3.S3Uri, index: _Index) -> list[s3.Published]:
    """Every manifest under ``uri``: those the index cached (same ETag) without a GET."""
    found, cached = [], {}
    for item in s3.list_objects(conn, s3.S3Uri(uri.bucket, uri.key(s3.MANIFESTS))):
        if not item.key.endswith(".json"):
            continue
        entry = index.manifests.get(item.key)
        if entry is None or entry["etag"] != item.etag:
            try:
                document = json.loads(s3.read_bytes(conn, uri.bucket, item.key))
            except s3.S3ObjectMissing:
                continue  # collected between listing and reading
            except json.JSONDecodeError as exc:
                raise LogStoreError(
                    f"s3://{uri.bucket}/{item.key} at {conn.endpoint}: not a manifest ({exc})"
                ) from None
            entry = {"etag": item.etag, "document": document}
            index.dirty = True
        cached[item.key] = entry
        found.append(s3.parse_manifest(entry["document"], item.key))
    index.dirty |= set(cached) != set(index.manifests)
    index.manifests = cached
    return found


def _cached_publishes(root: Path, location: str) -> list[s3.Published]:
    """The manifests the mirror's index cached at its last sync."""
    index = _load_index(root, location)
    return [s3.parse_manifest(entry["document"], key) for key, entry in index.manifests.items()]


def _current(path: Path, entry: Mapping[str, Any] | None, part: s3.PublishedPart, *, verify: bool) -> bool:
    """The mirror file is this part's bytes: same key and hash recorded, same size and mtime (or re-hashed)."""
    if entry is None or entry["key"] != part.key or entry["sha256"] != part.sha256 or not path.is_file():
        return False
    stat = path.stat()
    if not verify and stat.st_size == entry["size"] and stat.st_mtime_ns == entry["mtime_ns"]:
        return True
    return file_sha256(path) == part.sha256


def _entry(path: Path, part: s3.PublishedPart) -> dict[str, Any]:
    stat = path.stat()
    return {"key": part.key, "sha256": part.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def local_folder(params: Params) -> Path:
    """The local folder (``base.paths.predictions``) as it is now, not synced: the whole log when it is local,
    the mirror when it is on S3. Readers use :func:`log_root`; this is for moving a local log (the migration)."""
    return Path(params.base.paths.predictions)


def local_parts(params: Params) -> dict[str, Path]:
    """The part files in :func:`local_folder` by logical name (``date=YYYY-MM-DD/<part>.parquet``), not synced."""
    root = local_folder(params)
    return {p.relative_to(root).as_posix(): p for p in _mirror_files(root)}


def _mirror_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{prediction_log.PART_SUFFIX}") if p.is_file()) if root.is_dir() else []


def _remove_empty_dates(root: Path) -> None:
    for folder in root.glob(f"{prediction_log.PARTITION_KEY}=*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _load_index(root: Path, location: str) -> _Index:
    path = root / INDEX
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return _Index(location=location, dirty=True)
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable mirror index (%s); every part is checked again", path, exc)
        return _Index(location=location, dirty=True)
    if data.get("location") != location:
        return _Index(location=location, dirty=True)  # another location's cache: its files are re-checked by hash
    return _Index(location=location, manifests=data.get("manifests", {}), files=data.get("files", {}))


def _save_index(root: Path, index: _Index) -> None:
    write_json_atomic(root / INDEX, {"location": index.location, "manifests": index.manifests, "files": index.files})
    index.dirty = False


@contextmanager
def _mirror_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise LogStoreError(
            f"{root / LOCK}: another process held the prediction log mirror for {LOCK_TIMEOUT_S:.0f} s; "
            "retry when it is done (delete the file only if no visionloop process runs)"
        ) from None
    try:
        yield
    finally:
        lock.release()


# ------------------------------------------------------------------ reading S3 directly


def filesystem() -> Any:
    """PyArrow's ``S3FileSystem`` for the environment's endpoint and region (credentials: the AWS SDK's chain)."""
    import urllib.parse

    from pyarrow import fs as pafs

    endpoint = s3.endpoint_from_env()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if endpoint is None:
        return pafs.S3FileSystem(region=region)
    parsed = urllib.parse.urlparse(endpoint)
    return pafs.S3FileSystem(region=region, endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")


def open_dataset(location: str, *, conn: s3.S3Connection | None = None) -> ds.Dataset:
    """The S3 log as a lazy PyArrow dataset over its published parts, read without the mirror.

    The same dataset the mirror holds: :data:`tasks.contracts.prediction_log.SCHEMA`, ``date`` read from the files
    (each part stores it), parts never published (a killed writer's) left out. Like the local
    :func:`tasks.contracts.prediction_log.open_dataset` it does not validate or upgrade.
    """
    import pyarrow.dataset as pads

    uri = s3.parse_uri(location)
    parts = live_parts(location, conn=conn)
    paths = [f"{uri.bucket}/{part.key}" for part in parts.values()]
    return pads.dataset(paths, filesystem=filesystem(), format="parquet", schema=prediction_log.SCHEMA)
