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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tasks.cli import EFFECTIVE_PARAMS, write_effective_params
from tasks.config import DEFAULT_PARAMS, Params, VisionloopError, load_params
from tasks.env import apply_env

log = logging.getLogger(__name__)

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


def record(params: Params, stages: Sequence[str], *, root: Path = Path(".")) -> Recorded:
    """Commit the DVC stages that just ran with ``params`` (see the module docstring).

    Args:
        params: the effective params the stages ran with.
        stages: the ``dvc.yaml`` stages that ran, in the order they ran; names not in ``dvc.yaml`` are ignored.
        root: the project folder (``dvc.yaml``, ``.dvc/``).

    Returns:
        What was committed, what was skipped and why.
    """
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        reason = f"{root.resolve()} is not a DVC project (no .dvc/ or dvc.yaml): runs are not recorded"
        log.warning("dvc: %s", reason)
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


def _commit(root: Path, stage: str) -> str | None:
    """``dvc commit --force <stage>``, waiting for DVC's repo lock; the error text, or ``None`` on success."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo

    for attempt in range(LOCK_RETRIES):
        try:
            with Repo(str(root)) as repo:
                repo.commit(stage, force=True)
            return None
        except LockError:
            if attempt == LOCK_RETRIES - 1:
                return f"DVC's repo lock stayed taken for {LOCK_RETRIES * LOCK_DELAY_S:.0f} s (another dvc process)"
            time.sleep(LOCK_DELAY_S)
        except DvcException as exc:
            return str(exc).strip() or type(exc).__name__
    return None  # pragma: no cover, the loop returns


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
