"""Taking images out of the merged data (the forget stage): a new shard generation without them.

Beside :mod:`tasks.contracts.merged_manifest` (the manifest and shard formats, the one shard writer), which this
uses: shards are named by :func:`next_shard_name` here and in the merge stage, so a shard written again after a
forget never takes the name of one the manifest lists.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from tasks.config import Params
from tasks.contracts.merged_manifest import MANIFEST, SHARDS, extract_shard, manifest_bytes, read_manifest, write_shard
from tasks.io import write_bytes_atomic

log = logging.getLogger(__name__)


def next_shard_name(stem: str, existing: set[str]) -> str:
    """``shards/<stem>-<index>.tar`` with the index after the highest one of ``stem`` in ``existing``."""
    taken = [re.fullmatch(rf"{SHARDS}/{re.escape(stem)}-(\d{{5}})\.tar", s) for s in existing]
    index = max((int(m.group(1)) + 1 for m in taken if m), default=0)
    return f"{SHARDS}/{stem}-{index:05d}.tar"


@dataclass(frozen=True)
class Forgotten:
    """What :func:`forget_images` changed in the merged data (manifest paths relative to ``base.paths.merged``)."""

    rows: tuple[str, ...] = ()
    new_shards: tuple[str, ...] = ()
    deleted_shards: tuple[str, ...] = ()
    holdout_files: tuple[str, ...] = ()


def forget_images(params: Params, sha256s: set[str]) -> Forgotten:
    """Take images out of the merged data: the one exception to "never discard" (a privacy request).

    Each shard holding one of them is written again without it, as a new shard (the next index of its group,
    through :func:`write_shard`); the manifest, the commit point, then names the new shards, and only after that
    are the old shards deleted. Holdout copies (``<holdouts>/<cycle>/{images,labels}``) are deleted. Every other
    image keeps its bytes, row and split. A crash leaves the old manifest and shards (a re-run does it again) or
    the new manifest with unreferenced old shards (a re-run of the forget stage deletes them).
    """
    merged, manifest_path = params.base.paths.merged, params.base.paths.merged / MANIFEST
    rows = read_manifest(manifest_path)
    gone = [r for r in rows if r.sha256 in sha256s]
    if not gone:
        return Forgotten()
    kept = [r for r in rows if r.sha256 not in sha256s]
    existing = {r.shard for r in rows if r.shard}
    affected = {r.shard: r.shard_md5 for r in gone if r.shard and r.shard_md5}
    moved: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(dir=merged, prefix=".forget.") as tmp:
        for old, md5 in sorted(affected.items()):
            unpacked = Path(tmp) / md5
            extract_shard(merged / old, unpacked, md5=md5)
            stays = sorted((r for r in kept if r.shard == old), key=lambda r: r.image_id)
            if not stays:
                continue
            name = next_shard_name(Path(old).name.rsplit("-", 1)[0], existing)
            existing.add(name)
            members = [(unpacked / "images" / r.file, unpacked / "labels" / f"{Path(r.file).stem}.txt") for r in stays]
            moved[old] = (name, write_shard(merged / name, members))
    final = [replace(r, shard=moved[r.shard][0], shard_md5=moved[r.shard][1]) if r.shard in moved else r for r in kept]
    write_bytes_atomic(manifest_path, manifest_bytes(final))
    for old in sorted(affected):
        (merged / old).unlink(missing_ok=True)
    holdout_files = []
    for row in gone:
        if row.holdout_path:
            image = Path(row.holdout_path)
            for path in (image, image.parent.parent / "labels" / f"{image.stem}.txt"):
                if path.is_file():
                    path.unlink()
                    holdout_files.append(str(path))
    log.info("merge: forgot %d row(s); shards %s -> %s", len(gone), sorted(affected), [n for n, _ in moved.values()])
    return Forgotten(
        rows=tuple(f"{r.image_id} ({r.split})" for r in gone),
        new_shards=tuple(n for n, _ in moved.values()),
        deleted_shards=tuple(sorted(affected)),
        holdout_files=tuple(holdout_files),
    )
