"""Production batches on S3 (``base.storage.production``) against a real moto_server on 127.0.0.1: no mocks.

The tiny world renders locally (``base.paths.production`` is its staging folder) and uploads its batches; predict
then lists them page by page, streams each image once (hashed as it streams, decoded in memory) and logs the same
rows as the local run of the same files, only ``image_uri`` is ``s3://``. The model is the tiny brightness detector
of ``test_fanout`` (every image its own boxes), registered in a real MLflow SQLite store.
"""

from __future__ import annotations

import copy
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from tasks import doctor, forget, predict, sample, world
from tasks.adapters import image_store, s3
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts import prediction_log
from tasks.contracts.batch_sources import SourcesError, read_sources
from tasks.core import phash
from tasks.core.hashing import file_sha256
from tests.conftest import tiny_params_dict
from tests.integration.test_fanout import brightness_detector
from tests.s3_server import S3Server, s3_server, unique_bucket

pytestmark = pytest.mark.integration

TIMING = ["ts", "latency_ms"]  # the only columns two runs may differ in (and image_uri: file:// vs s3://)
CANARY = "canary-Secret-s3-production"


@dataclass(frozen=True)
class Stack:
    """The tiny world staged under ``root``, uploaded to ``location``, with a champion in its registry."""

    root: Path
    bucket: str
    location: str
    data: dict[str, Any]
    batches: tuple[str, ...]


@pytest.fixture(scope="module")
def server(moto_s3) -> S3Server:
    return moto_s3


@pytest.fixture(scope="module")
def stack(server, tmp_path_factory) -> Stack:
    patch = pytest.MonkeyPatch()
    server.apply(patch)
    try:
        root = tmp_path_factory.mktemp("s3-production")
        bucket = unique_bucket()
        s3.ensure_bucket(s3.connect(), bucket)
        data = tiny_params_dict(root)
        data["base"]["storage"] = {"production": f"s3://{bucket}/prod"}
        data["predict"].update(batch_size=4, shadow={"alias": "challenger", "share": 0.0})
        params = Params.model_validate(data)
        done = world.run(params)  # renders into the staging folder, then uploads every batch
        client = mlflow_adapter.client(params)
        client.create_registered_model(params.registry.model_name)
        source = brightness_detector(root / "sources" / "v1" / "model.onnx", seed=1).parent
        client.create_model_version(params.registry.model_name, source=str(source))
        mlflow_adapter.set_alias(params, "champion", "1")
        yield Stack(root, bucket, f"s3://{bucket}/prod", data, done.batch_ids)
    finally:
        patch.undo()


@pytest.fixture(autouse=True)
def env(server, monkeypatch) -> None:
    server.apply(monkeypatch)


def params_data(stack: Stack, out: Path, *, production: str | None, **predict_values: Any) -> dict[str, Any]:
    """The stack's params with their own log and reports under ``out`` and production at ``production``."""
    data = copy.deepcopy(stack.data)
    data["base"]["paths"].update(predictions=str(out / "predictions"), reports=str(out / "reports"))
    data["base"]["storage"] = {"production": production}
    data["predict"].update(predict_values)
    return data


def params_for(stack: Stack, out: Path, *, production: str | None, **predict_values: Any) -> Params:
    return Params.model_validate(params_data(stack, out, production=production, **predict_values))


def copy_world(stack: Stack, name: str) -> str:
    """The stack's staged batches uploaded again under a prefix of their own (for a test that changes them)."""
    location = f"s3://{stack.bucket}/{name}"
    for batch in stack.batches:
        image_store.upload_batch(Path(stack.data["base"]["paths"]["production"]) / batch, location)
    return location


def prediction_log_sources(folder: Path) -> dict[str, str]:
    return read_sources(folder / "sources.csv")


def log_rows(params: Params) -> pa.Table:
    return prediction_log.read(params.base.paths.predictions).drop_columns(TIMING)


# ------------------------------------------------------------------ predict from S3 = predict from disk


def test_world_batches_on_s3_predict_to_the_local_runs_rows(stack, tmp_path):
    local = params_for(stack, tmp_path / "local", production=None)
    remote = params_for(stack, tmp_path / "s3", production=stack.location)
    assert (
        predict.list_batches(stack.location) == list(stack.batches) == predict.list_batches(local.base.paths.production)
    )
    on_disk, on_s3 = predict.run(local), predict.run(remote)

    expected, got = log_rows(local), log_rows(remote)
    assert got.num_rows == expected.num_rows > 12, "every image logged, with its boxes"
    assert got.drop_columns(["image_uri"]).equals(expected.drop_columns(["image_uri"])), "same boxes, scores, hashes"
    names = [Path(prediction_log.image_file(u)).name for u in expected["image_uri"].to_pylist()]
    prefix = f"s3://{stack.bucket}/prod/"
    assert [u.removeprefix(prefix).split("/images/")[1] for u in got["image_uri"].to_pylist()] == names
    assert all(u.startswith(prefix) for u in got["image_uri"].to_pylist())
    assert set(got["source"].to_pylist()) == {"line-1", "line-2"}, "sources.csv read from S3"
    staged = Path(stack.data["base"]["paths"]["production"])
    first = got.slice(0, 1).to_pylist()[0]
    assert first["image_sha256"] == file_sha256(staged / first["batch"] / "images" / f"{first['image_id']}.png")
    assert [(b.batch, b.images, b.detections, b.errors) for b in on_s3.batches] == [
        (b.batch, b.images, b.detections, b.errors) for b in on_disk.batches
    ]


def test_a_world_rerun_uploads_nothing_already_there(stack, tmp_path):
    params = params_for(stack, tmp_path, production=stack.location)
    done = world.upload_production(params, list(stack.batches))
    assert [len(d.uploaded) for d in done] == [0, 0] and all(len(d.skipped) == 7 for d in done), "6 images + csv"
    staged = Path(stack.data["base"]["paths"]["production"]) / stack.batches[0]
    location = f"s3://{stack.bucket}/changed"
    assert len(image_store.upload_batch(staged, location).uploaded) == 7
    changed = tmp_path / stack.batches[0]
    shutil.copytree(staged, changed)
    (changed / "sources.csv").write_bytes((staged / "sources.csv").read_bytes().replace(b"line-1", b"line-9"))
    again = image_store.upload_batch(changed, location)
    assert (again.uploaded, len(again.skipped)) == (("sources.csv",), 6), "only the changed file goes up"
    assert image_store.read_batch_sources(location, stack.batches[0]) == prediction_log_sources(changed)
    assert world.upload_production(params_for(stack, tmp_path, production=None), list(stack.batches)) == []


# ------------------------------------------------------------------ listing past a page


@pytest.mark.parametrize(
    "images",
    [230, pytest.param(1005, marks=pytest.mark.slow)],  # 1005: past S3's own 1000-key page (~10 s of PUTs here)
    ids=["small-pages", "past-1000"],
)
def test_a_batch_is_listed_over_pages(stack, tmp_path, images):
    batch, prefix = "2026-12-01", f"big-{images}"
    location = f"s3://{stack.bucket}/{prefix}"
    conn = image_store.connection()
    keys = [f"{prefix}/{batch}/images/img_{i:05d}.png" for i in range(images)]
    noise = [f"{prefix}/{batch}/images/deeper/x.png", f"{prefix}/{batch}/images/notes.txt", f"{prefix}/{batch}/a.png"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: s3.put_bytes(conn, stack.bucket, k, b"png"), keys + noise))
    s3.put_bytes(conn, stack.bucket, f"{prefix}/{batch}/sources.csv", b"image_id,source\nimg_00007,cam-7\n")
    params = params_for(stack, tmp_path, production=location, batch_size=100)

    before = conn.stats.calls
    chunks = predict.batch_chunks(params, batch)
    pages = -(-(images + 4) // image_store.PAGE_SIZE)
    assert conn.stats.calls - before == pages + 1, "the listing's pages and the sources.csv"
    uris = [u for c in chunks for u in c.paths]
    assert uris == [f"s3://{stack.bucket}/{k}" for k in keys], "images only, direct children, sorted"
    assert [len(c.paths) for c in chunks] == [100] * (images // 100) + [images % 100]
    sources = [s for c in chunks for s in c.sources]
    assert sources[7] == "cam-7" and set(sources[:7] + sources[8:]) == {prediction_log.DEFAULT_SOURCE}
    before = conn.stats.calls
    assert image_store.list_batch_images(location, batch, page_size=97) == uris
    assert conn.stats.calls - before == -(-(images + 4) // 97), "a page size of 97: that many more pages"
    assert image_store.list_batches(location, page_size=7) == predict.list_batches(location) == [batch]


@pytest.mark.parametrize(
    ("keys", "batches"),
    [
        ([], []),
        (["b1/images/a.png"], ["b1"]),
        (["b1/sources.csv", "b1/labels/a.txt", "loose.png"], []),
        (["b1/images/deeper/a.png", "b1/images/notes.txt"], []),
        ([f"b1/images/n{i:02d}.txt" for i in range(12)] + ["b1/images/z.png"], ["b1"]),
        (["b2/images/a.jpg", "b1/images/a.png", "b3/a.png"], ["b1", "b2"]),
    ],
    ids=["empty", "one", "no-images-folder", "no-direct-image", "image-past-a-probe-page", "sorted"],
)
def test_the_batches_are_the_prefixes_with_an_image(stack, keys, batches):
    location = f"s3://{stack.bucket}/{unique_bucket('listed')}"
    conn = image_store.connection()
    for key in keys:
        s3.put_bytes(conn, stack.bucket, s3.parse_uri(location).key(key), b"png")
    assert image_store.list_batches(location) == batches


def test_listing_batches_costs_requests_per_batch_not_per_image(stack):
    location = f"s3://{stack.bucket}/many"
    conn = image_store.connection()
    keys = [f"many/b{b}/images/{i:03d}.png" for b in range(3) for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: s3.put_bytes(conn, stack.bucket, k, b"png"), keys))
    assert list(s3.list_prefixes(conn, location)) == ["many/b0", "many/b1", "many/b2"]
    before = conn.stats.calls
    assert image_store.list_batches(location, page_size=2) == ["b0", "b1", "b2"]
    assert conn.stats.calls - before == 2 + 3, "two pages of batch prefixes, one probe page per batch"
    assert list(s3.list_prefixes(conn, f"s3://{stack.bucket}/nothing-here")) == []


# ------------------------------------------------------------------ an object gone between listing and reading


def test_an_object_deleted_after_listing_gets_an_error_row_and_the_batch_goes_on(stack, tmp_path):
    location = copy_world(stack, "deleted")
    params = params_for(stack, tmp_path, production=location)
    planned = predict.plan(params)
    gone = planned.shards[0].chunks[0].paths[2]
    assert isinstance(gone, str) and gone.startswith(f"{location}/{stack.batches[0]}/images/")
    image_store.delete_image(gone)

    report = predict.combine(params, planned, [predict.run_shard(params, planned, s) for s in planned.shards])
    first = report.batches[0]
    assert (first.images, first.errors) == (5, {"unreadable": 1}), "the rest of the batch is logged"
    assert list(first.skipped) == [gone] and re.search(r"unreadable: .*gone", first.skipped[gone])
    assert report.batches[1].errors == {} and report.batches[1].images == 6
    rows = prediction_log.read(params.base.paths.predictions)
    bad = rows.filter(pc.equal(rows["image_uri"], gone)).to_pylist()
    assert [(r["error"], r["image_id"], r["image_sha256"]) for r in bad] == [
        ("unreadable", Path(gone).stem, prediction_log.EMPTY_SHA256)
    ]


# ------------------------------------------------------------------ sources.csv on S3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, {}),
        (b"image_id,source\na_1,cam-a\n\nb_2,cam-b\n", {"a_1": "cam-a", "b_2": "cam-b"}),
        (b"\xef\xbb\xbfimage_id,source\na_1,cam-a\n", {"a_1": "cam-a"}),
        (b"image_id,source\na_1,cam-a\nb_2\n", r"sources\.csv line 3: expected 'image_id,source'"),
        (b"id,camera\na_1,cam-a\n", r"sources\.csv line 1: header"),
        (b"image_id,source\na_1,cam-a\na_1,cam-b\n", r"sources\.csv line 3: image 'a_1' already named on line 2"),
        (b"", r"sources\.csv: empty"),
        (b"image_id,source\n\xff\xfe,x\n", r"sources\.csv: cannot read"),
    ],
    ids=["missing", "good", "bom", "short-row", "bad-header", "twice", "empty", "not-utf8"],
)
def test_sources_csv_is_read_from_s3_and_errors_name_the_uri_and_line(stack, tmp_path, content, expected):
    prefix = unique_bucket("src")
    conn = image_store.connection()
    for name in ("a_1", "b_2"):
        s3.put_bytes(conn, stack.bucket, f"{prefix}/2026-12-02/images/{name}.png", b"png")
    if content is not None:
        s3.put_bytes(conn, stack.bucket, f"{prefix}/2026-12-02/sources.csv", content)
    params = params_for(stack, tmp_path, production=f"s3://{stack.bucket}/{prefix}")
    if isinstance(expected, str):
        uri = f"s3://{stack.bucket}/{prefix}/2026-12-02/sources.csv"
        with pytest.raises(SourcesError, match=re.escape(uri.removesuffix("sources.csv")) + expected):
            predict.batch_chunks(params, "2026-12-02")
        return
    named = dict(zip(["a_1", "b_2"], predict.batch_chunks(params, "2026-12-02")[0].sources, strict=True))
    assert named == {"a_1": "default", "b_2": "default"} | expected


# ------------------------------------------------------------------ pHash, forget, doctor


def test_the_phash_of_an_s3_image_is_the_local_files(stack):
    staged = Path(stack.data["base"]["paths"]["production"]) / stack.batches[1] / "images"
    local = sorted(staged.iterdir())[3]
    uri = f"{stack.location}/{stack.batches[1]}/images/{local.name}"
    assert np.array_equal(sample.phash_uri(uri), phash.phash_file(local))
    assert image_store.read_image_bytes(uri) == local.read_bytes() == image_store.read_image_bytes(local.as_uri())
    assert sample.phash_uri(f"{stack.location}/{stack.batches[1]}/images/nothing.png") is None, "gone: not sampled"


def test_forget_deletes_the_s3_object_and_only_it(stack, tmp_path):
    location = copy_world(stack, "forget")
    data = tiny_params_dict(tmp_path)  # a project of its own: only S3 holds the image
    data["base"]["storage"] = {"production": location}
    params = Params.model_validate(data)
    before = image_store.list_batch_images(location, stack.batches[0])
    target = before[4]
    image_id = Path(target).stem

    report = forget.run(params, image=image_id, root=tmp_path)
    assert report.image_sha256 == file_sha256(
        Path(stack.data["base"]["paths"]["production"]) / stack.batches[0] / "images" / f"{image_id}.png"
    )
    assert report.removed["production_s3"] == [f"{location}/{stack.batches[0]}/images/<image>.png (deleted)"]
    assert "production_s3" not in report.left
    assert image_store.list_batch_images(location, stack.batches[0]) == [u for u in before if u != target]
    with pytest.raises(s3.S3ObjectMissing, match=re.escape(target)):
        image_store.read_image_bytes(target)


def test_doctor_reports_the_s3_production_location(stack, tmp_path):
    params = params_for(stack, tmp_path, production=stack.location)
    assert doctor.check_production(params) == ("ok", [])
    missing = params_for(stack, tmp_path, production=f"s3://{unique_bucket()}/prod")
    status, found = doctor.check_production(missing)
    assert (
        status == "problems" and "NoSuchBucket" in found[0].problem and found[0].item == missing.base.storage.production
    )
    local = params_data(stack, tmp_path, production=None)
    local["base"]["paths"]["production"] = str(tmp_path / "nowhere")
    assert doctor.check_production(Params.model_validate(local))[0].startswith("skipped: no production folder")


# ------------------------------------------------------------------ credentials


def test_bad_credentials_name_the_endpoint_not_the_secret(tmp_path, monkeypatch):
    import json

    import boto3

    with s3_server(tmp_path / "moto-auth", free_actions=3) as server:
        keys = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1", **keys)
        iam.create_user(UserName="visionloop")
        key = iam.create_access_key(UserName="visionloop")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="visionloop", PolicyName="s3", PolicyDocument=json.dumps(policy))
        server.apply(monkeypatch)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        bucket = unique_bucket()
        s3.ensure_bucket(image_store.connection(), bucket)
        s3.put_bytes(image_store.connection(), bucket, "prod/2026-12-03/images/a.png", b"png")
        assert predict.list_batches(f"s3://{bucket}/prod") == ["2026-12-03"]

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)  # a new secret: a new connection, refused
        for call in (
            lambda: predict.list_batches(f"s3://{bucket}/prod"),
            lambda: image_store.read_image_bytes(f"s3://{bucket}/prod/2026-12-03/images/a.png"),
        ):
            with pytest.raises(s3.S3AuthError) as caught:
                call()
            text = str(caught.value)
            assert server.endpoint_url in text and "SignatureDoesNotMatch" in text and f"s3://{bucket}/" in text
            assert CANARY not in text and CANARY not in repr(caught.value)


# ------------------------------------------------------------------ Dask fan-out over an S3 batch


@pytest.mark.slow
def test_the_dask_fan_out_over_s3_gives_the_single_process_rows(stack, tmp_path, prefect_harness, monkeypatch):
    from flows.predict import predict as predict_flow

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    single = params_for(stack, tmp_path / "single", production=stack.location)
    predict.run(single)
    data = params_data(stack, tmp_path / "sharded", production=stack.location)
    params_file = tmp_path / "sharded" / "params.yaml"
    params_file.parent.mkdir(parents=True)
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    sharded = Params.model_validate(data | {"predict": {**data["predict"], "shards": 2}})
    assert [len(s.chunks) for s in predict.plan(sharded).shards] == [2, 2], "2 shards of 2 chunks (4 + 2 images)"
    predict_flow(params_path=str(params_file), shards=2)  # the workers read their own images from S3
    expected, got = log_rows(single), log_rows(sharded)
    assert got.num_rows == expected.num_rows > 12 and got.equals(expected), "same rows, same order"
    assert all(u.startswith("s3://") for u in got["image_uri"].to_pylist())


def test_a_disabled_world_counts_the_batches_on_s3(stack, tmp_path):
    data = params_data(stack, tmp_path, production=stack.location)
    data["world"]["enabled"] = False
    found = world.run(Params.model_validate(data))
    assert found.batch_ids == stack.batches and [found.counts[b] for b in stack.batches] == [6, 6]
