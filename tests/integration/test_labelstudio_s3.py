"""The label stage with sampled images on S3: a real Label Studio 1.23 reading them from a real moto_server.

The sample manifest names ``s3://bucket/production/<batch>/images/<id>.png`` (the local production folder is
deleted, so nothing can be read from disk). The project gets one S3 import storage with presigned URLs, its tasks
carry the ``s3://`` URIs, and the image Label Studio serves for a task (``/tasks/<id>/resolve/?fileuri=…`` → 303 to a
presigned URL on moto) has the object's bytes. A canary secret sits in ``AWS_SECRET_ACCESS_KEY`` throughout (moto
without authentication accepts any): it reaches Label Studio's storage, and never a log record, a report or a record
file of ours. The Label Studio server is the session's (``make labelstudio-up``: SSRF protection off, 127.0.0.1);
the last test starts a second one with the protection on to show why the Makefile turns it off.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import label
from tasks.adapters import labelstudio, labelstudio_s3, s3
from tasks.config import LabelParams, Params
from tasks.contracts.label_tasks import image_path
from tasks.contracts.ledger import ledger_path, read_ledger
from tasks.contracts.reports.label import LabelResult
from tasks.sim import annotator
from tests.integration.conftest import CYCLE, TOKEN, Server, build_cycle, label_studio_server, make_params
from tests.s3_server import S3Server, s3_server, unique_bucket

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("labelstudio_env")]

CANARY = "canary-Secret-LS-3b9e51d0"
TITLE = "visionloop-s3"


@pytest.fixture(scope="module")
def moto(moto_s3: S3Server, labelstudio_env: Server) -> Iterator[S3Server]:
    """moto_server, with this module's AWS clients pointed at it and the canary as the secret key."""
    with pytest.MonkeyPatch.context() as mp:
        moto_s3.apply(mp)
        mp.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
        yield moto_s3


@pytest.fixture(autouse=True)
def no_canary_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test runs with DEBUG logs captured (botocore's and httpx's too); none may hold the canary."""
    caplog.set_level(logging.DEBUG)
    yield
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    leaked = [r.name for r in records if CANARY in r.getMessage()]
    assert not leaked, f"the secret reached log records of {leaked}"


def move_to_s3(params: Params, bucket: str, *, cycle: str = CYCLE) -> dict[str, bytes]:
    """Upload the cycle's sampled images to ``bucket``, point the manifest at them, delete the local production."""
    conn = s3.connect()
    s3.ensure_bucket(conn, bucket)
    manifest = label.manifest_path(params, cycle)
    rows, objects = pq.read_table(manifest).to_pylist(), {}
    for row in rows:
        path = image_path(row["image_uri"])
        key = f"production/{row['batch']}/images/{path.name}"
        s3.put_bytes(conn, bucket, key, path.read_bytes(), content_type="image/png")
        row["image_uri"] = f"s3://{bucket}/{key}"
        objects[row["image_uri"]] = path.read_bytes()
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    shutil.rmtree(params.base.paths.production)
    return objects


@pytest.fixture(scope="module")
def cycle(server: Server, moto: S3Server) -> tuple[Params, dict[str, bytes]]:
    params = build_cycle(make_params(server.root, title=TITLE, labels="labels-s3"))
    return params, move_to_s3(params, unique_bucket("ls"))


@pytest.fixture(scope="module")
def first_run(cycle: tuple[Params, dict[str, bytes]]) -> LabelResult:
    return label.run(cycle[0], cycle=CYCLE)


def client() -> Any:
    return labelstudio.connect(LabelParams())  # URL and token from the environment the server fixture set


def served(server: Server, task_id: int, image: str) -> httpx.Response:
    """What a browser gets for the task's image URL (Label Studio's, followed through its redirect)."""
    url = server.url + image if image.startswith("/") else image
    return httpx.get(url, headers={"Authorization": f"Token {TOKEN}"}, follow_redirects=True, timeout=30)


def test_tasks_reference_s3_and_label_studio_serves_the_object_bytes(server, moto, cycle, first_run):
    objects = cycle[1]
    assert (first_run.imported, first_run.missing) == (len(objects), [])
    sdk = client()
    (storage,) = sdk.import_storage.s3.list(project=first_run.project_id)
    bucket = next(iter(objects)).split("/")[2]
    assert (storage.bucket, storage.presign, storage.s3endpoint) == (bucket, True, moto.endpoint_url)
    assert all(uri.startswith(f"s3://{bucket}/{storage.prefix}/") for uri in objects), storage.prefix
    assert CANARY not in repr(storage) and CANARY not in json.dumps(storage.model_dump(), default=str)
    assert storage.aws_secret_access_key is None  # Label Studio never hands the keys back

    tasks = list(sdk.tasks.list(project=first_run.project_id, fields="all", resolve_uri=False))  # as imported
    assert sorted(t.data["image"] for t in tasks) == sorted(t.data["image_uri"] for t in tasks) == sorted(objects)
    for task in tasks[:3]:
        image = sdk.tasks.get(id=task.id).data["image"]  # as the labeling UI receives it
        assert image.startswith(f"/tasks/{task.id}/resolve/?fileuri="), image
        answer = served(server, task.id, image)
        assert answer.status_code == 200, answer.text[:300]
        assert answer.history and answer.history[0].status_code == 303  # a presigned URL, not a proxy
        assert str(answer.url).startswith(moto.endpoint_url) and "X-Amz-Signature=" in str(answer.url)
        assert answer.content == objects[task.data["image_uri"]]


def test_without_presigning_label_studio_streams_the_bytes_itself(server, cycle, tmp_path, monkeypatch):
    monkeypatch.setenv(labelstudio_s3.PRESIGN_ENV, "false")  # browsers that cannot reach the S3 endpoint
    uri, content = next(iter(cycle[1].items()))
    backend = backend_for(make_params(server.root, title="visionloop-s3-proxy"), tmp_path)
    assert len(ensure(backend, [uri])) == 1
    (storage,) = backend.client.import_storage.s3.list(project=backend.project_id)
    assert storage.presign is False
    (task_id,) = backend.client.projects.import_tasks(
        id=backend.project_id, request=[{"image": uri}], return_task_ids=True
    ).task_ids
    answer = served(server, task_id, backend.client.tasks.get(id=task_id).data["image"])
    assert (answer.status_code, answer.history, answer.content) == (200, [], content)


def test_rerun_makes_no_second_storage_and_no_duplicate_task(cycle, first_run):
    params, objects = cycle
    again = label.run(params, cycle=CYCLE)
    assert (again.imported, again.already_imported) == (0, len(objects))
    sdk = client()
    assert len(list(sdk.import_storage.s3.list(project=first_run.project_id))) == 1
    assert len(list(sdk.tasks.list(project=first_run.project_id, fields="task_only"))) == len(objects)


def test_annotations_are_collected_with_the_images_copied_from_s3(server, cycle, first_run):
    params, objects = cycle
    assert annotator.run(params).answered == len(objects)
    done = label.run(params, cycle=CYCLE)
    assert (done.labeled, done.pending, done.rejected) == (len(objects), 0, [])
    for row in read_ledger(ledger_path(params)).values():
        assert row["status"] == "labeled" and row["phash"] and len(row["phash"]) == 16
        copy = params.base.paths.labels / CYCLE / "images" / f"{row['image_id']}.png"
        assert copy.read_bytes() == objects[row["image_uri"]]
    # our files (ledger, project record, labels, reports) and Label Studio's own log hold no secret
    ours = [*params.base.paths.labels.rglob("*"), *params.base.paths.reports.rglob("*"), server.data / "server.log"]
    for path in ours:
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_the_files_backend_labels_s3_images(server, moto):
    root = server.root / "files-backend"
    params = build_cycle(make_params(root, title="visionloop-s3-files"))
    data = params.model_dump()
    data["label"]["backend"] = "files"
    params = Params.model_validate(data)
    objects = move_to_s3(params, unique_bucket("files"))
    gone = sorted(objects)[0]  # deleted between sampling and labeling: named, the others go on
    s3.delete_object(s3.connect(), *gone[len("s3://") :].split("/", 1))
    del objects[gone]

    first = label.run(params, cycle=CYCLE)
    assert (first.imported, first.backend, first.waiting) == (len(objects), "files", True)
    assert len(first.missing) == 1 and first.missing[0].startswith(gone), first.missing
    (outbox,) = (params.base.paths.labels / "outbox").glob("*.json")
    tasks = json.loads(outbox.read_text())
    assert sorted(t["data"]["image"] for t in tasks) == sorted(objects)  # a person's Label Studio presigns them

    exported, stamp = [], dt.datetime.now(dt.UTC).isoformat()
    for task_id, task in enumerate(tasks, start=1):
        # without the logged size the simulated person reads the image itself: from S3
        unsized = {k: v for k, v in task["data"].items() if k not in ("image_width", "image_height")}
        regions, _, _ = annotator.answer_task({"data": unsized}, params, params.world.annotator)
        answer = {"id": task_id, "result": regions, "was_cancelled": False, "updated_at": stamp}
        exported.append({"id": task_id, "data": task["data"], "annotations": [answer]})
    inbox = params.base.paths.labels / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "export.json").write_text(json.dumps(exported))

    done = label.run(params, cycle=CYCLE)
    assert (done.collected, done.labeled, done.pending) == (len(objects), len(objects), 0)
    for row in read_ledger(ledger_path(params)).values():
        assert (params.base.paths.labels / CYCLE / "images" / f"{row['image_id']}.png").read_bytes() == objects[
            row["image_uri"]
        ]


@pytest.fixture
def auth_moto(tmp_path: Path) -> Iterator[tuple[S3Server, dict[str, str], str]]:
    """A moto_server that checks signatures, its one access key, and a bucket holding one image."""
    keys = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    with s3_server(tmp_path / "moto-auth", free_actions=3) as running:
        iam = boto3.client("iam", endpoint_url=running.endpoint_url, region_name="us-east-1", **keys)
        iam.create_user(UserName="labelstudio")
        key = iam.create_access_key(UserName="labelstudio")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="labelstudio", PolicyName="s3", PolicyDocument=json.dumps(policy))
        good = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        bucket = unique_bucket("auth")
        client_ = boto3.client("s3", endpoint_url=running.endpoint_url, region_name="us-east-1", **good)
        client_.create_bucket(Bucket=bucket)
        client_.put_object(Bucket=bucket, Key="production/b/images/x.png", Body=b"\x89PNG")
        yield running, {"AWS_ACCESS_KEY_ID": good["aws_access_key_id"]}, bucket


def ensure(backend: labelstudio.LabelStudioBackend, urls: list[str]) -> list[int]:
    return labelstudio_s3.ensure_s3_storages(
        backend.client, project_id=int(backend.project_id or 0), urls=urls, call=backend._call
    )


def backend_for(params: Params, tmp_path: Path) -> labelstudio.LabelStudioBackend:
    return labelstudio.LabelStudioBackend(params.label, params.base.classes, record=tmp_path / "projects.json")


@pytest.mark.parametrize("key_id", [None, "AKIAUNKNOWN000000000"], ids=["wrong-secret", "unknown-key"])
def test_wrong_keys_are_refused_naming_the_endpoint_not_the_secret(server, auth_moto, tmp_path, monkeypatch, key_id):
    running, good, bucket = auth_moto
    running.apply(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id or good["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    backend = backend_for(make_params(server.root, title=f"visionloop-s3-keys-{key_id is None}"), tmp_path)
    with pytest.raises(labelstudio_s3.LabelStudioStorageError) as caught:
        ensure(backend, [f"s3://{bucket}/production/b/images/x.png"])
    text = str(caught.value)
    assert running.endpoint_url in text and f"s3://{bucket}/production/b/images" in text, text
    assert "AWS_SECRET_ACCESS_KEY" in text and CANARY not in text and CANARY not in repr(caught.value)
    assert list(backend.client.import_storage.s3.list(project=backend.project_id)) == []


@pytest.mark.slow  # a second Label Studio server (~10-20 s); CI: make test-slow-stack
def test_with_ssrf_protection_on_the_local_endpoint_is_refused_unless_it_is_the_servers_own(
    moto, tmp_path, monkeypatch
):
    """Why ``make labelstudio-up`` starts Label Studio with SSRF_PROTECTION_ENABLED=false (the local stack only), and
    the deployment's way with the protection on: the server's own ``S3_ENDPOINT`` (trusted) and
    ``VISIONLOOP_LABEL_S3_ENDPOINT=server`` here. A second server costs ~10-13 s to start.
    """
    bucket, key = unique_bucket("ssrf"), "production/b/images/x.png"
    conn = s3.connect()
    s3.ensure_bucket(conn, bucket)
    s3.put_bytes(conn, bucket, key, b"\x89PNG-not-really", content_type="image/png")
    monkeypatch.setenv("S3_ENDPOINT", moto.endpoint_url)  # the started server's environment: the operator's endpoint
    with label_studio_server(tmp_path, settings=("LABEL_STUDIO_SSRF_PROTECTION=true",)) as guarded:
        monkeypatch.setenv("LABEL_STUDIO_URL", guarded.url)
        backend = backend_for(make_params(tmp_path, title="visionloop-s3-ssrf"), tmp_path)
        with pytest.raises(labelstudio_s3.LabelStudioStorageError) as caught:
            ensure(backend, [f"s3://{bucket}/{key}"])
        text = str(caught.value)
        assert "HTTP 403" in text and "SSRF_PROTECTION_ENABLED=false" in text and moto.endpoint_url in text, text
        assert CANARY not in text

        monkeypatch.setenv(labelstudio_s3.ENDPOINT_OVERRIDE_ENV, labelstudio_s3.SERVER_ENDPOINT)
        assert len(ensure(backend, [f"s3://{bucket}/{key}"])) == 1
        (storage,) = backend.client.import_storage.s3.list(project=backend.project_id)
        assert not storage.s3endpoint  # none sent: the server's own applies, and its SSRF check with it
        task_ids = backend.client.projects.import_tasks(
            id=backend.project_id, request=[{"image": f"s3://{bucket}/{key}"}], return_task_ids=True
        ).task_ids
        image = backend.client.tasks.get(id=task_ids[0]).data["image"]
        assert served(guarded, task_ids[0], image).content == b"\x89PNG-not-really"
