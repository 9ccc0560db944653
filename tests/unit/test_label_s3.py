"""The label stage's S3 addressing without a server: which images are S3's, which storages Label Studio gets."""

from __future__ import annotations

import pytest

from tasks.adapters import labelstudio_s3
from tasks.contracts.label_tasks import LabelError, image_path, image_suffix, is_s3_uri


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        ([], {}),
        (["/data/local-files/?d=data/a.png"], {}),
        (["s3://frames/prod/2026-11-02/images/a.png"], {"frames": "prod/2026-11-02/images"}),
        (
            ["s3://frames/prod/2026-11-02/images/a.png", "s3://frames/prod/2026-11-03/images/b.png"],
            {"frames": "prod"},
        ),
        (["s3://frames/a.png", "s3://frames/prod/b.png"], {"frames": ""}),
        (["s3://one/x/a.png", "s3://two/y/b.png", "/data/local-files/?d=c.png"], {"one": "x", "two": "y"}),
    ],
    ids=["empty", "local-only", "one-folder", "two-batches", "bucket-root", "two-buckets-and-a-local"],
)
def test_one_storage_per_bucket_with_the_common_folder(urls, expected):
    assert labelstudio_s3.buckets_of(urls) == expected


@pytest.mark.parametrize(
    ("uri", "s3", "suffix"),
    [
        ("s3://frames/prod/b/images/a.PNG", True, ".png"),
        ("file:///tmp/b/images/a.jpg", False, ".jpg"),
        ("/tmp/b/images/a.jpeg", False, ".jpeg"),
        ("s3://frames/prod/noext", True, ""),
    ],
    ids=["s3", "file-uri", "path", "s3-no-suffix"],
)
def test_s3_uris_are_told_apart_and_keep_their_suffix(uri, s3, suffix):
    assert (is_s3_uri(uri), image_suffix(uri)) == (s3, suffix)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("s3://frames/a.png", "an S3 object has no local path"),
        ("https://example.org/a.png", "only local files .* and S3 objects"),
        ("gs://frames/a.png", "got scheme 'gs'"),
    ],
    ids=["s3", "https", "gcs"],
)
def test_image_path_refuses_what_is_not_a_local_file(uri, match):
    with pytest.raises(LabelError, match=match):
        image_path(uri)


@pytest.mark.parametrize(
    ("override", "ours", "expected"),
    [
        (None, "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        (None, None, None),
        ("http://minio:9000", "http://127.0.0.1:9000", "http://minio:9000"),
        ("server", "http://127.0.0.1:9000", None),
    ],
    ids=["ours", "aws", "override", "the-servers-own"],
)
def test_the_endpoint_label_studio_is_given(monkeypatch, override, ours, expected):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", labelstudio_s3.ENDPOINT_OVERRIDE_ENV):
        monkeypatch.delenv(name, raising=False)
    if ours:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", ours)
    if override:
        monkeypatch.setenv(labelstudio_s3.ENDPOINT_OVERRIDE_ENV, override)
    assert labelstudio_s3.storage_endpoint() == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("true", True), ("1", True), ("FALSE", False), ("0", False), ("maybe", None), ("", None)],
    ids=["unset", "true", "one", "false-upper", "zero", "nonsense", "empty"],
)
def test_presigning_is_on_unless_turned_off(monkeypatch, value, expected):
    monkeypatch.delenv(labelstudio_s3.PRESIGN_ENV, raising=False)
    if value is not None:
        monkeypatch.setenv(labelstudio_s3.PRESIGN_ENV, value)
    if expected is None:
        with pytest.raises(labelstudio_s3.LabelStudioStorageError, match=labelstudio_s3.PRESIGN_ENV):
            labelstudio_s3.presign()
    else:
        assert labelstudio_s3.presign() is expected
