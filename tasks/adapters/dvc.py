"""DVC: record what a flow's stage functions produced, as ``dvc repro`` would have.

The Prefect flows run the very functions the stages of ``dvc.yaml`` run. :func:`record` then does what DVC does
after running a stage: it writes the effective params (``params.effective.yaml``, the file every DVC stage reads its
params from, so overlays and flow overrides are what ``dvc.lock`` names) and commits each stage that ran
(``dvc commit --force``: its deps, params and outs are hashed, its outs copied into ``.dvc/cache``, ``dvc.lock``
updated). Afterwards ``dvc status`` is clean and ``dvc repro`` is a no-op.

Why commit rather than run the stages through ``dvc repro``: the flows keep their own sequencing, retries and
per-cycle arguments (``merge`` of one cycle, a warm start from the champion), and DVC records exactly what ran.

Outside a DVC project (no ``.dvc/`` beside ``dvc.yaml``) nothing is recorded and the result says why. A stage DVC
cannot commit (a dep or out missing) is skipped with its reason; the others are still recorded.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tasks.cli import EFFECTIVE_PARAMS, write_effective_params
from tasks.config import DEFAULT_PARAMS, Params, VisionloopError, load_params
from tasks.env import apply_env

log = logging.getLogger(__name__)

T = TypeVar("T")

PARAMS_STAGE = "params"  # the dvc.yaml stage that writes params.effective.yaml
LOCK_RETRIES = 30  # another process holding DVC's repo lock (a concurrent cycle): wait up to ~a minute
LOCK_DELAY_S = 2.0


@dataclass(frozen=True)
class Recorded:
    """What :func:`record` committed.

    Attributes:
        stages: the DVC stages committed (``params`` first when anything was).
        skipped: stage -> why it was not committed.
        reason: why nothing was recorded at all (``None``: the project is a DVC project).
    """

    stages: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def dvc_stages(root: Path) -> list[str]:
    """The stage names of ``<root>/dvc.yaml`` in file order (empty when there is none)."""
    path = root / "dvc.yaml"
    if not path.is_file():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("stages", {}))


def _empty_dep_folders(params: Params) -> None:
    # DVC has no optional deps: merge reads base.paths.labels and train models/parent, both empty until a cycle
    for folder in (params.base.paths.labels, params.base.paths.models / "parent"):
        folder.mkdir(parents=True, exist_ok=True)


def not_this_project(params: Params, root: Path) -> str | None:
    """Why a run with ``params`` is not one that ``<root>/dvc.yaml`` describes, or ``None`` when it is.

    ``dvc.yaml`` names its outputs through ``<root>/params.yaml``'s ``base.paths``; a run whose paths differ (a test
    in a temp folder, a run pointed elsewhere) wrote outputs DVC does not track here, so it is not recorded.
    """
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return f"{root.resolve()} is not a DVC project (no .dvc/ or dvc.yaml)"
    try:
        project = load_params(root / DEFAULT_PARAMS).base.paths
    except VisionloopError as exc:
        return f"{root / DEFAULT_PARAMS}: {exc}"
    ran = params.base.paths
    differ = [
        name
        for name in type(project).model_fields
        if (root / getattr(project, name)).resolve() != Path(getattr(ran, name)).resolve()
    ]
    if differ:
        return f"the run's base.paths ({', '.join(differ)}) are not the ones {root.resolve()}/dvc.yaml tracks"
    return None


def record(params: Params, stages: Sequence[str], *, root: Path = Path(".")) -> Recorded:
    """Commit the DVC stages that just ran with ``params`` (see the module docstring).

    Args:
        params: the effective params the stages ran with.
        stages: the ``dvc.yaml`` stages that ran, in the order they ran; names not in ``dvc.yaml`` are ignored.
        root: the project folder (``dvc.yaml``, ``.dvc/``).

    Returns:
        What was committed, what was skipped and why.
    """
    reason = not_this_project(params, root)
    if reason is not None:
        log.warning("dvc: run not recorded: %s", reason)
        return Recorded(reason=reason)
    known = dvc_stages(root)
    wanted = [PARAMS_STAGE] + [s for s in stages if s in known and s != PARAMS_STAGE]
    write_effective_params(params, root / EFFECTIVE_PARAMS)
    _empty_dep_folders(params)
    done: list[str] = []
    skipped: dict[str, str] = {}
    for stage in wanted:
        problem = _commit(root, stage)
        if problem is None:
            done.append(stage)
        else:
            skipped[stage] = problem
            log.warning("dvc: stage %s not recorded: %s", stage, problem)
    log.info("dvc: recorded %s in dvc.lock and .dvc/cache", ", ".join(done) or "nothing")
    return Recorded(stages=tuple(done), skipped=skipped)


def _in_repo(root: Path, action: Callable[[Any], T]) -> T:
    """``action(repo)`` on the DVC repo at ``root``, waiting while another process holds DVC's repo lock.

    Concurrent cycles in one clone take turns this way (DVC itself fails at once with "Unable to acquire lock").

    Raises:
        LockError: the lock stayed taken for ``LOCK_RETRIES * LOCK_DELAY_S`` seconds.
    """
    from dvc.lock import LockError
    from dvc.repo import Repo

    for attempt in range(LOCK_RETRIES):
        try:
            with Repo(str(root)) as repo:
                return action(repo)
        except LockError:
            if attempt == LOCK_RETRIES - 1:
                raise
            log.info("dvc: repo lock taken by another process; waiting %.0f s", LOCK_DELAY_S)
            time.sleep(LOCK_DELAY_S)
    raise AssertionError("unreachable")  # pragma: no cover


def _commit(root: Path, stage: str) -> str | None:
    """``dvc commit --force <stage>``; the error text, or ``None`` on success."""
    from dvc.exceptions import DvcException

    try:
        _in_repo(root, lambda repo: repo.commit(stage, force=True))
    except DvcException as exc:  # LockError included: the lock stayed taken
        return str(exc).strip() or type(exc).__name__
    return None


# ------------------------------------------------------------------ the remote: outside the clone, shared by clones

REMOTE_ENV = "VISIONLOOP_DVC_REMOTE"
REMOTE_NAME = "visionloop"


def default_remote_url() -> str:
    """``$VISIONLOOP_DVC_REMOTE``, else a per-user folder (``~/.cache/visionloop/dvc-remote``) every clone shares."""
    url = os.environ.get(REMOTE_ENV)
    if url:
        return url
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(cache / "visionloop" / "dvc-remote")


def ensure_remote(root: Path) -> str:
    """The name of the remote pushes go to, configured for this clone when it has none.

    ``$VISIONLOOP_DVC_REMOTE`` always wins (written to ``.dvc/config.local``, which git ignores; an ``s3://`` URL
    with the endpoint from the environment, see :func:`remote_config`); otherwise a default remote the user
    configured (``dvc remote add -d``) is kept; otherwise the per-user folder.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        configured = repo.config["core"].get("remote")
        if configured and not os.environ.get(REMOTE_ENV):
            return str(configured)
        with repo.config.edit("local") as conf:
            conf["remote"][REMOTE_NAME] = remote_config(default_remote_url())
            conf["core"]["remote"] = REMOTE_NAME
    return REMOTE_NAME


def remote_config(url: str) -> dict[str, str]:
    """The DVC remote section for ``url``: an ``s3://`` one also gets the endpoint of the environment.

    ``endpointurl`` is ``$AWS_ENDPOINT_URL_S3`` (else ``$AWS_ENDPOINT_URL``), rewritten at every push and pull so
    it follows the environment; credentials are never written: DVC's S3 client reads them from the environment
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``), as boto3 does.
    """
    from tasks.adapters.s3 import endpoint_from_env

    endpoint = endpoint_from_env() if url.startswith("s3://") else None
    return {"url": url, "endpointurl": endpoint} if endpoint else {"url": url}


def _where(root: Path, remote: str) -> str:
    """`` (remote <name>: <url> at <endpoint>)`` for an error message: DVC's own S3 errors name neither."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            section = repo.config["remote"].get(remote, {})
    except Exception:  # the message is a courtesy: a config DVC cannot read must not hide the real error
        return ""
    endpoint = f" at {section['endpointurl']}" if section.get("endpointurl") else ""
    return f" (remote {remote}: {section.get('url', '?')}{endpoint})"


@dataclass(frozen=True)
class Pushed:
    """What :func:`push` did: ``ok`` and the objects sent, or the error (the remote unreachable, ...)."""

    ok: bool
    remote: str
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None


def push(root: Path, *, revs: Sequence[str] = ()) -> Pushed:
    """``dvc push`` of the workspace's ``dvc.lock`` outputs (and of each git revision in ``revs``, pinned earlier)."""

    start = time.perf_counter()
    remote = ensure_remote(root)
    try:
        sent = _in_repo(root, lambda repo: repo.push(remote=remote, revs=list(revs) or None, workspace=True))
    except Exception as exc:  # any failure (DVC's, the filesystem's, the network's) leaves the version unpushed
        error = f"{type(exc).__name__}: {exc}".strip() + _where(root, remote)
        log.warning("dvc: push to %s failed: %s", remote, error)
        return Pushed(ok=False, remote=remote, seconds=time.perf_counter() - start, error=error)
    seconds = time.perf_counter() - start
    log.info("dvc: pushed %s object(s) to remote %s in %.1f s", sent, remote, seconds)
    return Pushed(ok=True, remote=remote, objects=int(sent or 0), seconds=seconds)


# ------------------------------------------------------------------ pins: dvc.lock committed on the pipeline's own ref

PIN_REFS = "refs/visionloop/pins"  # never under refs/heads or refs/tags: a plain `git push` does not send them
PINNED_FILES = ("dvc.lock", EFFECTIVE_PARAMS)
IDENTITY = {
    "GIT_AUTHOR_NAME": "visionloop pipeline",
    "GIT_AUTHOR_EMAIL": "pipeline@visionloop.invalid",
    "GIT_COMMITTER_NAME": "visionloop pipeline",
    "GIT_COMMITTER_EMAIL": "pipeline@visionloop.invalid",
}


@dataclass(frozen=True)
class Pin:
    """A git commit holding the code (``HEAD``) plus the run's ``dvc.lock`` and effective params.

    Attributes:
        commit: its sha; ``git checkout <commit> && dvc pull`` restores what the run produced.
        ref: ``refs/visionloop/pins/<name>``, which keeps it from git's garbage collection.
        dirty: git-tracked paths that differed from ``HEAD`` when it was made (the pin holds ``HEAD``'s version).
    """

    commit: str
    ref: str
    dirty: tuple[str, ...] = ()


class PinError(VisionloopError):
    """The project is not a git checkout with a commit, or git refused."""


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, env=os.environ | (env or {}), check=False
    )
    if done.returncode != 0:
        raise PinError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def pin(root: Path, name: str, message: str) -> Pin:
    """Commit ``HEAD``'s tree plus :data:`PINNED_FILES` to ``refs/visionloop/pins/<name>``.

    The user's branch, index and working tree are untouched (a temporary index builds the tree). Tracked files
    that differ from ``HEAD`` are named in :attr:`Pin.dirty`: the pin records ``HEAD``'s code, not theirs.

    Raises:
        PinError: not a git checkout, no commit yet, or a pinned file missing.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise PinError(f"pin name {name!r}: letters, digits, '.', '_' and '-' only")
    head = _git(root, "rev-parse", "--verify", "HEAD^{commit}")
    changed = _git(root, "diff", "--name-only", "HEAD").splitlines()  # tracked, staged or not
    dirty = tuple(path for path in changed if path not in PINNED_FILES)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(root, "read-tree", "HEAD", env=env)
        for file in PINNED_FILES:
            if not (root / file).is_file():
                raise PinError(f"{root / file}: missing, nothing to pin (record the run first)")
            blob = _git(root, "hash-object", "-w", "--", file)
            _git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{file}", env=env)
        tree = _git(root, "write-tree", env=env)
    text = message + (f"\n\ndirty (tracked files that differed from HEAD): {', '.join(dirty)}" if dirty else "")
    commit = _git(root, "commit-tree", tree, "-p", head, "-m", text, env=IDENTITY)
    ref = f"{PIN_REFS}/{name}"
    _git(root, "update-ref", ref, commit)
    if dirty:
        log.warning("dvc: pin %s made with uncommitted changes to %s (it holds HEAD's version)", name, dirty)
    return Pin(commit=commit, ref=ref, dirty=dirty)


def lock_outs(root: Path, stages: Sequence[str] | None = None) -> dict[str, str]:
    """``{out path: md5}`` of the outputs ``dvc.lock`` records (of ``stages``, default all); folders: ``.dir`` md5."""
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    locked = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    return {
        out["path"]: out["md5"]
        for stage, spec in locked.items()
        if stages is None or stage in stages
        for out in spec.get("outs", [])
        if "md5" in out
    }


# ------------------------------------------------------------------ restore: the pinned outputs back into a clone


@dataclass(frozen=True)
class Pulled:
    """What :func:`pull` did: ``ok``, or the error (objects the remote lacks are named by DVC)."""

    ok: bool
    remote: str
    seconds: float = 0.0
    error: str | None = None


def pull(root: Path) -> Pulled:
    """``dvc pull --force`` of the stages ``dvc.lock`` records: their outputs, from the remote into the workspace."""

    start = time.perf_counter()
    remote = ensure_remote(root)
    locked = locked_stages(root)
    try:
        _in_repo(root, lambda repo: repo.pull(targets=locked, remote=remote, force=True))
    except Exception as exc:  # DVC's, the filesystem's or the network's: the caller names the version and hashes
        error = f"{type(exc).__name__}: {exc}" + _where(root, remote)
        return Pulled(ok=False, remote=remote, seconds=time.perf_counter() - start, error=error)
    return Pulled(ok=True, remote=remote, seconds=time.perf_counter() - start)


def locked_stages(root: Path) -> list[str]:
    """The stages ``<root>/dvc.lock`` records (empty without one)."""
    path = root / "dvc.lock"
    return list((yaml.safe_load(path.read_text()) or {}).get("stages", {})) if path.is_file() else []


def changed_outputs(root: Path) -> list[str]:
    """The cached outputs of the locked stages whose workspace content differs from ``dvc.lock`` (DVC re-hashes).

    Outputs with ``cache: false`` (``params.effective.yaml``: restored from the MLflow run) are left out.
    """
    locked = locked_stages(root)

    def cached_and_status(repo: Any) -> tuple[set[str], dict[str, Any]]:
        cached = {str(o) for stage in repo.index.stages if stage.name in locked for o in stage.outs if o.use_cache}
        return cached, repo.status(targets=locked)

    cached, status = _in_repo(root, cached_and_status)
    changed = []
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict) and "changed outs" in entry:
                changed += [f"{stage}: {p} ({why})" for p, why in entry["changed outs"].items() if p in cached]
    return changed


# ------------------------------------------------------------------ garbage: keep what pins and the workspace use


@dataclass(frozen=True)
class Collected:
    """What :func:`gc` removed (or would remove, ``dry``) from the local cache and the remote."""

    kept_revs: tuple[str, ...]
    removed_local: int
    removed_remote: int
    dry: bool


def gc(root: Path, keep: Sequence[str], *, cloud: bool = True, dry: bool = False) -> Collected:
    """Remove every cached object that neither the workspace nor a ``keep`` revision's ``dvc.lock`` uses.

    ``dvc gc`` keeps one ``--rev`` at most and its ``--all-commits`` skips refs outside branches and tags (our
    pins), so this collects the used objects of the workspace and of every pin the same way ``dvc gc`` does
    (``Repo.used_objs`` over those revisions) and removes the rest from ``.dvc/cache`` and, with ``cloud``, from
    the remote.
    """
    from dvc_data.hashfile.gc import gc as remove_unused

    remote = ensure_remote(root) if cloud else None

    def collect(repo: Any) -> tuple[int, int]:
        with repo.lock:
            used = repo.used_objs(revs=list(keep) or None, remote=remote)
            ids = set().union(*used.values()) if used else set()
            seen, local = set(), 0
            for _, odb in repo.cache.by_scheme():
                if odb is not None and odb not in seen:
                    seen.add(odb)
                    local += remove_unused(odb, ids, dry=dry)
            far = remove_unused(repo.cloud.get_remote_odb(remote), ids, dry=dry) if cloud else 0
        return local, far

    removed_local, removed_remote = _in_repo(root, collect)
    log.info(
        "dvc gc: kept the workspace and %d pin(s); removed %d local and %d remote object(s)%s",
        len(keep),
        removed_local,
        removed_remote,
        " (dry run)" if dry else "",
    )
    return Collected(kept_revs=tuple(keep), removed_local=removed_local, removed_remote=removed_remote, dry=dry)


@dataclass(frozen=True)
class Purged:
    """What :func:`purge_objects` removed: object ids from the local cache and from the remote."""

    local: tuple[str, ...]
    remote: tuple[str, ...]


def purge_objects(root: Path, doomed: Callable[[bytes], bool], *, cloud: bool = True) -> Purged:
    """Remove every object of ``.dvc/cache`` (and, with ``cloud``, of the remote) whose bytes ``doomed`` accepts.

    The forget stage's call: objects that hold a forgotten image (its file, a shard or manifest that lists it, a
    folder listing naming it) go whatever references them; a pinned version that used one is no longer restorable
    from the remote (the stage's report says so). Every object is read whole, once: slow on a large cache, which is
    fine for a rare, audited removal.
    """
    remote = ensure_remote(root) if cloud else None

    def purge(repo: Any) -> Purged:
        removed: dict[str, list[str]] = {"local": [], "remote": []}
        with repo.lock:
            odbs = [("local", odb) for _, odb in repo.cache.by_scheme() if odb is not None]
            if remote is not None:
                odbs.append(("remote", repo.cloud.get_remote_odb(remote)))
            seen: set[int] = set()
            for where, odb in odbs:
                if id(odb) in seen:
                    continue
                seen.add(id(odb))
                for oid in list(odb.all()):
                    path = odb.oid_to_path(oid)
                    with odb.fs.open(path, "rb") as handle:
                        hit = doomed(handle.read())
                    if hit:
                        odb.delete(oid)
                        removed[where].append(oid)
        return Purged(local=tuple(sorted(removed["local"])), remote=tuple(sorted(removed["remote"])))

    purged = _in_repo(root, purge)
    log.info("dvc: purged %d local and %d remote object(s)", len(purged.local), len(purged.remote))
    return purged


def pin_refs(root: Path) -> dict[str, str]:
    """``{ref: commit}`` of every pin under :data:`PIN_REFS`."""
    listed = _git(root, "for-each-ref", "--format=%(refname) %(objectname)", PIN_REFS)
    return dict(line.split(" ", 1) for line in listed.splitlines() if line)


def drop_pin(root: Path, ref: str) -> None:
    """Delete a pin ref (its data goes with the next :func:`gc`)."""
    if not ref.startswith(PIN_REFS + "/"):
        raise PinError(f"{ref}: not a pin ref (under {PIN_REFS}/)")
    _git(root, "update-ref", "-d", ref)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.adapters.dvc --params params.yaml [--params site.yaml ...]``: layer params for ``dvc repro``.

    Writes the layered params to ``params.effective.yaml`` and records them as the ``params`` stage's output, so
    the next ``dvc repro`` runs every stage whose declared keys the overlay changes, and ``dvc.lock`` names them.
    """
    parser = argparse.ArgumentParser(prog="python -m tasks.adapters.dvc", description=main.__doc__)
    parser.add_argument("--params", action="append", default=None, help="params files, base first")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        recorded = record(load_params(args.params or [DEFAULT_PARAMS]), [])
    except VisionloopError as exc:
        raise SystemExit(f"dvc: {exc}") from None
    if recorded.reason or recorded.skipped:
        raise SystemExit(f"dvc: params not recorded: {recorded.reason or recorded.skipped}")


if __name__ == "__main__":
    main()
