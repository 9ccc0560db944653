"""The S3 adapter (tasks/adapters/s3.py) against a real moto_server on 127.0.0.1: no boto3 mock anywhere.

Listing past S3's 1000-key page, streaming SHA-256, atomic downloads, the publish protocol (unique parts, then one
manifest: a reader never sees a part without it) and multipart uploads that round-trip byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.adapters import s3
from tests.s3_server import S3Server, unique_bucket

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(moto_s3) -> S3Server:
    return moto_s3


@pytest.fixture
def conn(server, monkeypatch) -> s3.S3Connection:
    server.apply(monkeypatch)
    return s3.connect()


@pytest.fixture
def bucket(conn) -> str:
    name = unique_bucket()
    s3.ensure_bucket(conn, name)
    return name


# ------------------------------------------------------------------ addresses (no server needed)


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://frames", "frames", ""),
        ("s3://frames/", "frames", ""),
        ("s3://frames/prod/batch-7/", "frames", "prod/batch-7"),
        ("s3://my.bucket-1/a", "my.bucket-1", "a"),
    ],
    ids=["bucket-only", "trailing-slash", "nested-prefix", "dots-and-dashes"],
)
def test_uris_parse_into_bucket_and_prefix(uri, bucket, prefix):
    parsed = s3.parse_uri(uri)
    assert (parsed.bucket, parsed.prefix) == (bucket, prefix)
    assert s3.parse_uri(str(parsed)) == parsed


@pytest.mark.parametrize(
    "uri",
    ["", "frames/prod", "gs://frames/prod", "s3://", "s3://ab/x", "s3://Frames/x", "s3://a..b/x", "s3:/frames"],
    ids=["empty", "no-scheme", "other-scheme", "no-bucket", "too-short", "upper-case", "double-dot", "one-slash"],
)
def test_bad_uris_are_refused_naming_the_uri(uri):
    with pytest.raises(s3.S3Error, match=r"s3://bucket/prefix|not a valid bucket name"):
        s3.parse_uri(uri)


def test_the_endpoint_comes_from_the_environment_service_specific_first(server, monkeypatch):
    server.apply(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert s3.connect().endpoint == server.endpoint_url, "AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert s3.connect().endpoint == "http://127.0.0.1:9"
    assert s3.endpoint_from_env({}) is None


# ------------------------------------------------------------------ listing


@pytest.mark.slow  # ~12 s of PUTs (CI: make test-slow-stack)
def test_listing_pages_past_1000_keys(conn, bucket):
    keys = [f"batch/img-{i:05d}.jpg" for i in range(1100)]
    with ThreadPoolExecutor(max_workers=8) as pool:  # boto3 clients are thread-safe
        list(pool.map(lambda k: s3.put_bytes(conn, bucket, k, k.encode()), keys))
    s3.put_bytes(conn, bucket, "batch-other/x.jpg", b"x")  # a sibling prefix is not listed
    before = conn.stats.calls
    listed = list(s3.list_objects(conn, f"s3://{bucket}/batch"))
    assert [o.key for o in listed] == keys
    assert conn.stats.calls - before == 2, "two pages: 1000 + 100 keys"
    assert all(o.size == len(o.key) and len(o.etag) == 32 for o in listed)
    assert len(list(s3.list_objects(conn, f"s3://{bucket}/batch", page_size=300))) == 1100


def test_an_empty_prefix_lists_nothing(conn, bucket):
    assert list(s3.list_objects(conn, f"s3://{bucket}/nothing-here")) == []


# ------------------------------------------------------------------ streaming reads


@pytest.mark.parametrize("size", [0, 1000, 3 * MiB + 17], ids=["empty", "one-chunk", "many-chunks"])
def test_the_streamed_sha256_is_the_hash_of_the_bytes(conn, bucket, size):
    data = os.urandom(size)
    s3.put_bytes(conn, bucket, "obj.bin", data)
    chunks = list(s3.iter_chunks(conn, bucket, "obj.bin", chunk_size=256 * 1024))
    assert all(len(c) <= 256 * 1024 for c in chunks) and b"".join(chunks) == data
    fetched = s3.sha256_object(conn, bucket, "obj.bin", chunk_size=256 * 1024)
    assert fetched == s3.Fetched(sha256=hashlib.sha256(data).hexdigest(), size=size)


def test_a_download_is_atomic_and_hashed(conn, bucket, tmp_path):
    data = os.urandom(2 * MiB)
    s3.put_bytes(conn, bucket, "engine.onnx", data)
    target = tmp_path / "models" / "engine.onnx"
    fetched = s3.download_file(conn, bucket, "engine.onnx", target)
    assert target.read_bytes() == data and fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.path == target and fetched.size == len(data)

    with pytest.raises(s3.S3ObjectMissing):
        s3.download_file(conn, bucket, "gone.onnx", target)
    assert target.read_bytes() == data, "a failed download leaves the old file"
    assert [p.name for p in target.parent.iterdir()] == ["engine.onnx"], "and no temp file"


# ------------------------------------------------------------------ publish: parts, then the manifest


def test_a_reader_never_sees_a_part_before_its_manifest(conn, bucket):
    uri = f"s3://{bucket}/logs"
    reader = s3.connect()
    seen: list[set[str]] = []

    def look(**_: object) -> None:  # after every PUT of the writer, what does a reader see?
        seen.append({p.key for p in s3.published_parts(reader, uri)})

    conn.client.meta.events.register("after-call.s3.PutObject", look)
    parts = {f"date=2026-12-01/part-{i}.parquet": os.urandom(100 + i) for i in range(3)}
    done = s3.publish(conn, uri, parts, publish_id="run1")
    everything = {p.key for p in done.parts}
    assert len(seen) == 4 and seen[:3] == [set(), set(), set()], "parts alone are invisible"
    assert seen[3] == everything, "the manifest PUT makes all of them visible at once"
    assert everything == {f"logs/date=2026-12-01/part-{i}-run1.parquet" for i in range(3)}
    for part in done.parts:
        assert s3.sha256_object(conn, bucket, part.key).sha256 == part.sha256


def test_a_killed_writers_parts_stay_unpublished(conn, bucket):
    uri = f"s3://{bucket}/logs"
    first = s3.publish(conn, uri, {"date=2026-12-01/part.parquet": b"rows"})
    s3.put_bytes(conn, bucket, "logs/date=2026-12-01/part-deadbeef.parquet", b"half a batch")  # died before manifest
    assert [p.key for p in s3.published_parts(conn, uri)] == [first.parts[0].key]
    assert [o.key for o in s3.unpublished_parts(conn, uri)] == ["logs/date=2026-12-01/part-deadbeef.parquet"]


def test_publishing_again_with_the_same_id_is_idempotent_and_other_ids_add(conn, bucket):
    uri = f"s3://{bucket}/logs"
    parts = {"a.parquet": b"1", "sub/b.parquet": b"2"}
    once = s3.publish(conn, uri, parts, publish_id="batch-7")
    again = s3.publish(conn, uri, parts, publish_id="batch-7")
    assert once == again and len(s3.published(conn, uri)) == 1
    s3.publish(conn, uri, {"a.parquet": b"3"}, publish_id="batch-8")
    assert len(s3.published_parts(conn, uri)) == 3 and s3.unpublished_parts(conn, uri) == []


@pytest.mark.parametrize(
    ("publish_id", "name"),
    [("../x", "a.parquet"), ("a" * 129, "a.parquet"), ("ok", "_manifests/x.json")],
    ids=["id-with-slash", "id-too-long", "part-in-manifest-folder"],
)
def test_bad_publish_ids_and_names_are_refused(conn, bucket, publish_id, name):
    with pytest.raises(s3.S3Error):
        s3.publish(conn, f"s3://{bucket}/logs", {name: b"x"}, publish_id=publish_id)
    assert list(s3.list_objects(conn, f"s3://{bucket}/logs")) == [], "nothing written"


def test_an_empty_prefix_has_nothing_published(conn, bucket):
    assert s3.published_parts(conn, f"s3://{bucket}/logs") == []


# ------------------------------------------------------------------ uploads


@pytest.mark.parametrize(
    ("size", "parts"), [(0, 0), (1 * MiB, 0), (12 * MiB + 5, 3)], ids=["empty", "one-put", "multipart"]
)
def test_an_upload_round_trips_byte_identical(conn, bucket, tmp_path, size, parts):
    data = os.urandom(size)
    source = tmp_path / "engine.bin"
    source.write_bytes(data)
    uploaded = s3.upload_file(
        conn, source, bucket, "engines/e.bin", multipart_threshold=5 * MiB, multipart_chunk=5 * MiB
    )
    assert (uploaded.size, uploaded.parts) == (size, parts)
    back = s3.download_file(conn, bucket, "engines/e.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data and back.sha256 == hashlib.sha256(data).hexdigest()


def test_a_large_part_is_published_by_multipart_upload(conn, bucket, tmp_path):
    source = tmp_path / "engine.onnx"
    source.write_bytes(os.urandom(6 * MiB))
    done = s3.publish(conn, f"s3://{bucket}/engines", {"engine.onnx": source}, multipart_threshold=5 * MiB)
    (part,) = s3.published_parts(conn, f"s3://{bucket}/engines")
    assert part == done.parts[0] and part.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    etags = {o.key: o.etag for o in s3.list_objects(conn, f"s3://{bucket}/engines")}
    assert "-" in etags[part.key], "a multipart ETag (<md5 of part md5s>-<parts>)"
