"""The prediction log on S3 (tasks/adapters/log_store.py) against a real moto_server on 127.0.0.1: no mock anywhere.

The S3 log is the same partitioned Parquet dataset as the local one: what is appended reads back the same through the
mirror (``prediction_log.read``) and straight from S3 (PyArrow's S3 filesystem); a re-append replaces its part and
its old object is collected; a killed writer's parts (no manifest) and a multipart upload never completed are never
read; the mirror follows S3 (collected parts leave it, a corrupted file is fetched again); ingest and predict's
"already logged" check work on it; forget takes an image's rows out of S3 too. A canary secret sits in
``AWS_SECRET_ACCESS_KEY`` throughout: never in a mirror file, a log record or an error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import forget, ingest, predict
from tasks.adapters import log_store, s3
from tasks.config import Params
from tasks.contracts import prediction_log as plog
from tasks.contracts.model_version import ModelVersionInfo
from tests.conftest import tiny_params_dict
from tests.reliability.faultproxy import FaultProxy
from tests.s3_server import S3Server, unique_bucket

pytestmark = pytest.mark.integration

CANARY = "canary-Secret-51f0e2b9"
DAY1, DAY2 = dt.date(2026, 12, 1), dt.date(2026, 12, 2)
TS = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def server(moto_s3) -> S3Server:
    return moto_s3


@pytest.fixture
def conn(server, monkeypatch) -> s3.S3Connection:
    server.apply(monkeypatch)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)  # moto without authentication accepts any secret
    return s3.connect()


@pytest.fixture
def location(conn) -> str:
    bucket = unique_bucket()
    s3.ensure_bucket(conn, bucket)
    return f"s3://{bucket}/log"


def make_params(root: Path, location: str | None) -> Params:
    data = tiny_params_dict(root)
    data["base"]["storage"] = {"predictions": location}
    return Params.model_validate(data)


@pytest.fixture
def params(tmp_path, location) -> Params:
    return make_params(tmp_path / "host-a", location)


@pytest.fixture(autouse=True)
def no_canary_anywhere(caplog, tmp_path):
    """Every test runs with DEBUG logs captured; no record and no file it leaves (mirrors included) holds the canary."""
    caplog.set_level(logging.DEBUG)
    yield
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    assert not [r.name for r in records if CANARY in r.getMessage()], "the secret reached a log record"
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert not leaked, f"the secret reached {leaked}"


def sha(n: int) -> str:
    return hashlib.sha256(f"image-{n}".encode()).hexdigest()


def table(images: range, *, date: dt.date = DAY1, batch: str = "b1", version: str = "3", shadow: bool = False):
    """Rows of ``images`` (image n has n % 3 boxes) logged by ``visionloop-detector`` v``version``."""
    records = [
        plog.ImageDetections(
            image_id=f"img-{n:04d}",
            image_uri=f"file:///prod/{batch}/images/img-{n:04d}.png",
            image_sha256=sha(n),
            width=64,
            height=48,
            latency_ms=3.0,
            boxes_xyxy=np.array([[1.0 + k, 2.0, 30.0, 40.0] for k in range(n % 3)]).reshape(-1, 4),
            confidence=np.full(n % 3, 0.75),
            class_id=np.zeros(n % 3, np.int64),
        )
        for n in images
    ]
    return plog.rows_to_table(
        records,
        batch=batch,
        date=date,
        model_name="visionloop-detector",
        model_version=version,
        model_alias="champion",
        class_names=["circle", "triangle", "square"],
        ts=TS,
        shadow=shadow,
    )


def rows(t: pa.Table) -> list[dict]:
    return sorted(t.to_pylist(), key=lambda r: (str(r["date"]), r["image_id"], r["x1"] or 0.0, r["shadow"]))


def data_objects(conn: s3.S3Connection, location: str) -> list[str]:
    uri = s3.parse_uri(location)
    return [o.key for o in s3.list_objects(conn, uri) if f"/{s3.MANIFESTS}/" not in o.key]


# ------------------------------------------------------------------ the same dataset


APPENDS = {
    "one-part": [("p1", table(range(5)))],
    "two-dates-one-part": [("p1", pa.concat_tables([table(range(4)), table(range(4, 7), date=DAY2)]))],
    "champion-and-shadow": [("p1", table(range(4))), ("p1__shadow", table(range(4), version="4", shadow=True))],
    "empty-table": [("p1", table(range(0)))],
}


@pytest.mark.parametrize("appends", APPENDS.values(), ids=APPENDS.keys())
def test_the_s3_log_reads_back_as_the_local_log_does(appends, params, tmp_path, conn, location):
    local = make_params(tmp_path / "local", None)
    for part, rows_ in appends:
        on_s3 = log_store.append(params, rows_, part=part)
        here = log_store.append(local, rows_, part=part)
        assert [p.relative_to(params.base.paths.predictions) for p in on_s3] == [
            p.relative_to(local.base.paths.predictions) for p in here
        ]
    expected = rows(plog.read(local.base.paths.predictions))
    assert rows(plog.read(log_store.log_root(params))) == expected
    assert rows(log_store.open_dataset(location).to_table()) == expected
    fresh = make_params(tmp_path / "host-b", location)  # another machine: an empty mirror fills from S3
    assert rows(plog.read(log_store.log_root(fresh))) == expected
    assert plog.logged_batches(log_store.log_root(fresh)) == plog.logged_batches(local.base.paths.predictions)


def test_a_local_log_is_exactly_todays_log(tmp_path):
    local = make_params(tmp_path, None)
    written = log_store.append(local, table(range(3)), part="p1")
    assert log_store.log_root(local) == local.base.paths.predictions
    assert written == [local.base.paths.predictions / "date=2026-12-01" / "p1.parquet"]
    assert not (local.base.paths.predictions / log_store.INDEX).exists()


def test_appending_a_part_again_replaces_it_and_collects_the_old_object(params, conn, location):
    log_store.append(params, table(range(5)), part="p1")
    log_store.append(params, table(range(10, 12)), part="p2")
    first = set(data_objects(conn, location))
    log_store.append(params, table(range(20, 23)), part="p1")  # a re-run of p1 with other rows
    ids = sorted(r["image_id"] for r in plog.read(log_store.log_root(params)).to_pylist())
    assert sorted(set(ids)) == [f"img-{n:04d}" for n in (10, 11, 20, 21, 22)]
    assert sorted(r["image_id"] for r in log_store.open_dataset(location).to_table().to_pylist()) == ids
    now = set(data_objects(conn, location))
    assert len(now) == 2 and len(now - first) == 1, "one new object for p1, the old one collected, p2 kept"
    assert len(s3.published(conn, location)) == 2, "p1's first manifest named nothing live any more: collected"
    assert s3.unpublished_parts(conn, location) == []


def test_a_withdrawal_lives_as_long_as_an_older_manifest_names_the_part(params, conn, location):
    two_dates = pa.concat_tables([table(range(3)), table(range(3, 5), date=DAY2)])
    log_store.append(params, two_dates, part="p1")  # one manifest naming date 1 and date 2
    root = log_store.log_root(params)
    (root / "date=2026-12-01" / "p1.parquet").unlink()  # retention drops date 1 only
    log_store.publish_local_changes(params)
    assert len(s3.published(conn, location)) == 2, "the withdrawal stays: the first manifest still names date 1"
    assert sorted(log_store.live_parts(location)) == ["date=2026-12-02/p1.parquet"]
    assert len(data_objects(conn, location)) == 1, "date 1's object is collected"
    log_store.append(params, table(range(3, 5), date=DAY2), part="p1")  # the last live part superseded
    (last,) = s3.published(conn, location)
    assert [part.name for part in last.parts] == ["date=2026-12-02/p1.parquet"] and not last.removed
    assert sorted({r["image_id"] for r in log_store.open_dataset(location).to_table().to_pylist()}) == [
        "img-0003",
        "img-0004",
    ]


def _pub(publish_id: str, *names: str, removed: tuple[str, ...] = ()) -> s3.Published:
    parts = tuple(s3.PublishedPart(key=f"log/{n}-{publish_id}", size=1, sha256="0" * 64, name=n) for n in names)
    return s3.Published(
        publish_id=publish_id, manifest=f"log/_manifests/{publish_id}.json", parts=parts, removed=removed
    )


RESOLVE = {
    "nothing": ([], {}),
    "latest-wins-whatever-the-listing-order": ([_pub("2", "a"), _pub("1", "a", "b")], {"a": "2", "b": "1"}),
    "withdrawn": ([_pub("1", "a", "b"), _pub("2", removed=("a",))], {"b": "1"}),
    "published-again-after-withdrawal": ([_pub("1", "a"), _pub("2", removed=("a",)), _pub("3", "a")], {"a": "3"}),
    "legacy-manifest-without-names": (
        [
            s3.Published(
                publish_id="1",
                manifest="log/_manifests/1.json",
                parts=(s3.PublishedPart(key="log/date=2026-12-01/p1-1.parquet", size=1, sha256="0" * 64),),
            )
        ],
        {"date=2026-12-01/p1.parquet": "1"},
    ),
}


@pytest.mark.parametrize(("publishes", "expected"), RESOLVE.values(), ids=RESOLVE.keys())
def test_resolve_reads_the_latest_publish_of_each_part(publishes, expected):
    live = log_store.resolve(publishes, s3.parse_uri("s3://bucket/log"))
    assert {name: part.key.rpartition("-")[2].removesuffix(".parquet") for name, part in live.items()} == expected


# ------------------------------------------------------------------ a killed writer


def _parts_without_manifest(conn: s3.S3Connection, location: str) -> None:
    uri = s3.parse_uri(location)
    sink = pa.BufferOutputStream()
    pq.write_table(table(range(100, 104)), sink)
    s3.put_bytes(
        conn,
        uri.bucket,
        uri.key("date=2026-12-01/killed-00000000000000000001-dead.parquet"),
        sink.getvalue().to_pybytes(),
    )


def _multipart_never_completed(conn: s3.S3Connection, location: str) -> None:
    uri = s3.parse_uri(location)
    key = uri.key("date=2026-12-01/killed-00000000000000000002-dead.parquet")
    upload = conn.client.create_multipart_upload(Bucket=uri.bucket, Key=key)
    conn.client.upload_part(Bucket=uri.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"P" * 1024)


KILLED = {
    "parts-uploaded-no-manifest": (_parts_without_manifest, 1, 0),
    "multipart-started-never-completed": (_multipart_never_completed, 0, 1),
}


@pytest.mark.parametrize(("kill", "unpublished", "incomplete"), KILLED.values(), ids=KILLED.keys())
def test_a_killed_writers_parts_are_never_read(kill, unpublished, incomplete, params, conn, location):
    log_store.append(params, table(range(3)), part="p1")
    kill(conn, location)
    expected = ["img-0000", "img-0001", "img-0002"]
    root = log_store.log_root(params)
    assert sorted({r["image_id"] for r in plog.read(root).to_pylist()}) == expected
    assert sorted(p.name for p in root.rglob("*.parquet")) == ["p1.parquet"]
    assert sorted({r["image_id"] for r in log_store.open_dataset(location).to_table().to_pylist()}) == expected
    assert len(s3.unpublished_parts(conn, location)) == unpublished
    assert len(s3.incomplete_uploads(conn, location)) == incomplete
    log_store.append(params, table(range(3)), part="p1")  # a writer's collection never touches them
    assert len(s3.unpublished_parts(conn, location)) == unpublished


@pytest.mark.slow  # ~10 s: botocore backs off before it gives the manifest up
def test_a_writer_cut_off_at_its_manifest_leaves_nothing_readers_see(params, server, conn, location, monkeypatch):
    (first,) = log_store.append(params, table(range(3)), part="p1")
    before = first.read_bytes()
    with FaultProxy(conn.endpoint) as proxy:
        proxy.script(r"^PUT .*/_manifests/", "reset")  # the parts go up, the manifest never does
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        with pytest.raises(s3.S3Error) as caught:
            log_store.append(params, table(range(60, 63)), part="p1")
    assert CANARY not in str(caught.value) and proxy.url in str(caught.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
    assert first.read_bytes() == before, "the mirror keeps the published part"
    assert sorted({r["image_id"] for r in log_store.open_dataset(location).to_table().to_pylist()}) == [
        "img-0000",
        "img-0001",
        "img-0002",
    ]
    assert log_store.sync(location, params.base.paths.predictions).fetched == ()
    assert [o.key.rpartition("/")[2][:3] for o in s3.unpublished_parts(conn, location)] == ["p1-"]
    root = params.base.paths.predictions
    assert not list(root.parent.glob(f".{root.name}.append-*")), "the staging folder is cleaned up"


# ------------------------------------------------------------------ the mirror follows S3


def _superseded_elsewhere(other: Params) -> None:
    log_store.append(other, table(range(30, 32)), part="p1")


def _withdrawn_elsewhere(other: Params) -> None:
    root = log_store.log_root(other)
    (root / "date=2026-12-01" / "p1.parquet").unlink()
    log_store.publish_local_changes(other)


ELSEWHERE = {
    "re-appended-by-another-host": (_superseded_elsewhere, ["img-0030", "img-0031", "img-0040"]),
    "withdrawn-by-another-host": (_withdrawn_elsewhere, ["img-0040"]),
}


@pytest.mark.parametrize(("change", "expected"), ELSEWHERE.values(), ids=ELSEWHERE.keys())
def test_the_mirror_drops_what_s3_collected(change, expected, params, tmp_path, conn, location):
    log_store.append(params, table(range(3)), part="p1")
    log_store.append(params, table(range(40, 41)), part="p2")
    old_keys = set(data_objects(conn, location))
    change(make_params(tmp_path / "host-b", location))
    assert not (old_keys & set(data_objects(conn, location))) - {k for k in old_keys if "/p2-" in k}
    root = log_store.log_root(params)
    assert sorted({r["image_id"] for r in plog.read(root).to_pylist()}) == expected
    assert sorted({r["image_id"] for r in log_store.open_dataset(location).to_table().to_pylist()}) == expected


def _garbage(path: Path) -> None:
    path.write_bytes(b"not parquet")


def _same_size_same_mtime(path: Path) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


CORRUPT = {
    "garbage": (_garbage, False),
    "deleted": (Path.unlink, False),
    "one-bit-same-size-and-mtime-verified": (_same_size_same_mtime, True),
}


@pytest.mark.parametrize(("corrupt", "verify"), CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupted_mirror_file_is_fetched_again(corrupt, verify, params, location):
    (written,) = log_store.append(params, table(range(4)), part="p1")
    good = written.read_bytes()
    corrupt(written)
    synced = log_store.sync(location, params.base.paths.predictions, verify=verify)
    assert synced.fetched == ("date=2026-12-01/p1.parquet",)
    assert written.read_bytes() == good
    assert log_store.sync(location, params.base.paths.predictions).fetched == ()


def test_an_unverified_sync_of_an_unchanged_mirror_fetches_nothing(params, location):
    log_store.append(params, table(range(4)), part="p1")
    synced = log_store.sync(location, params.base.paths.predictions)
    assert (synced.fetched, synced.kept, synced.removed) == ((), 1, ())


def test_a_log_file_s3_does_not_hold_is_refused_until_published(params, tmp_path, location):
    log_store.append(params, table(range(2)), part="p1")
    stray = plog.append(params.base.paths.predictions, table(range(50, 52), date=DAY2), part="local-only")[0]
    with pytest.raises(log_store.LogStoreError, match=r"local-only\.parquet.*publish_local_changes"):
        log_store.log_root(params)
    done = log_store.publish_local_changes(params)
    assert done is not None and [p.name for p in done.parts] == [stray.relative_to(stray.parents[1]).as_posix()]
    other = make_params(tmp_path / "host-b", location)
    assert len(plog.read(log_store.log_root(other))) == len(plog.read(log_store.log_root(params)))


# ------------------------------------------------------------------ stages on the S3 log


def test_ingest_appends_to_the_s3_log(tmp_path, location):
    data = tiny_params_dict(tmp_path / "host-a")
    data["base"]["storage"] = {"predictions": location}
    data["ingest"].update(default_source="edge")
    params = Params.model_validate(data)
    from tests.unit.test_ingest import record

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(record(n)) + "\n" for n in (1, 2, 3)))
    report = ingest.run(params, path=source)
    again = ingest.run(params, path=source)
    assert report.added_images == 3 and again.already_ingested
    ids = sorted(r["image_id"] for r in log_store.open_dataset(location).to_table().to_pylist())
    assert ids == ["cam1-00001", "cam1-00002", "cam1-00003"]


def test_forget_takes_the_images_rows_out_of_s3(params, conn, location):
    log_store.append(params, table(range(4)), part="p1")
    log_store.append(params, table(range(4, 6), date=DAY2), part="p2")
    report, _ = forget.forget(params, sha(2), root=params.base.paths.predictions.parent)
    left = log_store.open_dataset(location).to_table()
    assert sha(2) not in left["image_sha256"].to_pylist() and left.num_rows > 0
    assert not report.left, report.left
    uri = s3.parse_uri(location)
    holding = [k for k in data_objects(conn, location) if sha(2).encode() in s3.read_bytes(conn, uri.bucket, k)]
    assert holding == [], "the old object of the rewritten part was collected"


RETENTION = {
    "older-date-withdrawn": (dt.date(2026, 12, 3), ["img-0004", "img-0005"], 1),
    "every-date-withdrawn": (dt.date(2027, 1, 1), [], 0),
    "nothing-old-enough": (DAY2, ["img-0000", "img-0001", "img-0004", "img-0005"], 2),
}


@pytest.mark.parametrize(("today", "expected", "objects"), RETENTION.values(), ids=RETENTION.keys())
def test_retention_withdraws_old_dates_from_s3(today, expected, objects, tmp_path, conn, location):
    data = tiny_params_dict(tmp_path)
    data["base"]["storage"] = {"predictions": location}
    data["forget"]["retention"] = {"prediction_log_days": 1}
    params = Params.model_validate(data)
    log_store.append(params, table(range(2)), part="p1")
    log_store.append(params, table(range(4, 6), date=DAY2), part="p1")
    forget.retain(params, today=today)
    assert sorted({r["image_id"] for r in log_store.open_dataset(location).to_table().to_pylist()}) == expected
    assert len(data_objects(conn, location)) == objects, "the withdrawn dates' objects are collected"
    other = make_params(tmp_path / "host-b", location)
    assert sorted({r["image_id"] for r in plog.read(log_store.log_root(other)).to_pylist()}) == expected


def test_predict_skips_batches_its_version_logged_on_s3(params, tmp_path):
    for batch in ("b1", "b2"):
        (params.base.paths.production / batch / "images").mkdir(parents=True)
    log_store.append(params, table(range(3), batch="b1"), part="batch=b1__model=visionloop-detector-v3")
    log_store.append(params, table(range(3), batch="b2", version="4", shadow=True), part="b2__shadow")
    info = ModelVersionInfo(name="visionloop-detector", version="3", run_id="r", source="s", tags={}, aliases=[])
    fresh = make_params(tmp_path / "host-b", params.base.storage.predictions)
    (fresh.base.paths.production / "b1" / "images").mkdir(parents=True)
    (fresh.base.paths.production / "b2" / "images").mkdir(parents=True)
    assert predict.pending_batches(fresh, info) == ["b2"]


# ------------------------------------------------------------------ a missing bucket


@pytest.mark.parametrize(
    "call",
    [lambda p: log_store.log_root(p), lambda p: log_store.append(p, table(range(1)), part="p1")],
    ids=["read", "append"],
)
def test_a_missing_bucket_is_named_with_the_endpoint(call, tmp_path, server, conn):
    bucket = unique_bucket("absent")
    params = make_params(tmp_path, f"s3://{bucket}/log")
    with pytest.raises(s3.S3BucketMissing) as caught:
        call(params)
    text = str(caught.value)
    assert server.endpoint_url in text and bucket in text and CANARY not in text
