"""Label Studio reading sampled images straight from S3: an S3 import (source) storage with presigned URLs.

When a sampled image's ``image_uri`` is ``s3://bucket/key`` (``base.storage.production`` on S3), the label stage
imports a task whose image field *is* that URI, and the project gets one S3 import storage per bucket (never
synced: the label stage imports the tasks). Label Studio resolves the URI itself: the task's image becomes
``/tasks/<id>/resolve/?fileuri=…``, which answers 303 to a presigned GET URL (``presign_ttl`` minutes), so the
browser fetches the bytes from S3 and Label Studio never copies them. Where browsers cannot reach the endpoint
(an S3 inside a compose network), ``VISIONLOOP_LABEL_S3_PRESIGN=false`` makes Label Studio stream the bytes itself
through the same URL instead (its proxy mode).

Where from: the endpoint, region and credentials come from the environment only, as for :mod:`tasks.adapters.s3`
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, botocore's credential
chain). Label Studio needs the keys itself to presign: they go to the Label Studio server in the storage create
request and nowhere else (not into params, logs, reports or MLflow; Label Studio never returns them:
``S3StorageSerializerMixin.secure_fields``). ``VISIONLOOP_LABEL_S3_ENDPOINT`` overrides the endpoint given to Label
Studio when it reaches S3 under another name than we do (compose: ``http://minio:9000``); the value ``server`` gives
none, so the Label Studio server's own ``S3_ENDPOINT`` environment applies.

SSRF: Label Studio 1.23 refuses (HTTP 403) a storage whose endpoint resolves to a local or private address while
``SSRF_PROTECTION_ENABLED`` is on, its default (``label_studio/core/settings/base.py``; checked in
``io_storages/s3/serializers.py`` ``validate_s3_endpoint`` and on every connection in ``io_storages/s3/utils.py``).
``make labelstudio-up`` binds 127.0.0.1 only and turns it off so that Label Studio can reach moto on 127.0.0.1; a
real deployment keeps it on (AWS itself needs no endpoint; an internal S3 such as MinIO is trusted when it is the
server's own ``S3_ENDPOINT`` and ``VISIONLOOP_LABEL_S3_ENDPOINT=server`` here).
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
from collections.abc import Callable, Iterable
from typing import Any

from tasks.adapters import s3
from tasks.config import VisionloopError

log = logging.getLogger(__name__)

ENDPOINT_OVERRIDE_ENV = "VISIONLOOP_LABEL_S3_ENDPOINT"
SERVER_ENDPOINT = "server"  # the override's value that sends no endpoint (the server's S3_ENDPOINT applies)
SSRF_SETTING = "SSRF_PROTECTION_ENABLED"
PRESIGN_ENV = "VISIONLOOP_LABEL_S3_PRESIGN"
PRESIGN_TTL_MIN = 15  # presigned URLs live this long (Label Studio's default is 1 minute: too short to annotate)
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")


HIDDEN_S3_ERROR = "Debugging info is not available for s3 endpoints"  # io_storages/s3/utils.py
# SsrfBlockedUrlError's answers (core/utils/io.py validate_ip, core/utils/exceptions.py)
SSRF_ANSWERS = ("reserved network address", "local or private network addresses")


class LabelStudioStorageError(VisionloopError, RuntimeError):
    """Label Studio refused the S3 storage: wrong keys, no bucket, or its SSRF protection (names the endpoint)."""


def storage_endpoint() -> str | None:
    """The endpoint Label Studio is given: ``VISIONLOOP_LABEL_S3_ENDPOINT``, else ours (None: AWS or the server's)."""
    override = os.environ.get(ENDPOINT_OVERRIDE_ENV, "").strip()
    if override:
        return None if override == SERVER_ENDPOINT else override
    return s3.endpoint_from_env()


def presign() -> bool:
    """Whether browsers get presigned URLs (default) or Label Studio streams the bytes (``..._PRESIGN=false``).

    Raises:
        LabelStudioStorageError: a value that is not true/false.
    """
    value = os.environ.get(PRESIGN_ENV, "true").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise LabelStudioStorageError(f"{PRESIGN_ENV}={value!r}: expected true or false")
    return value in ("true", "1")


def _credentials() -> dict[str, str]:
    """The access key, secret and session token from botocore's chain (empty: Label Studio uses its own role)."""
    import boto3

    found = boto3.session.Session().get_credentials()
    frozen = found.get_frozen_credentials() if found is not None else None
    if frozen is None:
        return {}
    keys = {
        "aws_access_key_id": frozen.access_key,
        "aws_secret_access_key": frozen.secret_key,
        "aws_session_token": frozen.token,
    }
    return {name: value for name, value in keys.items() if value}


def buckets_of(urls: Iterable[str]) -> dict[str, str]:
    """``{bucket: prefix}`` of the ``s3://`` URLs among ``urls``: the longest folder all of a bucket's keys share."""
    folders: dict[str, list[str]] = {}
    for url in urls:
        if url.startswith("s3://"):
            where = s3.parse_uri(url)
            folders.setdefault(where.bucket, []).append(posixpath.dirname(where.prefix))
    return {bucket: posixpath.commonpath(found).strip("/") for bucket, found in sorted(folders.items())}


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def ensure_s3_storages(client: Any, *, project_id: int, urls: Iterable[str], call: Callable[..., Any]) -> list[int]:
    """Give the project one S3 import storage (presigned URLs) per bucket of the ``s3://`` task URLs in ``urls``.

    Idempotent: a bucket that already has a storage in the project is left as it is (Label Studio resolves a URL by
    its bucket); a create that reached the server before the connection dropped is found, not repeated.

    Args:
        client: the SDK client (:func:`tasks.adapters.labelstudio.connect`).
        project_id: the project.
        urls: the task image URLs (local files URLs are ignored).
        call: ``(request, what, landed=None) -> answer``, the backend's retrying caller
            (:func:`tasks.adapters.labelstudio.call_with_retries` bound to its settings).

    Returns:
        The ids of the storages created now.

    Raises:
        LabelStudioStorageError: Label Studio refused a storage (the message names the endpoint and bucket, the fix,
            and never a secret).
    """
    wanted = buckets_of(urls)
    if not wanted:
        return []

    def existing() -> dict[str, Any]:
        found = call(lambda: list(client.import_storage.s3.list(project=project_id)), "list S3 storages")
        return {str(s.bucket): s for s in found if s.bucket}

    def landed(bucket: str) -> Any | None:
        return existing().get(bucket)

    have = existing()
    endpoint = storage_endpoint()
    region = next((os.environ[name] for name in REGION_ENVS if os.environ.get(name)), None)
    created = []
    for bucket, prefix in wanted.items():
        if bucket in have:
            continue
        where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        fields: dict[str, Any] = {
            "project": project_id,
            "bucket": bucket,
            "prefix": prefix or None,
            "presign": presign(),
            "presign_ttl": PRESIGN_TTL_MIN,
            "use_blob_urls": True,
            "recursive_scan": True,
            "region_name": region,
            "s3endpoint": endpoint,
            "title": f"visionloop {where}"[:255],
            "description": "visionloop: sampled production images (tasks are imported by the label stage)",
        }
        fields = {name: value for name, value in fields.items() if value is not None}
        storage = call(
            functools.partial(_create, client, {**fields, **_credentials()}, where, endpoint),
            f"register S3 storage {where} (endpoint {endpoint or 'AWS'})",
            landed=functools.partial(landed, bucket),  # a create is not idempotent: look before sending it again
        )
        created.append(int(storage.id))
        log.info(
            "Label Studio project %s: registered S3 import storage %s (endpoint %s, %s)",
            project_id,
            where,
            endpoint or "AWS",
            f"presigned URLs for {PRESIGN_TTL_MIN} min" if fields["presign"] else "bytes streamed by Label Studio",
        )
    return created


def _create(client: Any, fields: dict[str, Any], where: str, endpoint: str | None) -> Any:
    """One storage create; Label Studio's refusals become :class:`LabelStudioStorageError` (no retry helps them)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        return client.import_storage.s3.create(**fields)
    except ApiError as exc:
        body = _scrub(str(exc.body)[:500], [str(v) for k, v in fields.items() if k.startswith("aws_")])
        hidden = HIDDEN_S3_ERROR in body  # a 500 no retry helps: Label Studio's S3 call failed
        if exc.status_code not in (400, 403) and not hidden:
            raise  # 5xx/429: call_with_retries retries; 401: the token
        at = f"endpoint {endpoint}" if endpoint else "AWS (no endpoint)"
        if hidden:
            fix = (
                "Label Studio hides the S3 error of an endpoint outside its S3_TRUSTED_STORAGE_DOMAINS; "
                f"the same request from here: {_diagnose(where, endpoint)}"
            )
        elif any(text in body for text in SSRF_ANSWERS):
            fix = (
                f"Label Studio's SSRF protection refuses a local or private endpoint ({SSRF_SETTING} is on). For the "
                f"local stack on 127.0.0.1 start it with {SSRF_SETTING}=false (`make labelstudio-up` does); in a "
                f"deployment keep it on and give the server S3_ENDPOINT={endpoint} with "
                f"{ENDPOINT_OVERRIDE_ENV}={SERVER_ENDPOINT} here"
            )
        else:
            fix = (
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (sent to Label Studio for presigning), the bucket "
                f"and the endpoint as Label Studio reaches it ({ENDPOINT_OVERRIDE_ENV} when it differs from ours)"
            )
        raise LabelStudioStorageError(
            f"Label Studio refused the S3 import storage {where} at {at} (HTTP {exc.status_code}: {body}); {fix}"
        ) from None


def _diagnose(where: str, endpoint: str | None) -> str:
    """What our own S3 client says about listing ``where`` (Label Studio's answer hides it), never a secret."""
    if endpoint != s3.endpoint_from_env():
        return f"not tried (Label Studio reaches S3 at {endpoint or 'AWS'}, this process at another endpoint)"
    try:
        next(iter(s3.list_objects(s3.connect(max_attempts=2), where)), None)
    except s3.S3Error as exc:
        return str(exc)
    return "listing works from here, so Label Studio's own view of the endpoint differs (network, DNS)"
