"""The merged training data: ``<merged>/manifest.parquet`` and its ``shards/*.tar`` (merge writes, train reads).

One owner for the files the ``merge`` stage writes and the ``train`` stage (and the registry's lineage) reads:
the manifest's :data:`SCHEMA` and :class:`Row`, its byte-reproducible writer (:func:`manifest_bytes`) and its reader
(:func:`read_manifest`); the shard writer (:func:`write_shard`) and reader (:func:`extract_shard`); and the
trainer's view of them (:func:`use_merged`, :func:`materialize_view`).

Layout: one uncompressed tar per (source, cycle or set, split), members ``images/<file>`` and ``labels/<stem>.txt``,
byte-reproducible (sorted members, zero mtimes and owners). The manifest has one row per image; ``split`` is
``train | val | holdout | excluded`` and ``repeat`` the times the trainer sees a ``train`` row per epoch.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Params, VisionloopError
from tasks.core.hashing import file_md5
from tasks.io import atomic_open, write_bytes_atomic

MANIFEST = "manifest.parquet"
SHARDS = "shards"
HISTORICAL, PRODUCTION = "historical", "production"
TRAIN, VAL, HOLDOUT, EXCLUDED = "train", "val", "holdout", "excluded"
Split = Literal["train", "val", "holdout", "excluded"]

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # file stem (the id every stage uses)
        pa.field("file", pa.string(), nullable=False),  # image file name, member images/<file> of the shard
        pa.field("sha256", pa.string(), nullable=False),  # of the image bytes
        pa.field("label_sha256", pa.string(), nullable=False),  # of the YOLO label file bytes
        pa.field("n_boxes", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # historical | production
        pa.field("batch", pa.string(), nullable=False),  # production batch (<batch>_<index> stems), else cycle/set
        pa.field("cycle", pa.string(), nullable=True),  # null for historical rows
        pa.field("split", pa.string(), nullable=False),  # train | val | holdout | excluded
        pa.field("shard", pa.string(), nullable=True),  # shards/<name>.tar; null for holdout rows
        pa.field("shard_md5", pa.string(), nullable=True),  # DVC's md5 of the shard file (the view's cache key)
        pa.field("holdout_path", pa.string(), nullable=True),  # <holdouts>/<cycle>/images/<file> for holdout rows
        pa.field("repeat", pa.int16(), nullable=False),  # times the trainer sees the image per epoch
    ]
)


class ManifestError(VisionloopError, ValueError):
    """The merged data is missing, malformed or corrupt; the message names the file and the fix."""


@dataclass(frozen=True)
class Row:
    """One manifest row (see :data:`SCHEMA`)."""

    image_id: str
    file: str
    sha256: str
    label_sha256: str
    n_boxes: int
    source: str
    batch: str
    cycle: str | None
    split: str
    shard: str | None = None
    shard_md5: str | None = None
    holdout_path: str | None = None
    repeat: int = 1


@dataclass(frozen=True)
class DatasetView:
    """An Ultralytics-ready view of the merged data (see :func:`materialize_view`)."""

    train: Path
    val: Path
    manifest_md5: str
    train_images: int
    train_samples: int
    val_images: int
    shards_extracted: int
    shards_reused: int
    sources: dict[str, int] = field(default_factory=dict)  # training + validation images per data source


# ------------------------------------------------------------------------------------------------ manifest


def read_manifest(path: Path) -> list[Row]:
    """Read a manifest written by this stage; an absent file is an empty manifest.

    Raises:
        ManifestError: the file's columns are not :data:`SCHEMA`'s.
    """
    if not path.is_file():
        return []
    table = pq.read_table(path)
    if table.schema.names != SCHEMA.names:
        raise ManifestError(f"{path}: columns {table.schema.names} differ from the merge manifest's {SCHEMA.names}")
    return [Row(**record) for record in table.to_pylist()]


def manifest_bytes(rows: Sequence[Row]) -> bytes:
    """Serialise rows as Parquet, byte-identical for the same rows (no timestamps, fixed order)."""
    ordered = sorted(rows, key=_row_order)
    # column by column: dataclasses.asdict deep-copies and costs ~10 s per 100 k rows
    table = pa.table({name: [getattr(row, name) for row in ordered] for name in SCHEMA.names}, schema=SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _row_order(row: Row) -> tuple[int, str, str, str, str]:
    return (row.source != HISTORICAL, row.cycle or "", row.shard or "~", row.split, row.image_id)


# ------------------------------------------------------------------------------------------------ shards


def write_shard(path: Path, members: Sequence[tuple[Path, Path]]) -> str:
    """Pack ``(image, label)`` pairs into an uncompressed, byte-reproducible tar atomically.

    Members are ``images/<image name>`` and ``labels/<image stem>.txt`` in the given order, with zero mtime,
    owner and group, mode 0644.

    Returns:
        The MD5 of the written file.
    """
    with atomic_open(path) as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for image, label in members:
            _add_member(tar, image, f"images/{image.name}")
            _add_member(tar, label, f"labels/{image.stem}.txt")
    return file_md5(path)


def _add_member(tar: tarfile.TarFile, source: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = source.stat().st_size
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    with open(source, "rb") as handle:
        tar.addfile(info, handle)


def extract_shard(shard: Path, target: Path, *, md5: str) -> None:
    """Unpack a shard into ``target`` once, after checking its MD5 (a half-extracted folder never appears).

    Raises:
        ManifestError: the shard's bytes do not match the manifest's MD5.
    """
    actual = file_md5(shard)
    if actual != md5:
        raise ManifestError(f"{shard}: md5 {actual} differs from the manifest's {md5} (corrupt shard; `dvc checkout`)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with tarfile.open(shard) as tar:
            tar.extractall(staging, filter="data")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------ the train view


def use_merged(params: Params) -> bool:
    """Whether ``train`` should read the merged data: merge enabled and at least one row merged."""
    manifest = params.base.paths.merged / MANIFEST
    return params.merge.enabled and manifest.is_file() and pq.read_metadata(manifest).num_rows > 0


def materialize_view(merged: Path, view: Path) -> DatasetView:
    """Build the trainer's view of the merged data: extracted shards + image lists with repeats.

    Each shard is extracted once into ``<view>/shards/<shard md5>/{images,labels}/`` and reused by later runs
    (folders of shards no longer listed are removed). ``<view>/train.txt`` lists every ``train`` row's image path
    ``repeat`` times, ``<view>/val.txt`` every ``val`` row once; Ultralytics reads both as its ``train``/``val``
    entries and writes its ``labels.cache`` inside the view, never into the versioned data.

    Raises:
        ManifestError: the manifest is empty or missing, a shard file is missing, or its MD5 differs.
    """
    manifest_path = merged / MANIFEST
    rows = read_manifest(manifest_path)
    if not rows:
        raise ManifestError(f"{manifest_path}: no merged data (run `python -m tasks.merge` after labeling a cycle)")
    cache = view / SHARDS
    wanted = {r.shard_md5: r.shard for r in rows if r.split in (TRAIN, VAL) and r.shard and r.shard_md5}
    extracted = reused = 0
    for md5, shard in sorted(wanted.items()):
        if (cache / md5).is_dir():
            reused += 1
            continue
        source = merged / shard
        if not source.is_file():
            raise ManifestError(f"{source}: shard listed in {manifest_path} is missing (`dvc pull` / `dvc checkout`)")
        extract_shard(source, cache / md5, md5=md5)
        extracted += 1
    if cache.is_dir():
        for stale in cache.iterdir():
            if stale.name in wanted:
                continue
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink()
    lines: dict[str, list[str]] = {TRAIN: [], VAL: []}
    for row in rows:
        if row.split in lines and row.shard_md5:
            path = str((cache / row.shard_md5 / "images" / row.file).absolute())
            lines[row.split] += [path] * (row.repeat if row.split == TRAIN else 1)
    if not lines[TRAIN]:
        raise ManifestError(f"{manifest_path}: no training rows (every row is holdout or excluded)")
    train_txt = write_bytes_atomic(view / "train.txt", ("\n".join(lines[TRAIN]) + "\n").encode())
    val_txt = write_bytes_atomic(view / "val.txt", ("\n".join(lines[VAL]) + "\n").encode())
    return DatasetView(
        train=train_txt.absolute(),
        val=val_txt.absolute(),
        manifest_md5=file_md5(manifest_path),
        train_images=sum(r.split == TRAIN for r in rows),
        train_samples=len(lines[TRAIN]),
        val_images=len(lines[VAL]),
        shards_extracted=extracted,
        shards_reused=reused,
        sources=dict(Counter(r.source for r in rows if r.split in lines and r.shard_md5)),
    )
