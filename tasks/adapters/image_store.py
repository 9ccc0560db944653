"""Production images where they live: a local folder (``base.paths.production``) or S3 (``base.storage.production``).

The one place that turns an image's address into bytes and a production location into batches, so that the
stages (``predict``, ``world``, ``sample``, ``forget``, ``label``) never branch on the store themselves. An image is
addressed by a plain path, a ``file://`` URI or ``s3://bucket/key``; S3 goes through :mod:`tasks.adapters.s3`
(retries, clear errors naming the endpoint and the URI, never a secret) with one cached connection per process
(a Dask worker opens its own).

On S3 a production batch is the common prefix ``<prefix>/<batch>/`` of objects ``<batch>/images/<file>`` (the
suffixes of :data:`tasks.contracts.yolo_labels.IMAGE_SUFFIXES`, direct children only, as the local listing), with
an optional ``<batch>/sources.csv`` (:mod:`tasks.contracts.batch_sources`). Listings are paginated
(:func:`tasks.adapters.s3.list_objects`); an image is read once, streamed and hashed while it streams, and kept in
memory only (:func:`fetch_image`): nothing is written to local disk. :func:`upload_batch` puts a local batch folder
there (the world stage) and skips the files already there with the same size and content (the listing's ETag is
the MD5 of a single-PUT object, so a re-run costs one listing and no reads).

Errors: :class:`ImageStoreError` (a local file that cannot be read; a bad location) and the
:class:`tasks.adapters.s3.S3Error` family for S3 (:class:`tasks.adapters.s3.S3ObjectMissing`: the object was
deleted between listing and reading; the caller reports that image and goes on).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tasks.adapters import s3
from tasks.config import Params, VisionloopError
from tasks.contracts.batch_sources import SOURCES_FILE, parse_sources
from tasks.contracts.yolo_labels import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

IMAGES = "images"
PAGE_SIZE = 1000  # S3's own maximum keys per ListObjectsV2 page
PROBE_PAGE_SIZE = 10  # keys per page when looking for a batch's first image (a full page costs 5x on moto)
_MD5_CHUNK = 1024 * 1024


class ImageStoreError(VisionloopError, OSError):
    """An image or a production location cannot be read (names the path or URI, and the fix when known)."""


# ------------------------------------------------------------------ addresses


def is_s3(location: str | Path) -> bool:
    """Whether ``location`` (an image address or a production location) is an ``s3://`` URI."""
    return isinstance(location, str) and location.startswith("s3://")


def production_location(params: Params) -> str | Path:
    """Where production batches are read: ``base.storage.production`` (``s3://...``) when set, else the folder."""
    return params.base.storage.production or params.base.paths.production


def image_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key``: how an S3 image is named in the prediction log (``image_uri``)."""
    return f"s3://{bucket}/{key}"


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key.png`` -> ``("bucket", "some/key.png")``.

    Raises:
        S3Error: not an ``s3://`` URI or no key.
    """
    where = s3.parse_uri(uri)
    if not where.prefix:
        raise s3.S3Error(f"{uri!r}: names a bucket, not an object (expected s3://bucket/key)")
    return where.bucket, where.prefix


def image_stem(address: str | Path) -> str:
    """The image id of an address (a path, ``file://`` or ``s3://`` URI): the file name's stem."""
    return PurePosixPath(str(address)).stem if is_s3(address) else Path(local_path(address)).stem


def local_path(address: str | Path) -> Path:
    """The local file of a plain path or a ``file://`` URI."""
    if isinstance(address, Path):
        return address
    parsed = urllib.parse.urlparse(address)
    return Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(address)


# ------------------------------------------------------------------ the connection


_CONNECTIONS: dict[tuple[object, ...], s3.S3Connection] = {}
_CONNECTING = threading.Lock()  # boto3 sessions are not thread-safe to create; a made client is


def connection() -> s3.S3Connection:
    """This process's S3 connection (one per process and environment: a changed endpoint or key makes a new one)."""
    env = os.environ
    names = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")
    # the secret is part of the key only in memory, so that new credentials are used at once; it is never logged
    key = (os.getpid(), *(env.get(n) for n in names), env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"))
    with _CONNECTING:
        found = _CONNECTIONS.get(key)
        if found is None:
            _CONNECTIONS.clear()  # at most one live connection per process
            found = _CONNECTIONS[key] = s3.connect()
        return found


# ------------------------------------------------------------------ reading one image


@dataclass(frozen=True)
class FetchedImage:
    """An image's bytes (in memory) and their SHA-256 (hex), hashed while they streamed."""

    data: bytes
    sha256: str


def fetch_image(uri: str | Path) -> FetchedImage:
    """Read one image once, whole, into memory, hashing it as it streams (an S3 object is never written to disk).

    Args:
        uri: ``s3://bucket/key``, a ``file://`` URI or a plain path.

    Raises:
        S3ObjectMissing: the S3 object is gone (deleted after it was listed): report this image and go on.
        S3Error: any other S3 failure (auth, bucket, endpoint), naming the endpoint and the URI.
        ImageStoreError: a local file that cannot be read, naming it.
    """
    digest = hashlib.sha256()
    if is_s3(uri):
        bucket, key = split_uri(str(uri))
        parts = []
        for chunk in s3.iter_chunks(connection(), bucket, key):
            digest.update(chunk)
            parts.append(chunk)
        data = b"".join(parts)
    else:
        path = local_path(uri)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageStoreError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from None
        digest.update(data)
    return FetchedImage(data=data, sha256=digest.hexdigest())


def read_image_bytes(uri: str | Path) -> bytes:
    """An image's bytes from ``s3://bucket/key``, a ``file://`` URI or a plain path (see :func:`fetch_image`)."""
    return fetch_image(uri).data


def delete_image(uri: str | Path) -> None:
    """Delete one production image, an S3 object or a local file (no error when it is already gone).

    Raises:
        S3Error: the store refused (auth, bucket, endpoint), naming the endpoint and the URI.
    """
    if not is_s3(uri):
        local_path(uri).unlink(missing_ok=True)
        return
    bucket, key = split_uri(str(uri))
    s3.delete_object(connection(), bucket, key)


# ------------------------------------------------------------------ batches on S3


def _objects(location: str, *, page_size: int) -> Iterator[tuple[str, s3.S3Object]]:
    """(key relative to the location, object) for every object under it, key order."""
    where = s3.parse_uri(location)
    cut = len(where.prefix) + 1 if where.prefix else 0
    for item in s3.list_objects(connection(), where, page_size=page_size):
        yield item.key[cut:], item


def _is_image(relative: str) -> bool:
    """``<batch>/images/<file>`` with an image suffix (direct children only, as the local listing)."""
    parts = relative.split("/")
    return len(parts) == 3 and parts[1] == IMAGES and PurePosixPath(parts[2]).suffix.lower() in IMAGE_SUFFIXES


def list_batches(location: str, *, page_size: int = PAGE_SIZE) -> list[str]:
    """The batches under an S3 production location (those with at least one ``images/`` object), sorted.

    The batch prefixes come from one delimited listing (:func:`tasks.adapters.s3.list_prefixes`), then each is
    probed for its first image with small pages: a cost per batch, not per image (listing 100 k keys flat is
    100 pages, ~60 s on moto).

    Raises:
        S3BucketMissing, S3AuthError, S3Unreachable: as named (the endpoint and the URI in the message).
    """
    where = s3.parse_uri(location)
    cut = len(where.prefix) + 1 if where.prefix else 0
    found = []
    for prefix in s3.list_prefixes(connection(), where, page_size=page_size):
        batch = prefix[cut:]
        images = s3.S3Uri(where.bucket, where.key(f"{batch}/{IMAGES}"))
        probe = _objects(str(images), page_size=min(page_size, PROBE_PAGE_SIZE))
        if any(_is_image(f"{batch}/{IMAGES}/{rel}") for rel, _ in probe):  # stops at the first image
            found.append(batch)
    return sorted(found)


def list_batch_images(location: str, batch: str, *, page_size: int = PAGE_SIZE) -> list[str]:
    """A batch's images as ``s3://bucket/key`` URIs, sorted by file name (an empty list for a missing batch)."""
    where = s3.parse_uri(location)
    batch_uri = s3.S3Uri(where.bucket, where.key(batch))
    found = [
        image_uri(where.bucket, item.key)
        for rel, item in _objects(str(batch_uri), page_size=page_size)
        if _is_image(f"{batch}/{rel}")
    ]
    return sorted(found, key=lambda uri: PurePosixPath(uri).name)


def find_images(location: str, stems: Iterable[str], *, page_size: int = PAGE_SIZE) -> list[str]:
    """The ``s3://`` URIs of every batch image under ``location`` whose id (file stem) is one of ``stems``."""
    wanted = set(stems)
    where = s3.parse_uri(location)
    return [
        image_uri(where.bucket, item.key)
        for rel, item in _objects(location, page_size=page_size)
        if _is_image(rel) and PurePosixPath(rel).stem in wanted
    ]


def delete_batch(location: str, batch: str, *, page_size: int = PAGE_SIZE) -> int:
    """Delete every object of one batch under an S3 production location (retention); how many there were."""
    where = s3.parse_uri(location)
    conn = connection()
    objects = list(s3.list_objects(conn, s3.S3Uri(where.bucket, where.key(batch)), page_size=page_size))
    for item in objects:
        s3.delete_object(conn, where.bucket, item.key)
    return len(objects)


def sources_uri(location: str, batch: str) -> str:
    """``s3://bucket/prefix/<batch>/sources.csv``."""
    where = s3.parse_uri(location)
    return image_uri(where.bucket, where.key(f"{batch}/{SOURCES_FILE}"))


def read_batch_sources(location: str, batch: str) -> dict[str, str]:
    """A batch's ``sources.csv`` on S3 (image id -> source); ``{}`` when the batch has none.

    Raises:
        SourcesError: malformed (names the ``s3://`` URI and the line), or not UTF-8.
        S3Error: the store refused (auth, bucket, endpoint).
    """
    from tasks.contracts.batch_sources import SourcesError

    uri = sources_uri(location, batch)
    bucket, key = split_uri(uri)
    try:
        data = s3.read_bytes(connection(), bucket, key)
    except s3.S3ObjectMissing:
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourcesError(f"{uri}: cannot read the batch's sources ({err})") from None
    return parse_sources(text, where=uri)


# ------------------------------------------------------------------ uploading a batch


@dataclass(frozen=True)
class UploadedBatch:
    """One local batch folder put under an S3 production location.

    Attributes:
        batch: the batch name (the folder's).
        uri: ``s3://bucket/prefix/<batch>``.
        uploaded: files written this time (relative names).
        skipped: files already there with the same size and content.
        bytes_uploaded: bytes written this time.
    """

    batch: str
    uri: str
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_uploaded: int


def _etag_of(path: Path, *, size: int) -> str:
    """The ETag S3 gives ``path`` uploaded by :func:`tasks.adapters.s3.upload_file`: MD5, or MD5 of part MD5s."""
    digests = []
    with path.open("rb") as handle:
        if size < s3.MULTIPART_THRESHOLD:
            whole = hashlib.md5(usedforsecurity=False)
            for block in iter(lambda: handle.read(_MD5_CHUNK), b""):
                whole.update(block)
            return whole.hexdigest()
        for part in iter(lambda: handle.read(s3.MULTIPART_CHUNK), b""):
            digests.append(hashlib.md5(part, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def upload_batch(folder: Path, location: str, *, page_size: int = PAGE_SIZE) -> UploadedBatch:
    """Put a local batch folder (``images/*``, ``sources.csv``, anything else in it) under ``location/<name>/``.

    Files already there with the same size and ETag (the MD5 S3 gives a single PUT, or the multipart ETag of our
    own part size) are skipped, so a re-run costs one listing. Each object is one PUT or one completed multipart
    upload: a reader sees it whole or not at all.

    Raises:
        ImageStoreError: ``folder`` is not a folder.
        S3Error: the store refused (auth, bucket, endpoint).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageStoreError(f"{folder}: batch folder not found")
    where = s3.parse_uri(location)
    batch_uri = s3.S3Uri(where.bucket, where.key(folder.name))
    conn = connection()
    there = {rel: item for rel, item in _objects(str(batch_uri), page_size=page_size)}
    uploaded: list[str] = []
    skipped: list[str] = []
    written = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        old = there.get(rel)
        if old is not None and old.size == size and old.etag == _etag_of(path, size=size):
            skipped.append(rel)
            continue
        s3.upload_file(conn, path, where.bucket, batch_uri.key(rel))
        uploaded.append(rel)
        written += size
    log.info("%s: %d file(s) uploaded (%d bytes), %d already there", batch_uri, len(uploaded), written, len(skipped))
    return UploadedBatch(folder.name, str(batch_uri), tuple(uploaded), tuple(skipped), written)


def check_location(location: str) -> str:
    """One listing page of an S3 production location: a line saying what is there (for ``doctor``).

    Raises:
        S3Error: unreachable, bucket missing, credentials refused (naming the endpoint, never a secret).
    """
    conn = connection()
    where = s3.parse_uri(location)
    first = next(iter(s3.list_objects(conn, where, page_size=1)), None)
    state = "empty" if first is None else f"first object {first.key}"
    return f"{where} at {conn.endpoint}: reachable ({state})"
