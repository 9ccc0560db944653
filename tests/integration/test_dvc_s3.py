"""The DVC remote on S3 (moto_server on 127.0.0.1): push, then a fresh clone pulls the merged dataset byte for byte.

``VISIONLOOP_DVC_REMOTE=s3://bucket/prefix`` plus the endpoint in ``AWS_ENDPOINT_URL_S3``: :func:`dvc.ensure_remote`
writes the URL and the endpoint to ``.dvc/config.local``; the credentials stay in the environment, in no config file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tasks import merge, world
from tasks.adapters import dvc, s3
from tasks.config import Params, load_params
from tests.integration.test_dvc_record import repo, sh  # noqa: F401  (repo: the DVC project fixture)
from tests.s3_server import S3Server, s3_server, unique_bucket

pytestmark = pytest.mark.integration

CANARY = "canary-Secret-dvc-51f0"


@pytest.fixture
def server(tmp_path, monkeypatch) -> S3Server:
    with s3_server(tmp_path / "moto") as running:
        running.apply(monkeypatch)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)  # moto accepts it; no file may hold it
        yield running


def label_cycle(params: Params, cycle: str) -> None:
    """A labeled cycle as validate leaves it: the first production batch's images with their oracle labels."""
    paths = params.base.paths
    batch = sorted(p.name for p in paths.production.iterdir() if p.is_dir())[0]
    shutil.copytree(paths.production / batch / "images", paths.labels / cycle / "images")
    shutil.copytree(paths.oracle / batch / "labels", paths.labels / cycle / "labels")


def files_under(root: Path, *folders: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for f in folders for p in (root / f).rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("url", "endpoint", "expected"),
    [
        (
            "s3://frames/dvc",
            "http://127.0.0.1:9000",
            {"url": "s3://frames/dvc", "endpointurl": "http://127.0.0.1:9000"},
        ),
        ("s3://frames/dvc", None, {"url": "s3://frames/dvc"}),
        ("/srv/dvc-remote", "http://127.0.0.1:9000", {"url": "/srv/dvc-remote"}),
    ],
    ids=["s3-with-endpoint", "s3-on-aws", "local-folder"],
)
def test_the_remote_section_takes_the_endpoint_from_the_environment_only(monkeypatch, url, endpoint, expected):
    for name in s3.ENDPOINT_ENVS:
        monkeypatch.delenv(name, raising=False)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    assert dvc.remote_config(url) == expected


def test_push_to_s3_then_a_fresh_clone_pulls_the_merged_dataset_byte_identical(repo, server, tmp_path, monkeypatch):  # noqa: F811
    bucket = unique_bucket("dvc")
    s3.ensure_bucket(s3.connect(), bucket)
    monkeypatch.setenv(dvc.REMOTE_ENV, f"s3://{bucket}/visionloop")
    params = load_params("params.yaml")
    world.run(params)
    label_cycle(params, "c1")
    merge.run(params)
    assert dvc.record(params, ["world", "merge"]).stages == ("params", "world", "merge")
    sent = files_under(repo, "data/merged")
    assert any(name.endswith(".tar") for name in sent) and "data/merged/manifest.parquet" in sent

    pushed = dvc.push(repo)
    assert pushed.ok, pushed.error
    stored = list(s3.list_objects(s3.connect(), f"s3://{bucket}/visionloop"))
    assert len(stored) == pushed.objects > 0 and all(o.key.startswith("visionloop/files/md5/") for o in stored)
    local = (repo / ".dvc" / "config.local").read_text()
    assert f"endpointurl = {server.endpoint_url}" in local and f"s3://{bucket}/visionloop" in local
    for config in (repo / ".dvc").glob("config*"):
        text = config.read_text()
        assert CANARY not in text and server.env["AWS_ACCESS_KEY_ID"] not in text, f"{config.name} holds a credential"

    sh("git", "add", "-f", "dvc.lock", "params.effective.yaml", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "run", cwd=repo)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    monkeypatch.chdir(clone)
    assert not (clone / "data" / "merged").exists() and not (clone / ".dvc" / "cache").exists()
    pulled = dvc.pull(clone)
    assert pulled.ok, pulled.error
    assert files_under(clone, "data/merged", "data/world") == files_under(repo, "data/merged", "data/world")
    assert dvc.changed_outputs(clone) == [], "DVC re-hashes the pulled outputs: they match dvc.lock"
    print(f"push {pushed.objects} objects {pushed.seconds:.1f} s, pull {pulled.seconds:.1f} s")


def test_a_push_to_a_missing_bucket_fails_and_says_why(repo, server, monkeypatch):  # noqa: F811
    bucket = unique_bucket("absent")
    monkeypatch.setenv(dvc.REMOTE_ENV, f"s3://{bucket}/visionloop")
    params = load_params("params.yaml")
    world.run(params)
    dvc.record(params, ["world"])
    pushed = dvc.push(repo)
    assert not pushed.ok and pushed.error and CANARY not in pushed.error
    assert f"(remote {dvc.REMOTE_NAME}: s3://{bucket}/visionloop at {server.endpoint_url})" in pushed.error
    assert "bucket does not exist" in pushed.error
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == CANARY
