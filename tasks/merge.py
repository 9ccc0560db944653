"""Stage ``merge``: the next training set = all historical data + every labeled production cycle, recent ones weighted.

Contract:
    inputs: the historical source-domain sets ``base.paths.train`` and ``base.paths.val`` (YOLO ``images/`` +
        ``labels/``); the validated production labels of each cycle, ``<base.paths.labels>/<cycle>/images/*`` with
        ``labels/<stem>.txt`` (quarantined files were moved out by ``validate``); the golden set
        ``<base.paths.golden>/images`` and every ``<base.paths.holdouts>/<cycle>/images`` (never trained on); the
        label stage's ``<base.paths.labels>/ledger.parquet`` when present (the production batch of each image);
    params: ``base`` (seed, classes, paths), ``merge``;
    outputs: ``<base.paths.merged>/shards/*.tar`` (append-only packs of images + labels) and
        ``<base.paths.merged>/manifest.parquet`` (one row per image, :data:`SCHEMA`); the frozen production holdout
        of each newly merged cycle, ``<base.paths.holdouts>/<cycle>/{images,labels}/``; ``<reports>/merge.json``
        (manifest hash, counts per source/cycle/split, repeat factors, notes, effective params);
    side effects: none beyond the outputs (the label folders are only read).

Which cycles: ``run(params, cycle="C")`` (flows, ``--cycle C``) merges one cycle and fails naming the folder when
``<labels>/C`` does not exist; ``cycle=None`` (``dvc repro``) merges every cycle folder under ``<labels>/`` in name
order, so ``dvc repro`` rebuilds the same shards and holdouts from the versioned label folders. Cycle names must
sort chronologically (dates, zero-padded numbers): a cycle's age is its rank from the newest.

Layout (why: DVC hashes and transfers one entry per file; 100 k loose images are slow, dvc#7607): one uncompressed
tar per (source, cycle or set, split) holding at most ``merge.shard_size`` images, members ``images/<file>`` and
``labels/<stem>.txt``, byte-reproducible (sorted members, zero mtimes and owners). A shard that the manifest lists is
never rewritten; a new cycle only adds shards, so DVC re-hashes only new files. The manifest is the commit point: it
is written last (temp file + rename) and is the only thing rewritten, because repeat factors change with age.

Rules:
    never discard: a merge only appends rows; an image that leaves its source folder stays merged.
    identity: an image is its SHA-256; a byte copy of an image already merged is skipped (noted).
    holdout: per newly merged cycle, ``round(n * merge.holdout_fraction)`` images (at least one when the fraction
        is positive and the cycle has two or more), chosen by the rank of ``sha256(seed:image sha256)``; copied to
        ``<holdouts>/<cycle>/`` and never rewritten. When that folder exists its images *are* the holdout (frozen),
        and late images of an already merged cycle go to training. ``merge.val_fraction`` of the rest (same rank)
        validate instead of train.
    leaks: any image whose bytes equal a golden or holdout image is ``split = excluded`` (kept in its shard, never
        trained on or validated on); re-checked on every merge, and sticky (a row once excluded stays excluded).
    recency: production rows of the cycle of age ``a`` (0 = newest) appear ``repeat = clamp(round(max_repeat *
        decay ** a), 1, max_repeat)`` times in the trainer's image list; historical rows ``historical_repeat`` times;
        validation rows once. :func:`materialize_view` writes that list for Ultralytics (a ``.txt`` with repeated
        paths; its label cache keeps duplicates, see ``tests/unit/test_merge.py``).
    bootstrap: with no production image merged yet the stage writes an empty manifest and no shards; ``train`` then
        keeps reading ``base.paths.train``/``val`` directly (:func:`use_merged`). An empty cycle changes nothing and
        says so in the report.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Params, load_params, stage_argparser
from tasks.contracts.yolo_labels import DatasetError, label_path_for, list_images, read_label_file
from tasks.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

STAGE = "merge"
MANIFEST = "manifest.parquet"
LEDGER = "ledger.parquet"  # the label stage's, in base.paths.labels
SHARDS = "shards"
HISTORICAL, PRODUCTION = "historical", "production"
TRAIN, VAL, HOLDOUT, EXCLUDED = "train", "val", "holdout", "excluded"
Split = Literal["train", "val", "holdout", "excluded"]
_CYCLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")  # as tasks.label accepts
_DATED_STEM = re.compile(r"^(\d{4}-\d{2}-\d{2}.*)_\d+$")  # the world's production file names: <batch>_<index>
_READ_CHUNK = 1 << 20

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


class MergeError(ValueError):
    """The inputs cannot be merged; the message names the folder or file and the fix."""


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
class _Candidate:
    """An image found in a source folder that the manifest does not hold yet."""

    image: Path
    label: Path
    sha256: str
    label_sha256: str
    n_boxes: int


@dataclass(frozen=True)
class CycleRepeat:
    """The recency weight of one production cycle."""

    cycle: str
    age: int
    weight: float
    repeat: int


@dataclass(frozen=True)
class MergeResult:
    """What the merge hands on: where the manifest is, what it holds, and what changed."""

    mode: Literal["merged", "bootstrap", "disabled"]
    cycles: tuple[str, ...]
    manifest: str
    manifest_md5: str | None
    images: int
    new_images: int
    new_shards: tuple[str, ...]
    train_images: int
    train_samples: int
    holdout_images: int
    excluded_images: int
    repeats: dict[str, int]
    notes: tuple[str, ...]
    wall_s: float


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


@dataclass
class _Plan:
    """What one merge will write: new rows per shard group, holdouts per cycle, notes."""

    groups: dict[tuple[str, str, str], list[tuple[_Candidate, Row]]] = field(default_factory=dict)
    holdouts: dict[str, list[tuple[_Candidate, Row]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ hashing


def file_sha256(path: Path) -> str:
    """Lowercase hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    """Lowercase hex MD5 of a file's bytes (what DVC records per file)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _rank_key(seed: int, sha256: str) -> str:
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ policy


def repeat_factors(cycles: Iterable[str], *, decay: float, max_repeat: int) -> dict[str, CycleRepeat]:
    """Integer repeat factor per production cycle from its age (0 = the newest by name).

    Args:
        cycles: names of the merged production cycles (any order; they sort chronologically).
        decay: weight per cycle of age, ``weight = decay ** age`` (1 = no recency preference).
        max_repeat: repeats of the newest cycle; older cycles get ``round(max_repeat * weight)``, at least 1.

    Returns:
        ``{cycle: CycleRepeat}``, empty when there is no cycle.
    """
    ordered = sorted(set(cycles))
    out = {}
    for index, cycle in enumerate(ordered):
        age = len(ordered) - 1 - index
        weight = decay**age
        repeat = min(max_repeat, max(1, math.floor(max_repeat * weight + 0.5)))
        out[cycle] = CycleRepeat(cycle=cycle, age=age, weight=round(weight, 6), repeat=repeat)
    return out


def split_counts(n: int, *, holdout_fraction: float, val_fraction: float) -> tuple[int, int]:
    """How many of ``n`` new images of a cycle go to the holdout and to validation.

    At least one holdout image when the fraction is positive and ``n >= 2``, so a small cycle still has one.
    """
    holdout = math.floor(n * holdout_fraction + 0.5)
    if holdout_fraction > 0 and n >= 2:
        holdout = max(holdout, 1)
    holdout = min(holdout, n)
    val = min(math.floor(n * val_fraction + 0.5), n - holdout)
    return holdout, val


def use_merged(params: Params) -> bool:
    """Whether ``train`` should read the merged data: merge enabled and at least one row merged."""
    manifest = params.base.paths.merged / MANIFEST
    return params.merge.enabled and manifest.is_file() and pq.read_metadata(manifest).num_rows > 0


# ------------------------------------------------------------------------------------------------ manifest


def read_manifest(path: Path) -> list[Row]:
    """Read a manifest written by this stage; an absent file is an empty manifest.

    Raises:
        MergeError: the file's columns are not :data:`SCHEMA`'s.
    """
    if not path.is_file():
        return []
    table = pq.read_table(path)
    if table.schema.names != SCHEMA.names:
        raise MergeError(f"{path}: columns {table.schema.names} differ from the merge manifest's {SCHEMA.names}")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for image, label in members:
                    _add_member(tar, image, f"images/{image.name}")
                    _add_member(tar, label, f"labels/{image.stem}.txt")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
        MergeError: the shard's bytes do not match the manifest's MD5.
    """
    actual = file_md5(shard)
    if actual != md5:
        raise MergeError(f"{shard}: md5 {actual} differs from the manifest's {md5} (corrupt shard; `dvc checkout`)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with tarfile.open(shard) as tar:
            tar.extractall(staging, filter="data")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------ reading inputs


def list_cycles(root: Path) -> list[str]:
    """Names of the cycle folders under ``root``, in name order.

    A cycle folder holds ``images/`` or ``labels/``; anything else beside them (the label stage's ``ledger.parquet``,
    ``outbox/``, ``inbox/``, hidden staging folders) is not a cycle.
    """
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and ((p / "images").is_dir() or (p / "labels").is_dir())
    )


def read_ledger_batches(labels_root: Path) -> dict[str, str]:
    """``{image sha256: production batch}`` from the label stage's ``ledger.parquet`` (empty when absent)."""
    path = labels_root / LEDGER
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path, columns=["image_sha256", "batch"])
    except (KeyError, ValueError, pa.ArrowException) as exc:
        log.warning("%s: no image_sha256/batch columns (%s); batches come from file names", path, exc)
        return {}
    return dict(zip(table["image_sha256"].to_pylist(), table["batch"].to_pylist(), strict=True))


def _folder_hashes(images_dir: Path) -> dict[str, str]:
    """``{sha256: image path}`` of every image in a folder (empty when it does not exist)."""
    if not images_dir.is_dir():
        return {}
    return {file_sha256(p): str(p) for p in list_images(images_dir)}


def _holdout_hashes(holdouts: Path, rows: Sequence[Row]) -> dict[str, str]:
    """``{sha256: path}`` of every holdout image; files the manifest already records are not read again."""
    recorded = {r.holdout_path: r.sha256 for r in rows if r.split == HOLDOUT and r.holdout_path}
    out = {}
    for cycle in list_cycles(holdouts):
        images = holdouts / cycle / "images"
        for path in list_images(images) if images.is_dir() else []:
            out[recorded.get(str(path)) or file_sha256(path)] = str(path)
    return out


def _candidates(root: Path, skip_ids: set[str], *, num_classes: int) -> list[_Candidate]:
    """Images of a YOLO set not yet merged (by file stem), hashed, with their validated labels.

    Raises:
        MergeError: an image without a label file, or a malformed label, naming the file.
    """
    images_dir = root / "images"
    if not images_dir.is_dir():
        return []
    out = []
    for image in list_images(images_dir):
        if image.stem in skip_ids:
            continue
        label = label_path_for(image, root / "labels")
        try:
            classes, _ = read_label_file(label, num_classes=num_classes)
        except DatasetError as exc:
            raise MergeError(f"{exc} (run the validate stage on {root} first)") from None
        out.append(_Candidate(image, label, file_sha256(image), file_sha256(label), len(classes)))
    return out


def _batch_of(stem: str, sha256: str, cycle: str, ledger: dict[str, str]) -> str:
    """The ledger's batch of an image, else the ``<batch>_<index>`` prefix of a world file name, else the cycle."""
    if sha256 in ledger:
        return ledger[sha256]
    match = _DATED_STEM.match(stem)
    return match.group(1) if match else cycle


# ------------------------------------------------------------------------------------------------ planning


def _plan_historical(
    params: Params, rows: list[Row], seen: dict[str, str], forbidden: dict[str, str], plan: _Plan
) -> None:
    """Add the historical images not merged yet (all of them the first time) to ``plan``."""
    paths, classes = params.base.paths, len(params.base.classes)
    for set_name, root, split in ((TRAIN, paths.train, TRAIN), (VAL, paths.val, VAL)):
        if not (root / "images").is_dir():
            raise MergeError(f"{root / 'images'}: historical {set_name} set missing (base.paths.{set_name})")
        known = {r.image_id for r in rows if r.source == HISTORICAL and r.batch == set_name}
        duplicates = 0
        for cand in _candidates(root, known, num_classes=classes):
            if cand.sha256 in seen:
                duplicates += 1
                continue
            seen[cand.sha256] = f"{root}/images/{cand.image.name}"
            row_split = EXCLUDED if cand.sha256 in forbidden else split
            row = Row(
                cand.image.stem, cand.image.name, cand.sha256, cand.label_sha256, cand.n_boxes,
                HISTORICAL, set_name, None, row_split,
            )  # fmt: skip
            plan.groups.setdefault((HISTORICAL, set_name, split), []).append((cand, row))
        if duplicates:
            plan.notes.append(f"historical {set_name}: {duplicates} byte copies of merged images skipped")


def _plan_cycle(
    params: Params,
    cycle: str,
    rows: list[Row],
    seen: dict[str, str],
    forbidden: dict[str, str],
    plan: _Plan,
    ledger: dict[str, str],
) -> None:
    """Split a cycle's new images into holdout / val / train (or excluded) and add them to ``plan``."""
    paths, cfg = params.base.paths, params.merge
    root = paths.labels / cycle
    known = {r.image_id for r in rows if r.cycle == cycle}
    fresh = []
    duplicates = 0
    for cand in _candidates(root, known, num_classes=len(params.base.classes)):
        if cand.sha256 in seen:
            duplicates += 1
            continue
        seen[cand.sha256] = f"{root}/images/{cand.image.name}"
        fresh.append(cand)
    if duplicates:
        plan.notes.append(f"cycle {cycle}: {duplicates} byte copies of merged images skipped")
    if not fresh:
        if not known:
            plan.notes.append(f"cycle {cycle}: no labeled images in {root / 'images'}; merged data unchanged")
        return

    holdout_dir = paths.holdouts / cycle
    frozen = _folder_hashes(holdout_dir / "images") if holdout_dir.is_dir() else None
    seed = cfg.seed if cfg.seed is not None else params.base.seed
    leaked = [c for c in fresh if c.sha256 in forbidden and (frozen is None or c.sha256 not in frozen)]
    pool = sorted((c for c in fresh if c not in leaked), key=lambda c: _rank_key(seed, c.sha256))
    if frozen is None:
        n_holdout, n_val = split_counts(len(pool), holdout_fraction=cfg.holdout_fraction, val_fraction=cfg.val_fraction)
        holdout, rest = pool[:n_holdout], pool[n_holdout:]
    else:  # the holdout was written before: it stays exactly as it is, late images go to training
        holdout = [c for c in pool if c.sha256 in frozen]
        rest = [c for c in pool if c.sha256 not in frozen]
        n_val = split_counts(len(rest), holdout_fraction=0.0, val_fraction=cfg.val_fraction)[1]
        if known:
            plan.notes.append(f"cycle {cycle}: {len(rest)} late images merged into training (holdout frozen)")
    if leaked:
        plan.notes.append(
            f"cycle {cycle}: {len(leaked)} images equal a golden/holdout image and are excluded from training: "
            + ", ".join(sorted(c.image.name for c in leaked)[:10])
        )

    def _row(cand: _Candidate, split: str, **extra: Any) -> Row:
        batch = _batch_of(cand.image.stem, cand.sha256, cycle, ledger)
        return Row(
            cand.image.stem, cand.image.name, cand.sha256, cand.label_sha256, cand.n_boxes,
            PRODUCTION, batch, cycle, split, **extra,
        )  # fmt: skip

    for cand in holdout:
        where = str(holdout_dir / "images" / cand.image.name)
        plan.holdouts.setdefault(cycle, []).append((cand, _row(cand, HOLDOUT, holdout_path=where, repeat=0)))
    if frozen is None:  # written even when empty: its existence is what freezes the cycle's holdout
        plan.holdouts.setdefault(cycle, [])
    for index, cand in enumerate(rest):
        split = VAL if index < n_val else TRAIN
        plan.groups.setdefault((PRODUCTION, cycle, split), []).append((cand, _row(cand, split)))
    for cand in leaked:
        plan.groups.setdefault((PRODUCTION, cycle, TRAIN), []).append((cand, _row(cand, EXCLUDED, repeat=0)))


# ------------------------------------------------------------------------------------------------ writing


def _write_shards(merged: Path, rows: list[Row], plan: _Plan, shard_size: int) -> tuple[list[Row], list[str]]:
    """Pack the planned rows into new shards after the existing ones of their group; return rows and shard names."""
    existing = {r.shard for r in rows if r.shard}
    out, names = [], []
    for (source, group, split), items in sorted(plan.groups.items()):
        stem = f"{source}-{group}-{split}" if source == PRODUCTION else f"{source}-{group}"
        taken = {s for s in existing if re.fullmatch(rf"{SHARDS}/{re.escape(stem)}-\d{{5}}\.tar", s)}
        ordered = sorted(items, key=lambda item: item[1].image_id)
        for start in range(0, len(ordered), shard_size):
            chunk = ordered[start : start + shard_size]
            index = len(taken)
            name = f"{SHARDS}/{stem}-{index:05d}.tar"
            taken.add(name)
            path = merged / name
            if path.exists():  # left by a merge that failed before its manifest: not referenced, so replaceable
                log.warning("%s: not in the manifest (an interrupted merge); rewriting it", path)
            md5 = write_shard(path, [(cand.image, cand.label) for cand, _ in chunk])
            names.append(name)
            out += [replace(row, shard=name, shard_md5=md5) for _, row in chunk]
    return out, names


def _write_holdout(holdouts: Path, cycle: str, items: Sequence[tuple[_Candidate, Row]]) -> None:
    """Copy a cycle's holdout into ``<holdouts>/<cycle>/`` (staging folder + rename); never over an existing one."""
    target = holdouts / cycle
    if target.exists():
        return
    holdouts.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=holdouts, prefix=f".{cycle}."))
    try:
        for name in ("images", "labels"):
            (staging / name).mkdir()
        for cand, _ in items:
            shutil.copy2(cand.image, staging / "images" / cand.image.name)
            shutil.copy2(cand.label, staging / "labels" / f"{cand.image.stem}.txt")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _finalise(rows: list[Row], forbidden: dict[str, str], params: Params) -> tuple[list[Row], dict[str, CycleRepeat]]:
    """Apply the leak rule and the recency repeats to every row (both can change as cycles are added)."""
    recency = params.merge.recency
    factors = repeat_factors(
        (r.cycle for r in rows if r.source == PRODUCTION and r.cycle),
        decay=recency.decay,
        max_repeat=recency.max_repeat,
    )
    out = []
    for row in rows:
        split = row.split
        if split in (TRAIN, VAL) and row.sha256 in forbidden:
            split = EXCLUDED
        if split == TRAIN:
            repeat = factors[row.cycle].repeat if row.cycle else recency.historical_repeat
        else:
            repeat = 1 if split == VAL else 0
        out.append(replace(row, split=split, repeat=repeat))
    return out, factors


# ------------------------------------------------------------------------------------------------ the stage


def merge(params: Params, *, cycle: str | None = None) -> tuple[MergeResult, dict[str, Any]]:
    """Merge one cycle (or every cycle folder) into the shards + manifest; see the module contract.

    Returns:
        The result record and the report payload (counts per origin, repeat factors, notes).

    Raises:
        FileNotFoundError: ``cycle`` given and ``<labels>/<cycle>`` does not exist (names the folder and the cycles
            that do).
        MergeError: a bad cycle name, a missing historical or golden set, or an image without a valid label.
    """
    start = time.perf_counter()
    paths, cfg = params.base.paths, params.merge
    merged, manifest_path = paths.merged, paths.merged / MANIFEST
    if cycle is not None:
        if not _CYCLE_NAME.match(cycle):
            raise MergeError(f"cycle {cycle!r}: names are letters, digits, '.', '_' and '-' (they name files)")
        if not (paths.labels / cycle).is_dir():
            found = list_cycles(paths.labels)
            raise FileNotFoundError(
                f"{paths.labels / cycle}: cycle folder not found (cycles under {paths.labels}: {found or 'none'}); "
                "run the label and validate stages for it first"
            )
        cycles = [cycle]
    else:
        cycles = list_cycles(paths.labels)
        bad = [c for c in cycles if not _CYCLE_NAME.match(c)]
        if bad:
            raise MergeError(f"{paths.labels}: cycle folder names {bad} are not file-safe (letters, digits, . _ -)")

    rows = read_manifest(manifest_path)
    merged.mkdir(parents=True, exist_ok=True)  # both are DVC outputs of this stage: they exist after every run
    paths.holdouts.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        note = "merge.enabled is false: nothing merged, train reads base.paths.train/val"
        return _result("disabled", cycles, manifest_path, rows, [], [], {}, [note], start, params)

    golden = paths.golden / "images"
    if not golden.is_dir():
        raise MergeError(f"{golden}: golden set missing (base.paths.golden); it is needed to keep it out of training")
    forbidden = _folder_hashes(golden) | _holdout_hashes(paths.holdouts, rows)

    plan = _Plan()
    ledger = read_ledger_batches(paths.labels) if cycles else {}
    seen = {r.sha256: r.image_id for r in rows}
    # historical first, so that a production byte copy of a historical image is the skipped duplicate; skipped
    # (not even hashed) while no cycle has an image, which keeps a bootstrap run cheap
    if rows or any(list_images(paths.labels / c / "images") for c in cycles if (paths.labels / c / "images").is_dir()):
        _plan_historical(params, rows, seen, forbidden, plan)
    for name in cycles:
        _plan_cycle(params, name, rows, seen, forbidden, plan, ledger)
    has_production = any(r.source == PRODUCTION for r in rows) or any(k[0] == PRODUCTION for k in plan.groups)
    if not has_production and not any(plan.holdouts.values()):
        if not manifest_path.is_file():
            write_bytes_atomic(manifest_path, manifest_bytes([]))
        (merged / SHARDS).mkdir(parents=True, exist_ok=True)
        plan.notes.append("no production labels merged yet: train reads base.paths.train/val (bootstrap)")
        return _result("bootstrap", cycles, manifest_path, rows, [], [], {}, plan.notes, start, params)

    new_rows, new_shards = _write_shards(merged, rows, plan, cfg.shard_size)
    for name, items in sorted(plan.holdouts.items()):
        _write_holdout(paths.holdouts, name, items)
        forbidden |= {cand.sha256: str(row.holdout_path) for cand, row in items}
        new_rows += [row for _, row in items]
    final, factors = _finalise(rows + new_rows, forbidden, params)
    data = manifest_bytes(final)
    if not manifest_path.is_file() or manifest_path.read_bytes() != data:
        write_bytes_atomic(manifest_path, data)
    if not new_rows:
        plan.notes.append("nothing new to merge: shards and manifest unchanged")
    return _result("merged", cycles, manifest_path, final, new_rows, new_shards, factors, plan.notes, start, params)


def _result(
    mode: Literal["merged", "bootstrap", "disabled"],
    cycles: Sequence[str],
    manifest_path: Path,
    rows: Sequence[Row],
    new_rows: Sequence[Row],
    new_shards: Sequence[str],
    factors: dict[str, CycleRepeat],
    notes: Sequence[str],
    start: float,
    params: Params,
) -> tuple[MergeResult, dict[str, Any]]:
    for note in notes:
        log.info("%s", note)
    result = MergeResult(
        mode=mode,
        cycles=tuple(cycles),
        manifest=str(manifest_path),
        manifest_md5=file_md5(manifest_path) if manifest_path.is_file() else None,
        images=len(rows),
        new_images=len(new_rows),
        new_shards=tuple(new_shards),
        train_images=sum(r.split == TRAIN for r in rows),
        train_samples=sum(r.repeat for r in rows if r.split == TRAIN),
        holdout_images=sum(r.split == HOLDOUT for r in rows),
        excluded_images=sum(r.split == EXCLUDED for r in rows),
        repeats={name: f.repeat for name, f in factors.items()},
        notes=tuple(notes),
        wall_s=round(time.perf_counter() - start, 3),
    )
    counts = Counter((r.source, r.cycle or r.batch, r.split) for r in rows)
    report = asdict(result) | {
        "counts": [{"source": s, "cycle": c, "split": sp, "images": n} for (s, c, sp), n in sorted(counts.items())],
        "recency": [asdict(f) for f in factors.values()],
        "shards": len({r.shard for r in rows if r.shard}),
        "params": {"base": params.base.model_dump(mode="json"), STAGE: params.merge.model_dump(mode="json")},
    }
    return result, report


def run(params: Params, *, cycle: str | None = None) -> MergeResult:
    """Merge ``cycle`` (``None``: every cycle folder under ``base.paths.labels``) and write ``reports/merge.json``."""
    result, report = merge(params, cycle=cycle)
    write_json_atomic(params.base.paths.reports / f"{STAGE}.json", report)
    log.info(
        "merge %s: %d images (%d new, %d new shards), %d train samples, %d holdout, repeats %s",
        result.mode,
        result.images,
        result.new_images,
        len(result.new_shards),
        result.train_samples,
        result.holdout_images,
        result.repeats,
    )
    return result


# ------------------------------------------------------------------------------------------------ the train view


def materialize_view(merged: Path, view: Path) -> DatasetView:
    """Build the trainer's view of the merged data: extracted shards + image lists with repeats.

    Each shard is extracted once into ``<view>/shards/<shard md5>/{images,labels}/`` and reused by later runs
    (folders of shards no longer listed are removed). ``<view>/train.txt`` lists every ``train`` row's image path
    ``repeat`` times, ``<view>/val.txt`` every ``val`` row once; Ultralytics reads both as its ``train``/``val``
    entries and writes its ``labels.cache`` inside the view, never into the versioned data.

    Raises:
        MergeError: the manifest is empty or missing, a shard file is missing, or its MD5 differs.
    """
    manifest_path = merged / MANIFEST
    rows = read_manifest(manifest_path)
    if not rows:
        raise MergeError(f"{manifest_path}: no merged data (run `python -m tasks.merge` after labeling a cycle)")
    cache = view / SHARDS
    wanted = {r.shard_md5: r.shard for r in rows if r.split in (TRAIN, VAL) and r.shard and r.shard_md5}
    extracted = reused = 0
    for md5, shard in sorted(wanted.items()):
        if (cache / md5).is_dir():
            reused += 1
            continue
        source = merged / shard
        if not source.is_file():
            raise MergeError(f"{source}: shard listed in {manifest_path} is missing (`dvc pull` / `dvc checkout`)")
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
        raise MergeError(f"{manifest_path}: no training rows (every row is holdout or excluded)")
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
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.merge [--params P] [--cycle C]`` (no ``--cycle``: every cycle under base.paths.labels)."""
    parser = stage_argparser(STAGE, __doc__)
    parser.add_argument("--cycle", default=None, help="merge this cycle only (default: every cycle folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(load_params(args.params), cycle=args.cycle)
    print(json.dumps({"mode": result.mode, "images": result.images, "manifest_md5": result.manifest_md5}))


if __name__ == "__main__":
    main()
