"""S3 through boto3: list, stream, hash, download, upload, and publish parts behind a manifest.

The one module that talks to object storage (retries live here and nowhere else). Everything about *where* comes
from the environment, never from params: the endpoint (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, which
botocore reads itself; unset: AWS), the region (``AWS_REGION`` / ``AWS_DEFAULT_REGION``) and the credentials
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` or any other source of botocore's chain).

- :func:`connect` builds a client with botocore's retries (``standard`` or ``adaptive`` mode: 5xx, throttling and
  connection errors are retried with exponential backoff and jitter) and counts the retries in :class:`RetryStats`.
- :func:`list_objects` pages through a prefix; :func:`iter_chunks`, :func:`sha256_object` and
  :func:`download_file` stream an object's body (no full copy in memory; downloads are atomic: temp + rename).
- :func:`put_bytes` and :func:`upload_file` (multipart above a threshold, for large engines) write one object.
- S3 has no rename; a single-object PUT is what is atomic. :func:`publish` writes each part under a unique name,
  then one small manifest object that names them; :func:`published_parts` reads the manifests, so a reader never
  sees a part whose writer died before its manifest (:func:`unpublished_parts` lists those leftovers;
  :func:`incomplete_uploads` the multipart uploads never completed, which are no object at all). A manifest records
  each part's relative name and may withdraw names (``removed``): the prediction log's store
  (:mod:`tasks.adapters.log_store`) reads "the latest publish of a name wins" from them.

Errors are :class:`S3Error` subclasses naming the endpoint and ``s3://bucket/key`` and the fix, never a secret:
:class:`S3AuthError`, :class:`S3BucketMissing`, :class:`S3ObjectMissing` (an object deleted between listing and
reading: the caller reports that one and goes on) and :class:`S3Unreachable`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.config import VisionloopError
from tasks.io import atomic_open

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 5  # the first try included
CHUNK_SIZE = 1024 * 1024
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
MANIFESTS = "_manifests"  # a leading underscore: PyArrow's dataset discovery ignores it
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SECRET_ENVS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_AUTH_CODES = {
    "AccessDenied",
    "AuthFailure",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "403",
}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PUBLISH_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


# ------------------------------------------------------------------ errors


class S3Error(VisionloopError):
    """An S3 call failed; the message names the endpoint and ``s3://bucket/key`` (never a secret)."""


class S3AuthError(S3Error):
    """The credentials are missing, unknown to the endpoint, or not allowed to do this."""


class S3BucketMissing(S3Error):
    """The bucket does not exist at this endpoint."""


class S3ObjectMissing(S3Error):
    """The object does not exist (deleted between listing and reading): report it and go on with the others."""


class S3Unreachable(S3Error):
    """The endpoint did not answer (refused, timed out, or kept failing after every retry)."""


# ------------------------------------------------------------------ addresses


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/prefix``: ``prefix`` without leading or trailing ``/`` (empty: the whole bucket)."""

    bucket: str
    prefix: str = ""

    def key(self, name: str) -> str:
        """The key of ``name`` under this prefix."""
        name = name.lstrip("/")
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_uri(uri: str | S3Uri) -> S3Uri:
    """``"s3://bucket/some/prefix/"`` -> ``S3Uri("bucket", "some/prefix")``.

    Raises:
        S3Error: not an ``s3://`` URI, or the bucket name is not a valid S3 bucket name.
    """
    if isinstance(uri, S3Uri):
        return uri
    scheme, sep, rest = uri.partition("://")
    if scheme != "s3" or not sep:
        raise S3Error(f"{uri!r}: not an S3 URI (expected s3://bucket/prefix)")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise S3Error(f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    return S3Uri(bucket=bucket, prefix=prefix.strip("/"))


@dataclass(frozen=True)
class S3Object:
    """One listed object: its key, size in bytes and ETag (quotes stripped; ``-N`` suffix: a multipart upload)."""

    key: str
    size: int
    etag: str


# ------------------------------------------------------------------ the client


@dataclass
class RetryStats:
    """Retries counted from every answered call's ``ResponseMetadata.RetryAttempts``.

    Attributes:
        calls: calls answered (successfully or with an error response).
        retries: retries those calls needed in all.
        by_operation: operation name -> retries.
    """

    calls: int = 0
    retries: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def on_after_call(self, parsed: Mapping[str, Any] | None = None, model: Any = None, **_: Any) -> None:
        """botocore's ``after-call.s3`` hook (one client may serve many threads: counted under a lock)."""
        attempts = int(((parsed or {}).get("ResponseMetadata") or {}).get("RetryAttempts") or 0)
        name = getattr(model, "name", "?")
        with self._lock:
            self.calls += 1
            if attempts:
                self.retries += attempts
                self.by_operation[name] = self.by_operation.get(name, 0) + attempts
        if attempts:
            log.warning("s3: %s answered after %d retr%s", name, attempts, "y" if attempts == 1 else "ies")


@dataclass(frozen=True)
class S3Connection:
    """A boto3 S3 client, the endpoint it talks to, and its retry counts.

    Attributes:
        client: the boto3 client (untyped: no stubs in the lock).
        endpoint: the endpoint URL the client resolved (from the environment, or AWS's).
        stats: retries counted so far.
        max_attempts: attempts per call, the first included.
    """

    client: Any = field(repr=False)
    endpoint: str
    stats: RetryStats
    max_attempts: int
    _session: Any = field(repr=False, compare=False)


def endpoint_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else ``None`` (AWS itself): botocore's order for S3."""
    env = os.environ if environ is None else environ
    return next((env[name] for name in ENDPOINT_ENVS if env.get(name)), None)


def connect(
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_mode: Literal["standard", "adaptive"] = "standard",
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
) -> S3Connection:
    """A client configured from the environment only (endpoint, region, credentials), with retries counted.

    Args:
        max_attempts: attempts per call, the first included (1: no retry).
        retry_mode: botocore's ``standard`` (backoff with jitter on 5xx, throttling, connection errors) or
            ``adaptive`` (the same plus client-side rate limiting after throttling).
        connect_timeout_s: seconds to wait for a connection.
        read_timeout_s: seconds to wait for bytes of an answer.
    """
    import boto3
    from botocore.config import Config

    if max_attempts < 1:
        raise S3Error(f"max_attempts must be >= 1, got {max_attempts}")
    session = boto3.session.Session()
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": retry_mode},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    client = session.client("s3", config=config)
    stats = RetryStats()
    client.meta.events.register("after-call.s3", stats.on_after_call)
    endpoint = str(client.meta.endpoint_url)
    return S3Connection(client=client, endpoint=endpoint, stats=stats, max_attempts=max_attempts, _session=session)


def _secrets(conn: S3Connection) -> list[str]:
    found = [os.environ[name] for name in SECRET_ENVS if os.environ.get(name)]
    try:
        credentials = conn._session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except Exception:  # a broken profile: there is nothing more to hide than the environment's
        frozen = None
    if frozen is not None:
        found += [s for s in (frozen.secret_key, frozen.token) if s]
    return [s for s in found if len(s) >= 4]


def _scrub(text: str, conn: S3Connection) -> str:
    for secret in _secrets(conn):
        text = text.replace(secret, "***")
    return text


def _translate(conn: S3Connection, exc: Exception, action: str, where: str) -> S3Error:
    """The :class:`S3Error` for a botocore/boto3 failure of ``action`` on ``where`` (``s3://bucket/key``)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    head = f"s3 {action} {where} at {conn.endpoint}"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ClientError):
        cause = cause.__cause__ or cause.__context__  # boto3's transfer errors wrap the ClientError
    error: S3Error
    if isinstance(cause, ClientError):
        body = cause.response.get("Error", {})
        code = str(body.get("Code") or "")
        status = (cause.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        text = f"{head}: {code or status} ({body.get('Message') or 'no message'})"
        if code in _AUTH_CODES:
            error = S3AuthError(f"{text}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        elif code == "NoSuchBucket":
            error = S3BucketMissing(f"{text}; create the bucket or fix the URI")
        elif code in ("NoSuchKey", "404"):
            error = S3ObjectMissing(f"{text}: the object is gone (deleted after it was listed?)")
        elif isinstance(status, int) and status >= 500:
            error = S3Unreachable(f"{text}; still failing after {conn.max_attempts} attempt(s)")
        else:
            error = S3Error(text)
    elif isinstance(exc, NoCredentialsError | PartialCredentialsError):
        error = S3AuthError(f"{head}: no usable credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    elif isinstance(exc, ConnectionError):
        error = S3Unreachable(
            f"{head}: {type(exc).__name__}; is the endpoint up? (set by {' or '.join(ENDPOINT_ENVS)})"
        )
    else:
        error = S3Error(f"{head}: {type(exc).__name__}: {exc}")
    return type(error)(_scrub(str(error), conn))


@contextmanager
def _errors(conn: S3Connection, action: str, bucket: str, key: str = "") -> Iterator[None]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        raise _translate(conn, exc, action, f"s3://{bucket}/{key}") from None


# ------------------------------------------------------------------ reading


def list_objects(conn: S3Connection, uri: str | S3Uri, *, page_size: int = 1000) -> Iterator[S3Object]:
    """Every object under ``uri``'s prefix (a folder: ``prefix/``), key order, page by page (ListObjectsV2).

    Raises:
        S3BucketMissing, S3AuthError, S3Unreachable: as named.
    """
    where = parse_uri(uri)
    prefix = f"{where.prefix}/" if where.prefix else ""
    paginator = conn.client.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=where.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
    with _errors(conn, "list", where.bucket, prefix):
        for page in pages:
            for item in page.get("Contents", []):
                yield S3Object(key=item["Key"], size=int(item["Size"]), etag=str(item["ETag"]).strip('"'))


def list_prefixes(conn: S3Connection, uri: str | S3Uri, *, page_size: int = 1000) -> Iterator[str]:
    """The "folders" directly under ``uri``'s prefix: each common prefix up to the next ``/`` (a full key, no
    trailing ``/``), key order, page by page (ListObjectsV2 with ``Delimiter="/"``). One request per
    ``page_size`` folders however many objects lie below them (a flat listing of 100 k keys is 100 pages).

    Raises:
        S3BucketMissing, S3AuthError, S3Unreachable: as named.
    """
    where = parse_uri(uri)
    prefix = f"{where.prefix}/" if where.prefix else ""
    paginator = conn.client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=where.bucket, Prefix=prefix, Delimiter="/", PaginationConfig={"PageSize": page_size}
    )
    with _errors(conn, "list", where.bucket, prefix):
        for page in pages:
            for item in page.get("CommonPrefixes", []):
                yield str(item["Prefix"]).rstrip("/")


def iter_chunks(conn: S3Connection, bucket: str, key: str, *, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The object's bytes, ``chunk_size`` at a time, as they arrive (never the whole body in memory).

    Raises:
        S3ObjectMissing: the object is gone (deleted after it was listed).
        S3BucketMissing, S3AuthError, S3Unreachable: as named.
    """
    with _errors(conn, "read", bucket, key):
        body = conn.client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()


def read_bytes(conn: S3Connection, bucket: str, key: str) -> bytes:
    """A small object's whole content (a manifest, a report)."""
    return b"".join(iter_chunks(conn, bucket, key))


@dataclass(frozen=True)
class Fetched:
    """What a streaming read produced: the bytes' SHA-256 (hex), their count, and the local file (if any)."""

    sha256: str
    size: int
    path: Path | None = None


def sha256_object(conn: S3Connection, bucket: str, key: str, *, chunk_size: int = CHUNK_SIZE) -> Fetched:
    """The SHA-256 of an object's bytes, hashed while they stream (no local copy)."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter_chunks(conn, bucket, key, chunk_size=chunk_size):
        digest.update(chunk)
        size += len(chunk)
    return Fetched(sha256=digest.hexdigest(), size=size)


def download_file(conn: S3Connection, bucket: str, key: str, path: Path, *, chunk_size: int = CHUNK_SIZE) -> Fetched:
    """Stream an object into ``path`` atomically (a reader sees the old file or the whole new one), hashing it."""
    digest, size = hashlib.sha256(), 0
    with atomic_open(Path(path)) as handle:
        for chunk in iter_chunks(conn, bucket, key, chunk_size=chunk_size):
            handle.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return Fetched(sha256=digest.hexdigest(), size=size, path=Path(path))


# ------------------------------------------------------------------ writing


def put_bytes(
    conn: S3Connection, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream"
) -> str:
    """One PUT of ``data`` (atomic: readers see the old object or the new one); returns the ETag."""
    with _errors(conn, "put", bucket, key):
        answer = conn.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return str(answer.get("ETag", "")).strip('"')


@dataclass(frozen=True)
class Uploaded:
    """An uploaded object: key, size, ETag and the number of multipart parts (0: one PUT)."""

    key: str
    size: int
    etag: str
    parts: int


def upload_file(
    conn: S3Connection,
    path: Path,
    bucket: str,
    key: str,
    *,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    multipart_chunk: int = MULTIPART_CHUNK,
    max_concurrency: int = 4,
) -> Uploaded:
    """Upload a local file, in parts above ``multipart_threshold`` bytes (large engines).

    A multipart upload becomes visible only when S3 completes it, whole; a failed one is aborted by boto3.
    """
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(
        multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunk, max_concurrency=max_concurrency
    )
    with _errors(conn, "upload", bucket, key):
        conn.client.upload_file(str(path), bucket, key, Config=transfer)
        head = conn.client.head_object(Bucket=bucket, Key=key)
    etag = str(head.get("ETag", "")).strip('"')
    parts = int(etag.rpartition("-")[2]) if "-" in etag else 0
    return Uploaded(key=key, size=int(head["ContentLength"]), etag=etag, parts=parts)


def delete_object(conn: S3Connection, bucket: str, key: str) -> None:
    """Delete one object (no error if it is already gone)."""
    with _errors(conn, "delete", bucket, key):
        conn.client.delete_object(Bucket=bucket, Key=key)


def ensure_bucket(conn: S3Connection, bucket: str) -> None:
    """Create ``bucket`` unless it exists and is ours (for the local stack and tests; real buckets are provisioned)."""
    from botocore.exceptions import ClientError

    with _errors(conn, "create bucket", bucket):
        try:
            region = conn.client.meta.region_name
            extra = (
                {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            )
            conn.client.create_bucket(Bucket=bucket, **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise


# ------------------------------------------------------------------ publish: unique parts, then one manifest


@dataclass(frozen=True)
class Published:
    """One publish: its id, the manifest's key, the parts it names and the relative part names it withdraws."""

    publish_id: str
    manifest: str
    parts: tuple[PublishedPart, ...]
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishedPart:
    """A part a manifest names: full key, size, SHA-256 and the relative name it was published as ("": older)."""

    key: str
    size: int
    sha256: str
    name: str = ""


def _unique_name(name: str, publish_id: str) -> str:
    folder, _, file = name.strip("/").rpartition("/")
    stem, dot, suffix = file.partition(".")
    unique = f"{stem}-{publish_id}{dot}{suffix}"
    return f"{folder}/{unique}" if folder else unique


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish(
    conn: S3Connection,
    uri: str | S3Uri,
    parts: Mapping[str, bytes | Path],
    *,
    publish_id: str | None = None,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    removed: Sequence[str] = (),
) -> Published:
    """Write ``parts`` under ``uri``, each under a unique name, then the manifest that makes them visible.

    ``parts`` maps a relative name (``date=2026-12-01/part.parquet``) to bytes or a local file; each is stored as
    ``<prefix>/<folder>/<stem>-<publish_id>.<suffix>`` and the manifest ``<prefix>/_manifests/<publish_id>.json``
    is written last, in one PUT. A writer killed before that leaves parts no manifest names: readers going through
    :func:`published_parts` never see them. The same ``publish_id`` again (a retried batch) overwrites the same
    keys: publishing is idempotent. ``removed`` names parts (relative names) this publish withdraws; it is stored
    in the manifest for readers that resolve publishes in order (:mod:`tasks.adapters.log_store`).
    """
    where = parse_uri(uri)
    publish_id = publish_id or uuid.uuid4().hex
    if not _PUBLISH_ID_RE.fullmatch(publish_id):
        raise S3Error(f"publish id {publish_id!r}: letters, digits, '.', '_' and '-' only (at most 128)")
    if any(name.strip("/").startswith(MANIFESTS) for name in parts):
        raise S3Error(f"{where}: part names may not start with {MANIFESTS!r} (the manifests live there)")
    written = []
    for name, content in sorted(parts.items()):
        key = where.key(_unique_name(name, publish_id))
        if isinstance(content, bytes):
            put_bytes(conn, where.bucket, key, content)
            sha = hashlib.sha256(content).hexdigest()
            written.append(PublishedPart(key=key, size=len(content), sha256=sha, name=name.strip("/")))
        else:
            done = upload_file(conn, content, where.bucket, key, multipart_threshold=multipart_threshold)
            sha = _sha256_file(content)
            written.append(PublishedPart(key=key, size=done.size, sha256=sha, name=name.strip("/")))
    manifest = where.key(f"{MANIFESTS}/{publish_id}.json")
    withdrawn = tuple(sorted({name.strip("/") for name in removed}))
    document: dict[str, Any] = {"publish_id": publish_id, "parts": [vars(p) for p in written]}
    if withdrawn:
        document["removed"] = list(withdrawn)
    put_bytes(conn, where.bucket, manifest, json.dumps(document, indent=1).encode(), content_type="application/json")
    log.info("s3: published %d part(s) under %s (manifest %s)", len(written), where, manifest)
    return Published(publish_id=publish_id, manifest=manifest, parts=tuple(written), removed=withdrawn)


def published(conn: S3Connection, uri: str | S3Uri) -> list[Published]:
    """Every publish under ``uri``, in manifest-key order; a manifest deleted while listing is skipped."""
    where = parse_uri(uri)
    found = []
    for item in list_objects(conn, S3Uri(where.bucket, where.key(MANIFESTS))):
        if not item.key.endswith(".json"):
            continue
        try:
            document = json.loads(read_bytes(conn, where.bucket, item.key))
        except S3ObjectMissing:
            continue  # compacted away between listing and reading
        except json.JSONDecodeError as exc:
            raise S3Error(f"s3://{where.bucket}/{item.key} at {conn.endpoint}: not a manifest ({exc})") from None
        found.append(parse_manifest(document, item.key))
    return found


def parse_manifest(document: Mapping[str, Any], key: str) -> Published:
    """The :class:`Published` a manifest's JSON document describes (``key``: the manifest's own key)."""
    parts = tuple(PublishedPart(**part) for part in document["parts"])
    removed = tuple(str(name) for name in document.get("removed", ()))
    return Published(publish_id=str(document["publish_id"]), manifest=key, parts=parts, removed=removed)


def published_parts(conn: S3Connection, uri: str | S3Uri) -> list[PublishedPart]:
    """The parts every manifest under ``uri`` names (what a reader reads), in key order."""
    return sorted({part for done in published(conn, uri) for part in done.parts}, key=lambda p: p.key)


def unpublished_parts(conn: S3Connection, uri: str | S3Uri) -> list[S3Object]:
    """Objects under ``uri`` that no manifest names: a killed writer's leftovers (or a publish still writing)."""
    where = parse_uri(uri)
    named = {part.key for part in published_parts(conn, where)}
    manifests = where.key(MANIFESTS) + "/"
    return [o for o in list_objects(conn, where) if o.key not in named and not o.key.startswith(manifests)]


@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload started and never completed nor aborted: invisible to every reader, still billed."""

    key: str
    upload_id: str
    initiated: str


def incomplete_uploads(conn: S3Connection, uri: str | S3Uri) -> list[IncompleteUpload]:
    """Multipart uploads under ``uri`` that were never completed (a killed writer's): none is an object yet."""
    where = parse_uri(uri)
    prefix = f"{where.prefix}/" if where.prefix else ""
    paginator = conn.client.get_paginator("list_multipart_uploads")
    found = []
    with _errors(conn, "list uploads", where.bucket, prefix):
        for page in paginator.paginate(Bucket=where.bucket, Prefix=prefix):
            for item in page.get("Uploads", []):
                initiated = str(item.get("Initiated", ""))
                found.append(IncompleteUpload(key=item["Key"], upload_id=item["UploadId"], initiated=initiated))
    return found
