"""DVC at scale: version, push and pull many world images to an S3 remote (moto_server on 127.0.0.1).

Two layouts of the same images (PNG at the world's ``image_size``, each with its YOLO label file):

- ``sharded``: the project's merged layout, ``merge.shard_size`` images per uncompressed tar
  (:func:`tasks.contracts.merged_manifest.write_shard`), one ``dvc add`` of the shard folder: one object per shard.
- ``flat``: the same images and labels as loose files in one ``dvc add``-ed folder: one object per file, the
  layout of dvc#7607 (600 k files, 1.7 GB: 6-8 h per push or pull to S3).

Per layout, in a fresh git + DVC repo in a temp folder (cache type ``hardlink``, ``--cache-type``): ``dvc add``,
``dvc push`` (through :func:`tasks.adapters.dvc.push`: the S3 remote from ``VISIONLOOP_DVC_REMOTE`` and the
endpoint in ``.dvc/config.local``), a no-op re-push, then a ``git clone`` with an empty cache and
:func:`tasks.adapters.dvc.pull`, and every pulled file's MD5 compared with what was added. The remote is reset
between layouts; the moto_server's peak RSS is read from ``/proc``.

Images: ``--distinct`` scenes are rendered by :func:`tasks.sim.sets.render_set` with the world's source settings;
image ``i`` beyond those is scene ``i mod distinct`` with a PNG ``tEXt`` chunk naming ``i`` (same pixels, distinct
bytes and content hash: checked). Prints a table and writes ``reports/benchmarks/dvc_scale.json``.

    python benchmarks/dvc_scale.py [--images 100000] [--flat-images 10000] [--distinct 2000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.adapters import dvc, s3
from tasks.config import Params, load_params
from tasks.contracts.merged_manifest import write_shard
from tasks.core.host import cpu
from tasks.env import apply_env
from tasks.io import write_json_atomic
from tasks.sim.sets import render_set, set_seed

PROJECT_ROOT = Path(__file__).resolve().parent.parent

GOAL_S = 180.0  # issue 14: <= 3 min each way for 100 k images
ANCHOR = "dvc#7607: 600 k files (1.7 GB) to S3, 6-8 h per push or pull"


# ------------------------------------------------------------------ images


@dataclass(frozen=True)
class Scenes:
    """The rendered distinct scenes: PNG bytes and label text, index-aligned."""

    pngs: list[bytes]
    labels: list[str]


def render_scenes(params: Params, n: int, root: Path) -> Scenes:
    """Render ``n`` distinct world scenes (source settings, the world's image size) and read them back."""
    world = params.world
    render_set(
        world.source,
        n=n,
        classes=params.base.classes,
        image_size=world.image_size,
        seed=set_seed(params.base.seed, "dvc-scale"),
        prefix="scene",
        images_dir=root / "images",
        labels_dir=root / "labels",
    )
    stems = [f"scene_{i:06d}" for i in range(n)]
    scenes = Scenes(
        pngs=[(root / "images" / f"{s}.png").read_bytes() for s in stems],
        labels=[(root / "labels" / f"{s}.txt").read_text() for s in stems],
    )
    shutil.rmtree(root)
    return scenes


def png_variant(png: bytes, index: int) -> bytes:
    """``png`` with a ``tEXt`` chunk ``visionloop-copy=<index>`` after IHDR: same pixels, distinct bytes."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG starting with IHDR")
    ihdr_end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    data = b"visionloop-copy\x00" + str(index).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def image_bytes(scenes: Scenes, index: int) -> tuple[bytes, str]:
    """Image ``index``'s PNG bytes and label text (a rendered scene, or a tagged copy of one)."""
    k = index % len(scenes.pngs)
    png = scenes.pngs[k] if index < len(scenes.pngs) else png_variant(scenes.pngs[k], index)
    return png, scenes.labels[k]


def write_loose(scenes: Scenes, indices: range, folder: Path) -> set[str]:
    """``folder/images/img_<i>.png`` and ``folder/labels/img_<i>.txt`` for each index; the images' MD5s."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    hashes = set()
    for i in indices:
        png, label = image_bytes(scenes, i)
        hashes.add(hashlib.md5(png, usedforsecurity=False).hexdigest())
        (folder / "images" / f"img_{i:07d}.png").write_bytes(png)
        (folder / "labels" / f"img_{i:07d}.txt").write_text(label)
    return hashes


def write_sharded(scenes: Scenes, n: int, shard_size: int, folder: Path, scratch: Path) -> set[str]:
    """``folder/shard_<k>.tar``: ``shard_size`` images + labels each, packed by the merge stage's ``write_shard``.

    Returns:
        The images' MD5s.
    """
    folder.mkdir(parents=True, exist_ok=True)
    hashes: set[str] = set()
    for k, start in enumerate(range(0, n, shard_size)):
        chunk = range(start, min(n, start + shard_size))
        hashes |= write_loose(scenes, chunk, scratch)
        members = [(scratch / "images" / f"img_{i:07d}.png", scratch / "labels" / f"img_{i:07d}.txt") for i in chunk]
        write_shard(folder / f"shard_{k:05d}.tar", members)
        shutil.rmtree(scratch)
    return hashes


def tree_md5(root: Path) -> dict[str, str]:
    """``{relative path: md5}`` of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ the repo


def sh(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {cwd}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def init_repo(root: Path, cache_type: str) -> None:
    root.mkdir(parents=True)
    sh("git", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=root)
    sh(sys.executable, "-m", "dvc", "config", "cache.type", cache_type, cwd=root)
    sh(sys.executable, "-m", "dvc", "config", "core.autostage", "true", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "init", cwd=root)


def dvc_add(root: Path, target: str) -> float:
    from dvc.repo import Repo

    start = time.perf_counter()
    with Repo(str(root)) as repo:
        repo.add(str(root / target))
    return time.perf_counter() - start


def moto_pid(endpoint: str) -> int | None:
    """The moto_server process listening on ``endpoint``'s port (found by its command line)."""
    port = endpoint.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"moto_server") for a in args) and port.encode() in args:
                return int(proc.name)
    return None


def rss_mib(pid: int | None) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB."""
    if pid is None:
        return {}
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text)[1]) / 1024 for k in ("VmRSS", "VmHWM")}  # type: ignore[index]


def run_layout(layout: str, n: int, scenes: Scenes, work: Path, *, shard_size: int, cache_type: str) -> dict[str, Any]:
    """One layout end to end; returns its timings, object count, bytes and the byte-identity check."""
    repo, clone = work / f"{layout}-repo", work / f"{layout}-clone"
    init_repo(repo, cache_type)
    start = time.perf_counter()
    if layout == "sharded":
        image_hashes = write_sharded(scenes, n, shard_size, repo / "data", work / "scratch")
    else:
        image_hashes = write_loose(scenes, range(n), repo / "data")
    prepare_s = time.perf_counter() - start
    added = tree_md5(repo / "data")
    size = sum((repo / "data" / p).stat().st_size for p in added)
    add_s = dvc_add(repo, "data")
    pushed = dvc.push(repo)
    if not pushed.ok:
        raise RuntimeError(f"{layout}: push failed: {pushed.error}")
    again = dvc.push(repo)
    sh("git", "add", "data.dvc", ".gitignore", cwd=repo)
    sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "data", cwd=repo)
    sh("git", "clone", "-q", str(repo), str(clone), cwd=work)
    shutil.rmtree(repo)  # the remote is all the clone has: free the disk before the second copy
    pulled = dvc.pull(clone)
    if not pulled.ok:
        raise RuntimeError(f"{layout}: pull failed: {pulled.error}")
    got = tree_md5(clone / "data")
    shutil.rmtree(clone)
    return {
        "layout": layout,
        "images": n,
        "files": len(added),
        "distinct_image_hashes": len(image_hashes),
        "bytes": size,
        "objects_pushed": pushed.objects,
        "prepare_s": round(prepare_s, 2),
        "add_s": round(add_s, 2),
        "push_s": round(pushed.seconds, 2),
        "repush_noop_s": round(again.seconds, 2),
        "repush_objects": again.objects,
        "pull_s": round(pulled.seconds, 2),
        "byte_identical": got == added,
    }


@contextmanager
def remote(work: Path) -> Iterator[tuple[Any, int | None]]:
    """A moto_server (tests/s3_server.py) with a bucket; ``VISIONLOOP_DVC_REMOTE`` and the client env set here."""
    s3_server = importlib.import_module("tests.s3_server").s3_server  # a test fixture: not type-checked

    with s3_server(work / "moto") as server:
        saved = dict(os.environ)
        os.environ.update(server.env)
        try:
            yield server, moto_pid(server.endpoint_url)
        finally:
            os.environ.clear()
            os.environ.update(saved)


def host() -> dict[str, Any]:
    """The CPU (model name), its headline ISA, its vector/matrix extensions (AVX2, AVX-512, VNNI, AMX) and the core
    count (:func:`tasks.core.host.cpu`): what every benchmark table states."""
    return cpu()


def run(
    params: Params,
    *,
    images: int,
    flat_images: int,
    distinct: int,
    layouts: list[str],
    cache_type: str = "hardlink",
    root: Path | None = None,
) -> dict[str, Any]:
    """The whole benchmark; returns the report (see the module docstring)."""
    unique_bucket = importlib.import_module("tests.s3_server").unique_bucket

    apply_env()
    os.environ["DVC_NO_ANALYTICS"] = "1"
    load_before = os.getloadavg()
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dvc-scale-", dir=root) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        scenes = render_scenes(params, min(distinct, max(images, flat_images)), work / "scenes")
        render_s = time.perf_counter() - t0
        rows = []
        with remote(work) as (server, pid):
            for layout in layouts:
                bucket = unique_bucket("dvc-scale")
                s3.ensure_bucket(s3.connect(), bucket)
                os.environ[dvc.REMOTE_ENV] = f"s3://{bucket}/remote"
                n = images if layout == "sharded" else flat_images
                row = run_layout(layout, n, scenes, work, shard_size=params.merge.shard_size, cache_type=cache_type)
                row["moto_rss_mib"] = rss_mib(pid)
                server.reset()  # drop the objects: the next layout starts from an empty remote
                rows.append(row)
                print_row(row)
    for row in rows:
        per_image = {k: row[k] / row["images"] for k in ("add_s", "push_s", "pull_s")}
        row["at_100k_s"] = {k: round(v * 100_000, 1) for k, v in per_image.items()}
        # copies share their scene's label text, so the flat layout stores fewer label objects than real data would
        row["ms_per_object"] = {k: round(1e3 * row[k] / max(row["objects_pushed"], 1), 2) for k in ("push_s", "pull_s")}
    return {
        "rows": rows,
        "render_distinct_s": round(render_s, 2),
        "distinct_scenes": len(scenes.pngs),
        "image_size": list(params.world.image_size),
        "shard_size": params.merge.shard_size,
        "cache_type": cache_type,
        "goal_s": GOAL_S,
        "anchor": ANCHOR,
        "wall_s": round(time.perf_counter() - wall, 1),
        "host": host() | {"load_before": load_before, "load_after": os.getloadavg()},
    }


HEADER = f"{'layout':<9}{'images':>8}{'files':>8}{'MB':>8}{'objects':>9}{'add s':>8}{'push s':>8}"
HEADER += f"{'re-push s':>10}{'pull s':>8}{'identical':>10}{'moto MiB':>9}"


def print_row(row: dict[str, Any]) -> None:
    rss = row.get("moto_rss_mib", {}).get("VmHWM", float("nan"))
    print(
        f"{row['layout']:<9}{row['images']:>8}{row['files']:>8}{row['bytes'] / 1e6:>8.0f}{row['objects_pushed']:>9}"
        f"{row['add_s']:>8.1f}{row['push_s']:>8.1f}{row['repush_noop_s']:>10.1f}{row['pull_s']:>8.1f}"
        f"{row['byte_identical']!s:>10}{rss:>9.0f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--images", type=int, default=100_000, help="images in the sharded layout")
    parser.add_argument("--flat-images", type=int, default=10_000, help="images in the flat layout (extrapolated)")
    parser.add_argument("--distinct", type=int, default=2000, help="scenes rendered; the rest are tagged copies")
    parser.add_argument("--layouts", default="sharded,flat")
    parser.add_argument("--cache-type", default="hardlink", help="DVC cache.type of the temp repos")
    parser.add_argument("--root", type=Path, default=None, help="where the temp folder goes (default: $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="300 images per layout, 100 distinct scenes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.flat_images, args.distinct = 300, 300, 100
    params = load_params(args.params)
    print(HEADER, flush=True)
    report = run(
        params,
        images=args.images,
        flat_images=args.flat_images,
        distinct=args.distinct,
        layouts=[x for x in args.layouts.split(",") if x],
        cache_type=args.cache_type,
        root=args.root,
    )
    for row in report["rows"]:
        est = row["at_100k_s"]
        print(
            f"{row['layout']}: per 100 k images add {est['add_s']:.0f} s, push {est['push_s']:.0f} s, "
            f"pull {est['pull_s']:.0f} s (goal {GOAL_S:.0f} s each way)"
        )
    h = report["host"]
    print(f"wall {report['wall_s']:.0f} s; {h['cpu']} ({h['isa']}), {h['cores']} cores, load {h['load_before'][0]:.1f}")
    out = args.out or params.base.paths.reports / "benchmarks" / "dvc_scale.json"
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
