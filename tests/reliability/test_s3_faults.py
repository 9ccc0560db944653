"""S3 faults against a real moto_server (and the fault proxy in front of it for 5xx): each a clear, typed error.

Wrong or missing credentials (moto with IAM authentication switched on), a missing bucket, an object deleted between
listing and reading (that one reported, the others go on), 5xx then success (retried and counted), an endpoint that
keeps failing or is not there. A canary secret sits in ``AWS_SECRET_ACCESS_KEY`` throughout: it never appears in an
error message or a log record (botocore's DEBUG logs included).
"""

from __future__ import annotations

import json
import logging

import boto3
import pytest

from tasks.adapters import s3
from tests.integration.conftest import free_port
from tests.reliability.faultproxy import FaultProxy
from tests.s3_server import S3Server, s3_server, unique_bucket

CANARY = "canary-Secret-7d1e0c5a"
IAM_ACTIONS = 3  # create_user, create_access_key, put_user_policy: then moto authenticates every request


@pytest.fixture(scope="module")
def server(moto_s3) -> S3Server:
    return moto_s3


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> tuple[S3Server, dict[str, str]]:
    """A moto_server that checks signatures, and the one access key (allowed s3:*) its IAM knows."""
    with s3_server(tmp_path_factory.mktemp("moto-auth"), free_actions=IAM_ACTIONS) as running:
        iam = boto3.client("iam", endpoint_url=running.endpoint_url, region_name="us-east-1", **_KEYS)
        iam.create_user(UserName="visionloop")
        key = iam.create_access_key(UserName="visionloop")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="visionloop", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield running, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


_KEYS = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}


@pytest.fixture(autouse=True)
def no_canary_in_logs(caplog):
    """Every test runs with botocore's DEBUG logs captured; none may hold the canary."""
    caplog.set_level(logging.DEBUG)
    yield
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    leaked = [r.name for r in records if CANARY in r.getMessage()]
    assert not leaked, f"the secret reached log records of {leaked}"


@pytest.fixture
def conn(server, monkeypatch) -> s3.S3Connection:
    server.apply(monkeypatch)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)  # moto without authentication accepts any secret
    return s3.connect()


@pytest.fixture
def bucket(conn) -> str:
    name = unique_bucket()
    s3.ensure_bucket(conn, name)
    return name


def assert_clean(error: s3.S3Error, endpoint: str, *names: str) -> None:
    text = str(error)
    assert endpoint in text and all(name in text for name in names), text
    assert CANARY not in text and CANARY not in repr(error)


OPERATIONS = {
    "list": lambda c, b: list(s3.list_objects(c, f"s3://{b}/batch")),
    "read": lambda c, b: s3.sha256_object(c, b, "batch/a.jpg"),
    "put": lambda c, b: s3.put_bytes(c, b, "batch/new.jpg", b"x"),
    "publish": lambda c, b: s3.publish(c, f"s3://{b}/logs", {"part.parquet": b"rows"}),
}


# ------------------------------------------------------------------ credentials


@pytest.mark.parametrize("operation", list(OPERATIONS), ids=list(OPERATIONS))
@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000000000", "AWS_SECRET_ACCESS_KEY": CANARY}, "InvalidAccessKeyId"),
        ({"AWS_SECRET_ACCESS_KEY": CANARY}, "SignatureDoesNotMatch"),  # the right key id, a wrong secret
        ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no usable credentials"),
    ],
    ids=["unknown-key", "wrong-secret", "no-credentials"],
)
def test_wrong_credentials_fail_naming_the_endpoint_not_the_secret(
    auth_server, monkeypatch, credentials, code, operation
):
    server, good = auth_server
    server.apply(monkeypatch)
    for name, value in good.items():
        monkeypatch.setenv(name, value)
    name = unique_bucket()
    s3.ensure_bucket(s3.connect(), name)  # the right key works: the failures below are the credentials'
    s3.put_bytes(s3.connect(), name, "batch/a.jpg", b"image")
    for env, value in credentials.items():
        if value is None:
            monkeypatch.delenv(env)
        else:
            monkeypatch.setenv(env, value)
    with pytest.raises(s3.S3AuthError) as caught:
        OPERATIONS[operation](s3.connect(max_attempts=1), name)
    assert_clean(caught.value, server.endpoint_url, code, f"s3://{name}/", "AWS_ACCESS_KEY_ID")


# ------------------------------------------------------------------ bucket and objects


@pytest.mark.parametrize("operation", [*OPERATIONS, "upload"], ids=[*OPERATIONS, "upload"])
def test_a_missing_bucket_is_named(conn, server, tmp_path, operation):
    name = unique_bucket("missing")
    source = tmp_path / "e.bin"
    source.write_bytes(b"engine")
    call = OPERATIONS.get(operation) or (lambda c, b: s3.upload_file(c, source, b, "engines/e.bin"))
    with pytest.raises(s3.S3BucketMissing) as caught:
        call(conn, name)
    assert_clean(caught.value, server.endpoint_url, f"s3://{name}/", "NoSuchBucket", "create the bucket")


def test_an_object_deleted_between_listing_and_reading_is_reported_and_the_batch_goes_on(conn, bucket, server):
    for i in range(5):
        s3.put_bytes(conn, bucket, f"batch/img-{i}.jpg", f"image {i}".encode())
    listed = list(s3.list_objects(conn, f"s3://{bucket}/batch"))
    for gone in ("batch/img-1.jpg", "batch/img-3.jpg"):  # another process cleans up meanwhile
        s3.delete_object(conn, bucket, gone)

    hashed, missing = {}, {}
    for item in listed:  # what a stage does: report the image, go on with the batch
        try:
            hashed[item.key] = s3.sha256_object(conn, bucket, item.key).sha256
        except s3.S3ObjectMissing as exc:
            missing[item.key] = exc
    assert sorted(missing) == ["batch/img-1.jpg", "batch/img-3.jpg"]
    assert sorted(hashed) == ["batch/img-0.jpg", "batch/img-2.jpg", "batch/img-4.jpg"]
    assert_clean(missing["batch/img-1.jpg"], server.endpoint_url, f"s3://{bucket}/batch/img-1.jpg", "NoSuchKey")


# ------------------------------------------------------------------ 5xx, resets, and an endpoint that is not there


@pytest.mark.parametrize(
    ("pattern", "actions", "retries", "mode"),
    [
        (r"^GET /{bucket}/batch/a\.jpg", ("503", "forward"), 1, "standard"),
        (r"^GET /{bucket}/batch/a\.jpg", ("503", "503", "forward"), 2, "standard"),
        (r"^GET /{bucket}/batch/a\.jpg", ("503", "503", "forward"), 2, "adaptive"),
        (r"^GET /{bucket}/batch/a\.jpg", ("reset", "forward"), 1, "standard"),
        (r"^PUT /{bucket}/batch/a\.jpg", ("503", "forward"), 1, "standard"),
        (r"^GET /{bucket}\?list-type=2", ("503", "forward"), 1, "standard"),
        (r"^GET /{bucket}/batch/a\.jpg", ("forward",), 0, "standard"),
    ],
    ids=["get-503-once", "get-503-twice", "get-503-adaptive", "get-reset", "put-503", "list-503", "no-fault"],
)
def test_5xx_then_success_is_retried_and_counted(conn, bucket, monkeypatch, pattern, actions, retries, mode):
    s3.put_bytes(conn, bucket, "batch/a.jpg", b"image")
    with FaultProxy(conn.endpoint) as proxy:
        rule = proxy.script(pattern.format(bucket=bucket), *actions)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        through = s3.connect(max_attempts=4, retry_mode=mode)
        s3.put_bytes(through, bucket, "batch/a.jpg", b"image")
        assert s3.sha256_object(through, bucket, "batch/a.jpg").size == 5
        assert [o.key for o in s3.list_objects(through, f"s3://{bucket}/batch")] == ["batch/a.jpg"]
    assert through.stats.retries == retries and rule.taken == list(actions)
    assert sum(through.stats.by_operation.values()) == retries


def test_an_endpoint_that_keeps_failing_gives_up_after_max_attempts(conn, bucket, server, monkeypatch):
    with FaultProxy(conn.endpoint) as proxy:
        proxy.script(r"^GET ", "503")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        through = s3.connect(max_attempts=3)
        with pytest.raises(s3.S3Unreachable) as caught:
            s3.sha256_object(through, bucket, "batch/a.jpg")
        assert proxy.count("^GET ") == 3 and through.stats.retries == 2
    assert_clean(caught.value, proxy.url, "503", "after 3 attempt(s)", f"s3://{bucket}/batch/a.jpg")


def test_an_unreachable_endpoint_is_named(server, monkeypatch):
    server.apply(monkeypatch)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    nobody = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", nobody)
    with pytest.raises(s3.S3Unreachable) as caught:
        list(s3.list_objects(s3.connect(max_attempts=2, connect_timeout_s=1), "s3://frames/batch"))
    assert_clean(caught.value, nobody, "s3://frames/batch/", "AWS_ENDPOINT_URL_S3")


def test_the_connection_and_its_repr_hold_no_secret(conn):
    assert CANARY not in repr(conn) and CANARY not in str(conn)


def test_no_attempt_at_all_is_refused():
    with pytest.raises(s3.S3Error, match="max_attempts must be >= 1, got 0"):
        s3.connect(max_attempts=0)
