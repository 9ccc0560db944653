"""Stage ``merge``: the next training set = all historical data + every labeled production cycle, recent ones weighted.

Contract:
    inputs: the historical source-domain sets ``base.paths.train`` and ``base.paths.val`` (YOLO ``images/`` +
        ``labels/``); the validated production labels of each cycle, ``<base.paths.labels>/<cycle>/images/*`` with
        ``labels/<stem>.txt`` (quarantined files were moved out by ``validate``); the golden set
        ``<base.paths.golden>/images`` and every ``<base.paths.holdouts>/<cycle>/images`` (never trained on); the
        label stage's ``<base.paths.labels>/ledger.parquet`` when present (the production batch of each image);
    params: ``base`` (seed, classes, paths), ``merge``;
    outputs: ``<base.paths.merged>/shards/*.tar`` (append-only packs of images + labels) and
        ``<base.paths.merged>/manifest.parquet`` (one row per image); both owned by
        :mod:`tasks.contracts.merged_manifest`; the frozen production holdout of each newly merged cycle,
        ``<base.paths.holdouts>/<cycle>/{images,labels}/``; ``<reports>/merge.json``
        (:class:`~tasks.contracts.reports.merge.MergeReport`: manifest hash, counts per source/cycle/split, repeat
        factors, notes, and the params stamp);
    side effects: none beyond the outputs (the label folders are only read).

Which cycles: ``run(params, cycle="C")`` (flows, ``--cycle C``) merges one cycle and fails naming the folder when
``<labels>/C`` does not exist; ``cycle=None`` (``dvc repro``) merges every cycle folder under ``<labels>/`` in name
order, so ``dvc repro`` rebuilds the same shards and holdouts from the versioned label folders. A cycle's age is its
rank from the newest: by the label ledger's first ``queued_at`` of each cycle when the ledger knows every merged cycle,
else in natural name order (``c9`` before ``c10``; the default UTC-timestamp names sort either way).

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
        validation rows once. ``merged_manifest.materialize_view`` writes that list for Ultralytics (a ``.txt`` with
        repeated paths; its label cache keeps duplicates, see ``tests/unit/test_merge.py``).
    bootstrap: with no production image merged yet the stage writes an empty manifest and no shards; ``train`` then
        keeps reading ``base.paths.train``/``val`` directly (``merged_manifest.use_merged``). An empty cycle changes
        nothing and says so in the report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts.ledger import read_cycle_starts, read_ledger_batches
from tasks.contracts.merged_forget import next_shard_name
from tasks.contracts.merged_manifest import (
    EXCLUDED,
    HISTORICAL,
    HOLDOUT,
    MANIFEST,
    PRODUCTION,
    SHARDS,
    TRAIN,
    VAL,
    ManifestError,
    Row,
    manifest_bytes,
    read_manifest,
    write_shard,
)
from tasks.contracts.names import CYCLE_NAME_RULE, check_cycle_name, is_cycle_name
from tasks.contracts.reports import write_report
from tasks.contracts.reports.merge import CycleRepeat, MergeMode, MergeReport, MergeResult, SplitCount
from tasks.contracts.yolo_labels import DatasetError, label_path_for, list_images, read_label_file
from tasks.core.hashing import file_md5, file_sha256
from tasks.decisions.recency import repeat_factors, split_counts
from tasks.io import write_bytes_atomic

log = logging.getLogger(__name__)

STAGE = "merge"
_DATED_STEM = re.compile(r"^(\d{4}-\d{2}-\d{2}.*)_\d+$")  # the world's production file names: <batch>_<index>


class MergeError(ManifestError):
    """The inputs cannot be merged; the message names the folder or file and the fix."""


class CycleNotFoundError(MergeError, FileNotFoundError):
    """``--cycle C`` names a cycle without a folder under ``base.paths.labels``."""


@dataclass(frozen=True)
class _Candidate:
    """An image found in a source folder that the manifest does not hold yet."""

    image: Path
    label: Path
    sha256: str
    label_sha256: str
    n_boxes: int


@dataclass
class _Plan:
    """What one merge will write: new rows per shard group, holdouts per cycle, notes."""

    groups: dict[tuple[str, str, str], list[tuple[_Candidate, Row]]] = field(default_factory=dict)
    holdouts: dict[str, list[tuple[_Candidate, Row]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _rank_key(seed: int, sha256: str) -> str:
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


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
        ordered = sorted(items, key=lambda item: item[1].image_id)
        for start in range(0, len(ordered), shard_size):
            chunk = ordered[start : start + shard_size]
            name = next_shard_name(stem, existing)  # after the highest index: forget leaves gaps
            existing.add(name)
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
        started=read_cycle_starts(params.base.paths.labels),
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


def select_cycles(labels: Path, cycle: str | None) -> list[str]:
    """``[cycle]`` after checking its name and folder, or (``None``) every cycle folder under ``labels``.

    Raises:
        CycleNotFoundError: ``cycle`` has no folder under ``labels`` (names the cycles that do).
        MergeError: a name that is not a cycle name.
    """
    if cycle is None:
        cycles = list_cycles(labels)
        bad = [c for c in cycles if not is_cycle_name(c)]
        if bad:
            raise MergeError(f"{labels}: cycle folder names {bad} are not cycle names ({CYCLE_NAME_RULE})")
        return cycles
    check_cycle_name(cycle, error=MergeError)
    if not (labels / cycle).is_dir():
        found = list_cycles(labels)
        raise CycleNotFoundError(
            f"{labels / cycle}: cycle folder not found (cycles under {labels}: {found or 'none'}); "
            "run the label and validate stages for it first"
        )
    return [cycle]


def merge(params: Params, *, cycle: str | None = None) -> MergeReport:
    """Merge one cycle (or every cycle folder) into the shards + manifest; see the module contract.

    Returns:
        The result with the manifest's breakdown (counts per origin, repeat factors, notes).

    Raises:
        CycleNotFoundError: ``cycle`` given and ``<labels>/<cycle>`` does not exist (names the folder and the
            cycles that do).
        MergeError: a bad cycle name, a missing historical or golden set, or an image without a valid label.
    """
    start = time.perf_counter()
    paths, cfg = params.base.paths, params.merge
    merged, manifest_path = paths.merged, paths.merged / MANIFEST
    cycles = select_cycles(paths.labels, cycle)
    rows = read_manifest(manifest_path)
    merged.mkdir(parents=True, exist_ok=True)  # both are DVC outputs of this stage: they exist after every run
    paths.holdouts.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        note = "merge.enabled is false: nothing merged, train reads base.paths.train/val"
        return _result("disabled", cycles, manifest_path, rows, [], [], {}, [note], start)

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
        return _result("bootstrap", cycles, manifest_path, rows, [], [], {}, plan.notes, start)

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
    return _result("merged", cycles, manifest_path, final, new_rows, new_shards, factors, plan.notes, start)


def _result(
    mode: MergeMode,
    cycles: Sequence[str],
    manifest_path: Path,
    rows: Sequence[Row],
    new_rows: Sequence[Row],
    new_shards: Sequence[str],
    factors: dict[str, CycleRepeat],
    notes: Sequence[str],
    start: float,
) -> MergeReport:
    for note in notes:
        log.info("%s", note)
    counts = Counter((r.source, r.cycle or r.batch, r.split) for r in rows)
    return MergeReport(
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
        counts=tuple(SplitCount(s, c, sp, n) for (s, c, sp), n in sorted(counts.items())),
        recency=tuple(factors.values()),
        shards=len({r.shard for r in rows if r.shard}),
    )


def run(params: Params, *, cycle: str | None = None) -> MergeResult:
    """Merge ``cycle`` (``None``: every cycle folder under ``base.paths.labels``) and write ``reports/merge.json``.

    Returns:
        The :class:`~tasks.contracts.reports.merge.MergeReport` written (a ``MergeResult``).
    """
    result = merge(params, cycle=cycle)
    write_report(params.base.paths.reports, STAGE, result, params)
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


def main(argv: list[str] | None = None) -> MergeResult:
    """``python -m tasks.merge [--params P ...] [--cycle C]`` (no ``--cycle``: every cycle under base.paths.labels)."""

    def _arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cycle", default=None, help="merge this cycle only (default: every cycle folder)")

    def _summary(result: MergeResult) -> str:
        return json.dumps({"mode": result.mode, "images": result.images, "manifest_md5": result.manifest_md5})

    merged: MergeResult = stage_main(
        STAGE,
        __doc__,
        lambda params, args: run(params, cycle=args.cycle),
        arguments=_arguments,
        summary=_summary,
        argv=argv,
    )
    return merged


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
