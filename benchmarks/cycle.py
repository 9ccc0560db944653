"""Where one continuous-learning cycle's time goes: work vs orchestration and bookkeeping, stage by stage.

One default cycle of the real loop on a world of its own, in a folder that is a git + DVC project like a clone
(``tasks/``, ``dvc.yaml``, relative ``base.paths``), so the flows record in DVC and pin as they do in the project:
bootstrap (not timed) → ``continuous_learning`` (predict, sample, label: it ends waiting for labels) → the annotator
simulator answers through a real Label Studio (``human``: reported apart, never work nor bookkeeping) →
``continuous_learning`` again (label, champion, validate, merge, train, evaluate, export, dvc_record, gate,
registry, dvc_pin, promote, baseline, cycle report).

Where the seconds come from:

* the Prefect API: every task run of both flow runs (``read_task_runs`` by flow run id), its start and end;
* the stages' own ``wall_s`` (``reports/<stage>.json``) for the stages that run once in a cycle and time
  themselves: ``task wall − stage wall_s`` is Prefect's own cost per task, and ``run wall − Σ task walls`` the
  flow's (engine, flow run records, params, the cycle lease, artifacts);
* the adapters: every call into ``tasks.adapters.mlflow``/``dvc``/``labelstudio`` made while a task runs is timed
  here (the outermost call per adapter) and moved from that task's work to that adapter's bookkeeping;
* Ultralytics' own callbacks inside ``train``: setup (datasets, model, optimizer), the seconds spent waiting for
  batches (``loader``: decode + augmentation, on cpu in the main process), in forward/backward (``step``), in the
  val passes (``val``, Ultralytics' final validation of best.pt included) and after each epoch's batches
  (``tail``: EMA, metrics, checkpoint writes); wall and this process's CPU seconds (steadier on a busy host);
* the gaps between two task runs of a flow (Prefect's start of the next task; while the stage tasks carried a tag,
  a tag-concurrency lookup of ~2 s whenever its 5 s "no limits" cache had expired, i.e. after every task longer
  than that: the reason they carry none now).

Bookkeeping = Prefect + MLflow + DVC + Label Studio round trips + the cycle's own records (state, report);
its share of the cycle (both runs' wall, human time left out) has a goal of ≤ 10 %. Also timed: a re-run of the
finished cycle (``--cycle <name>``: a closed cycle does nothing) and a no-op ``dvc repro`` (after ``dvc status``
says up to date): ≤ 15 s each. Then, with ``--train-probe``, retraining on the cycle's data under variants of
``train.yolo`` (``val_every``: the val pass after every epoch or only the last; ``cache_ram``: decoded images kept
in RAM or read from disk each epoch); ``--probe-only`` does that alone, from scratch on a rendered world.

    python benchmarks/cycle.py --quick [--train-probe] [--root DIR] [--out FILE]   # tiny world (64 px, 1 epoch)
    python benchmarks/cycle.py [--train-probe]                                      # params.yaml sizes
    python benchmarks/cycle.py --probe-only [--quick] --probe-epochs 10 --probes before,params --rounds 2

Starts its own Label Studio (``make labelstudio-up``) and a temporary Prefect API (Prefect's test harness), as
``benchmarks/soak.py`` does. Prints the table and writes ``reports/benchmarks/cycle.json`` (or ``--out``) with
the host (``dvc_scale.host()``). ``tests/integration/test_bench_cycle.py`` runs ``--quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import inspect
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dvc_scale import host
from soak import label_studio, loop_settings

from tasks.config import load_params
from tasks.env import PROJECT_ROOT, apply_env
from tasks.io import write_json_atomic

BOOKKEEPING_GOAL = 0.10  # share of the cycle's machine time
RERUN_GOAL_S = 15.0  # re-running a closed cycle
REPRO_GOAL_S = 15.0  # a `dvc repro` with nothing to do
WORK_TASKS = ("predict", "sample", "validate", "merge", "train", "compress", "evaluate", "export", "gate", "baseline")
# tasks that are bookkeeping as a whole, and whose
BOOKKEEPING_TASKS = {
    "label": "labelstudio",
    "champion": "mlflow",
    "registry": "mlflow",
    "promote": "mlflow",
    "dvc_record": "dvc",
    "dvc_pin": "dvc",
    "cycle_start": "records",
    "cycle_finish": "records",
    "cycle": "records",
}
# stages whose report's own wall_s is the one run of the cycle (label, promote, cycle run twice: the report is the last)
TIMED_STAGES = ("predict", "sample", "validate", "merge", "train", "compress", "evaluate", "gate")
ADAPTERS = ("mlflow", "dvc", "labelstudio")
PROBES: dict[str, dict[str, Any]] = {  # name -> train.yolo settings
    "before": {"val_every": 1, "cache_ram": False},  # Ultralytics' defaults: val after each epoch, PNG per epoch
    "val-end": {"val_every": 1000, "cache_ram": False},  # the val pass after the last epoch only
    "cache-ram": {"val_every": 1, "cache_ram": True},  # decoded images kept in RAM
    "params": {},  # params.yaml as it is
}


# ------------------------------------------------------------------ the split (pure)


@dataclass(frozen=True)
class TaskTime:
    """One task run of the cycle.

    Attributes:
        task: the Prefect task's name (= the stage's).
        wall_s: its wall time from the Prefect API (end − start).
        stage_s: the stage's own ``wall_s`` from its report, when it timed this very run; else ``None``.
        adapters: seconds spent in adapter calls while it ran, by adapter (``mlflow``, ``dvc``, ``labelstudio``).
    """

    task: str
    wall_s: float
    stage_s: float | None = None
    adapters: Mapping[str, float] = field(default_factory=dict)


def split(tasks: Sequence[TaskTime], run_walls: Sequence[float], *, goal: float = BOOKKEEPING_GOAL) -> dict[str, Any]:
    """Each task's wall cut into work and bookkeeping kinds, summed per stage; the cycle's bookkeeping share.

    A work task's wall is its stage's own seconds (``stage_s``, else the task wall) less the adapter calls inside
    them, plus Prefect's ``wall_s − stage_s``; a bookkeeping task's whole wall goes to its kind
    (:data:`BOOKKEEPING_TASKS`; an unknown task counts as ``other`` bookkeeping). The flow runs' wall beyond their
    tasks is ``prefect``.

    Args:
        tasks: every task run of the cycle's flow runs.
        run_walls: each flow run's wall seconds (human time between them left out).
        goal: the largest bookkeeping share that passes.

    Returns:
        ``stages`` (per task name, in first-run order: ``wall_s``, ``work_s``, ``bookkeeping`` by kind, ``share``
        of the cycle), ``cycle_s``, ``work_s``, ``bookkeeping_s``, ``by_kind``, ``share``, ``goal``, ``ok``.
    """
    cycle_s = float(sum(run_walls))
    stages: dict[str, dict[str, Any]] = {}
    for t in tasks:
        row = stages.setdefault(t.task, {"stage": t.task, "runs": 0, "wall_s": 0.0, "work_s": 0.0, "bookkeeping": {}})
        row["runs"] += 1
        row["wall_s"] += t.wall_s
        kinds: dict[str, float] = row["bookkeeping"]
        if t.task in WORK_TASKS:
            own = min(t.stage_s, t.wall_s) if t.stage_s is not None else t.wall_s
            inside = {k: min(v, own) for k, v in t.adapters.items() if v > 0}
            spent = min(sum(inside.values()), own)
            row["work_s"] += own - spent
            for kind, seconds in inside.items():
                kinds[kind] = kinds.get(kind, 0.0) + seconds * (spent / sum(inside.values()))
            if t.wall_s > own:
                kinds["prefect"] = kinds.get("prefect", 0.0) + t.wall_s - own
        else:
            kind = BOOKKEEPING_TASKS.get(t.task, "other")
            kinds[kind] = kinds.get(kind, 0.0) + t.wall_s
    outside = max(cycle_s - sum(t.wall_s for t in tasks), 0.0)
    stages["(flow)"] = {"stage": "(flow)", "runs": len(run_walls), "wall_s": outside, "work_s": 0.0}
    stages["(flow)"]["bookkeeping"] = {"prefect": outside} if outside else {}
    by_kind: dict[str, float] = {}
    for row in stages.values():
        row["bookkeeping_s"] = sum(row["bookkeeping"].values())
        row["share"] = row["wall_s"] / cycle_s if cycle_s else 0.0
        for kind, seconds in row["bookkeeping"].items():
            by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    bookkeeping = sum(by_kind.values())
    share = bookkeeping / cycle_s if cycle_s else 0.0
    return {
        "stages": list(stages.values()),
        "cycle_s": cycle_s,
        "work_s": sum(r["work_s"] for r in stages.values()),
        "bookkeeping_s": bookkeeping,
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "share": share,
        "goal": goal,
        "ok": bool(cycle_s) and share <= goal,
    }


def verdicts(
    share: float, rerun_s: float | None, repro_s: float | None, *, repro_why: str = ""
) -> list[dict[str, Any]]:
    """The three goals: bookkeeping share, re-run of a closed cycle, no-op ``dvc repro`` (``None``: not measured,
    a failure that says why)."""
    rows: list[tuple[str, float | None, float, str]] = [
        ("bookkeeping share", share, BOOKKEEPING_GOAL, ""),
        ("re-run of a closed cycle (s)", rerun_s, RERUN_GOAL_S, "not measured"),
        ("no-op dvc repro (s)", repro_s, REPRO_GOAL_S, repro_why or "not measured"),
    ]
    return [
        {
            "goal": name,
            "value": value,
            "bound": bound,
            "ok": value is not None and value <= bound,
            "why": why if value is None else "",  # the reason explains a missing value only
        }
        for name, value, bound, why in rows
    ]


# ------------------------------------------------------------------ measuring


class AdapterClock:
    """Times every call into the adapter modules (the outermost per adapter and thread) as (adapter, start, end)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []
        self._depth = threading.local()
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, adapter: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, adapter, 0)
            setattr(self._depth, adapter, depth + 1)
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self._depth, adapter, depth)
                if depth == 0:
                    self.calls.append((adapter, start, time.time()))

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[AdapterClock]:
        import importlib

        for adapter in ADAPTERS:
            module = importlib.import_module(f"tasks.adapters.{adapter}")
            owners: list[Any] = [module]
            owners += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
            for owner in owners:
                for name, fn in list(vars(owner).items()):
                    if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("__"):
                        self._saved.append((owner, name, fn))
                        setattr(owner, name, self._wrap(adapter, fn))
        try:
            yield self
        finally:
            for owner, name, fn in reversed(self._saved):
                setattr(owner, name, fn)
            self._saved.clear()

    def inside(self, start: float, end: float) -> dict[str, float]:
        """Seconds per adapter of the calls that started within [start, end] (epoch seconds)."""
        seconds: dict[str, float] = {}
        for adapter, s, e in self.calls:
            if start <= s <= end:
                seconds[adapter] = seconds.get(adapter, 0.0) + min(e, end) - s
        return seconds


class TrainClock:
    """Ultralytics callbacks (added to its defaults, so every trainer gets them): seconds waiting for batches,
    in the training steps, and in the validation after each epoch."""

    EVENTS = (
        "on_pretrain_routine_start",
        "on_pretrain_routine_end",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_train_epoch_start",
        "on_train_epoch_end",
        "on_fit_epoch_end",
        "on_val_start",
        "on_val_end",
        "on_train_end",
    )

    def __init__(self) -> None:
        self.loader_s = self.step_s = self.val_s = self.setup_s = self.fit_s = self.tail_s = 0.0
        self._tail = self._tail_val = 0.0
        self.cpu = {"loader": 0.0, "step": 0.0, "val": 0.0}  # CPU seconds of this process: steadier than wall
        self._setup = self._fit = 0.0
        self._cpu_mark = self._cpu_val = 0.0
        self.batches = self.epochs = self.vals = 0
        self._mark: float | None = None
        self._val: float = 0.0

    def on_pretrain_routine_start(self, _: Any) -> None:
        self._setup = self._fit = time.perf_counter()

    def on_pretrain_routine_end(self, _: Any) -> None:
        self.setup_s += time.perf_counter() - self._setup

    def on_train_epoch_end(self, _: Any) -> None:
        self._tail, self._tail_val = time.perf_counter(), self.val_s

    def on_fit_epoch_end(self, _: Any) -> None:
        if self._tail:  # after the epoch's batches: EMA, the val pass (not counted here), metrics, checkpoint saving
            self.tail_s += time.perf_counter() - self._tail - (self.val_s - self._tail_val)
            self._tail = 0.0

    def on_train_end(self, _: Any) -> None:
        self.fit_s += time.perf_counter() - self._fit

    def on_train_epoch_start(self, _: Any) -> None:
        self.epochs += 1
        self._mark, self._cpu_mark = time.perf_counter(), time.process_time()

    def on_train_batch_start(self, _: Any) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self._mark is not None:
            self.loader_s += now - self._mark
            self.cpu["loader"] += cpu - self._cpu_mark
        self._mark, self._cpu_mark = now, cpu

    def on_train_batch_end(self, _: Any) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.step_s += now - (self._mark or now)
        self.cpu["step"] += cpu - self._cpu_mark
        self.batches += 1
        self._mark, self._cpu_mark = now, cpu

    def on_val_start(self, _: Any) -> None:
        self._val, self._cpu_val = time.perf_counter(), time.process_time()

    def on_val_end(self, _: Any) -> None:
        self.val_s += time.perf_counter() - self._val
        self.cpu["val"] += time.process_time() - self._cpu_val
        self.vals += 1
        self._mark = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[TrainClock]:
        from ultralytics.utils.callbacks.base import default_callbacks

        # plain functions: Ultralytics deep-copies its default callbacks into each trainer, and a deep copy of a
        # bound method would copy this clock with it
        hooks = {event: _calling(getattr(self, event)) for event in self.EVENTS}
        for event, hook in hooks.items():
            default_callbacks[event].append(hook)
        try:
            yield self
        finally:
            for event, hook in hooks.items():
                default_callbacks[event].remove(hook)

    def summary(self) -> dict[str, float]:
        return {
            "epochs": self.epochs,
            "batches": self.batches,
            "fit_s": round(self.fit_s, 2),
            "setup_s": round(self.setup_s, 2),
            "tail_s": round(self.tail_s, 2),
            **{f"{k}_cpu_s": round(v, 2) for k, v in self.cpu.items()},
            "loader_s": round(self.loader_s, 2),
            "step_s": round(self.step_s, 2),
            "val_s": round(self.val_s, 2),
            "vals": self.vals,
        }


def _calling(method: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(trainer: Any) -> None:
        method(trainer)

    return hook


def task_runs(flow_run_id: Any, *, timeout: float = 30.0) -> tuple[list[dict[str, Any]], float | None]:
    """The flow run's task runs from the Prefect API (name, start, end as epoch seconds) once all have ended, and
    the flow run's own wall (server side)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: list[Any] = []
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # task run states reach the server as events: wait until every run has an end
            found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if (found and all(r.end_time for r in found)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        run = client.read_flow_run(flow_run_id)
    rows = [
        {"task": r.name.rsplit("-", 1)[0], "start": r.start_time.timestamp(), "end": r.end_time.timestamp()}
        for r in found
        if r.start_time and r.end_time
    ]
    server = (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else None
    return sorted(rows, key=lambda r: r["start"]), server


def stage_seconds(reports: Path) -> dict[str, float]:
    """``wall_s`` of each stage report of :data:`TIMED_STAGES` that has one."""
    seconds = {}
    for stage in TIMED_STAGES:
        path = reports / f"{stage}.json"
        if path.is_file():
            value = json.loads(path.read_text()).get("wall_s")
            if isinstance(value, int | float):
                seconds[stage] = float(value)
    return seconds


def evaluations(reports: Path, stages: Sequence[Mapping[str, Any]], train: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each pass of the candidate over a labeled set in one cycle, and what the stage doing it cost in all."""
    walls = {row["stage"]: row["wall_s"] for row in stages}
    export = json.loads((reports / "export.json").read_text()) if (reports / "export.json").is_file() else {}
    scored = [a for a in export.get("artifacts", []) if a.get("map50_95")]
    gate = json.loads((reports / "gate.json").read_text()) if (reports / "gate.json").is_file() else {}
    vals = int(train.get("vals", 0))
    return [
        {
            "where": "train: val after each epoch + Ultralytics' final val of best.pt",
            "times": vals,
            "seconds": train.get("val_s"),
        },
        {"where": "evaluate: PyTorch on evaluate.sets", "times": 1, "seconds": walls.get("evaluate")},
        {
            "where": "export: PyTorch reference + each built target's mAP (parity, speed apart)",
            "times": (1 if export.get("reference_map50_95") else 0) + len(scored),
            "seconds": walls.get("export"),
        },
        {
            "where": "gate: the candidate's ONNX on each gate set (the champion's too)",
            "times": len(gate.get("sets", {})),
            "seconds": gate.get("wall_s"),
        },
    ]


# ------------------------------------------------------------------ the project and the cycle


def make_project(root: Path, *, quick: bool, images: int, budget: int, document_root: Path) -> Path:
    """A git + DVC project at ``root`` (``tasks/``, ``dvc.yaml``, params with relative paths): a clone's layout."""
    from tests.conftest import tiny_params_dict

    root.mkdir(parents=True, exist_ok=True)
    if quick:
        data = tiny_params_dict(Path("."), predict={"conf": 0.001, "max_det": 5})
        data["merge"].update(holdout_fraction=0.25)
        data["cycle"].update(epochs=1)
        data["export"].update(targets=["onnx"])
    else:
        data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data["base"]["paths"] = {k: str(Path(v)) for k, v in data["base"]["paths"].items()}
    data["registry"].update(tracking_uri="sqlite:///mlflow.db", artifact_root="mlartifacts")
    data["promote"].update(audit_log="data/audit/aliases.jsonl")
    loop_settings(data, title=f"visionloop-cycle-{root.parent.name}", budget=budget, document_root=document_root)
    data["world"]["production"].update(batches=1, images_per_batch=images)
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copytree(PROJECT_ROOT / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "visionloop.env"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n__pycache__/\n")
    git = ["git", "-c", "user.name=visionloop-bench", "-c", "user.email=bench@localhost"]
    setup = (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"])
    for cmd in (*setup, [*git, "commit", "-q", "-m", "the benchmark's clone"]):  # a pin needs a HEAD commit
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=_env())
    return root / "params.yaml"


def _env() -> dict[str, str]:
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def timed_run(params_file: Path, **kwargs: Any) -> tuple[Any, float, Any]:
    """``continuous_learning`` once: its final state, client-side wall and flow run id."""
    from flows.continuous_learning import continuous_learning

    start = time.perf_counter()
    state = continuous_learning(params_path=str(params_file), return_state=True, **kwargs)
    return state, time.perf_counter() - start, state.state_details.flow_run_id


def dvc_noop(root: Path) -> dict[str, Any]:
    """``dvc status`` and, when it says up to date, a timed ``dvc repro`` (else why it would not be a no-op)."""
    t0 = time.perf_counter()
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True, env=_env()
    )
    status_s = time.perf_counter() - t0
    clean = status.returncode == 0 and "up to date" in status.stdout
    if not clean:
        return {"status_s": status_s, "repro_s": None, "why": f"dvc status is not clean: {status.stdout.strip()[:400]}"}
    t0 = time.perf_counter()
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True, env=_env())
    repro_s = time.perf_counter() - t0
    ran = "Running stage" in repro.stdout
    why = "" if repro.returncode == 0 and not ran else f"dvc repro ran something: {repro.stdout.strip()[-400:]}"
    return {"status_s": status_s, "repro_s": None if why else repro_s, "why": why}


def probe_training(
    params_file: Path, *, epochs: int, probes: Mapping[str, Mapping[str, Any]], rounds: int = 1
) -> list[dict[str, Any]]:
    """Retrain on the cycle's merged data (warm start from the parent) under each probe's Ultralytics arguments,
    the probes taking turns ``rounds`` times (a load that drifts meanwhile hits them alike)."""
    import tasks.train

    rows = []
    for k, (name, extra) in enumerate([item for _ in range(rounds) for item in probes.items()]):
        # cycle.epochs wins in a warm start, train.epochs from scratch
        overrides = {"cycle": {"epochs": epochs}, "train": {"epochs": epochs, "yolo": dict(extra)}}
        params = load_params(params_file, overrides=overrides)
        with TrainClock().installed() as clock:
            result = tasks.train.run(params)
        rows.append(
            {
                "probe": name,
                "round": k // len(probes) + 1,
                "yolo": dict(extra),
                "wall_s": result.wall_s,
                **clock.summary(),
                "val_map50_95": result.final_metrics.get("val/mAP50-95"),
            }
        )
    return rows


def probe_world(
    root: Path, *, quick: bool, epochs: int, probes: Mapping[str, Mapping[str, Any]], rounds: int
) -> dict[str, Any]:
    """Training alone: the world rendered at ``root`` (params.yaml sizes, or tiny ones), trained from scratch on its
    source sets under each probe."""
    import tasks.world

    params_file = make_project(root, quick=quick, images=4, budget=2, document_root=root)
    os.chdir(root)
    t0 = time.perf_counter()
    tasks.world.run(load_params(params_file))
    world_s = time.perf_counter() - t0
    params = load_params(params_file)
    return {
        "probe_only": True,
        "world_s": world_s,
        "settings": {
            "imgsz": params.base.imgsz,
            "train_images": params.world.train_images,
            "batch": params.train.batch,
        },
        "train_probe": probe_training(params_file, epochs=epochs, probes=probes, rounds=rounds),
    }


def run_cycle(params_file: Path, *, root: Path) -> dict[str, Any]:
    """Bootstrap, one timed cycle (two flow runs around the simulated annotator), the re-run and the no-op repro."""
    from flows.bootstrap import bootstrap
    from tasks.sim import annotator

    params = load_params(params_file)
    t0 = time.perf_counter()
    bootstrap(params_path=str(params_file))
    bootstrap_s = time.perf_counter() - t0
    with AdapterClock().installed() as adapters, TrainClock().installed() as train:
        first, first_s, first_id = timed_run(params_file)
        t0 = time.perf_counter()
        answered = annotator.run(params)
        human_s = time.perf_counter() - t0
        second, second_s, second_id = timed_run(params_file)
    summary = second.result()
    name = summary["cycle"]
    seconds = stage_seconds(params.base.paths.reports)
    rows, server_walls = [], []
    for k, run_id in enumerate((first_id, second_id)):
        found, server = task_runs(run_id)
        rows += [r | {"run": k} for r in found]
        server_walls.append(server)
    last = {r["task"]: k for k, r in enumerate(rows)}  # a stage report holds the stage's last run of the cycle
    tasks = [
        TaskTime(
            r["task"],
            r["end"] - r["start"],
            seconds.get(r["task"]) if last[r["task"]] == k else None,
            adapters.inside(r["start"], r["end"]),
        )
        for k, r in enumerate(rows)
    ]
    cycle = split(tasks, [first_s, second_s])
    gaps = sorted(
        (
            {"after": a["task"], "before": b["task"], "seconds": b["start"] - a["end"]}
            for a, b in itertools.pairwise(rows)
            if a["run"] == b["run"] and b["start"] - a["end"] > 0
        ),
        key=lambda g: -g["seconds"],
    )
    _, rerun_s, _ = timed_run(params_file, cycle=name)
    noop = dvc_noop(root)
    return {
        "cycle": name,
        "outcome": summary.get("outcome"),
        "first_run": first.name,
        "answered": answered.answered,
        "bootstrap_s": bootstrap_s,
        "runs_s": {"first": first_s, "second": second_s},
        "runs_server_s": server_walls,
        "human_s": human_s,
        "tasks": [asdict(t) for t in tasks],
        "split": cycle,
        "gaps": gaps[:8],  # the flow's longest stretches between two task runs (the run's own work, Prefect's)
        "train_inside": train.summary(),
        "evaluations": evaluations(params.base.paths.reports, cycle["stages"], train.summary()),
        "rerun_s": rerun_s,
        "dvc": noop,
        "verdicts": verdicts(cycle["share"], rerun_s, noop["repro_s"], repro_why=noop["why"]),
        "settings": {
            "imgsz": params.base.imgsz,
            "epochs": params.cycle.epochs,
            "images": params.world.production.images_per_batch,
            "budget": params.sample.budget,
            "targets": list(params.export.targets),
        },
    }


# ------------------------------------------------------------------ the script


def print_report(report: Mapping[str, Any]) -> None:
    if "split" in report:
        print_cycle(report)
    for row in report.get("train_probe", []):
        print(
            f"  probe {row['probe']:<18} #{row['round']} wall {row['wall_s']:>6.1f} s  fit {row['fit_s']:>6.1f}  "
            f"setup {row['setup_s']:>5.1f}  tail {row['tail_s']:>5.1f}  loader {row['loader_s']:>5.1f}  "
            f"step {row['step_s']:>6.1f}  "
            f"val {row['val_s']:>5.1f} ({row['vals']}x); CPU s: loader {row['loader_cpu_s']:>5.1f} "
            f"step {row['step_cpu_s']:>6.1f} val {row['val_cpu_s']:>5.1f}  "
            f"val mAP50-95 {row['val_map50_95']}"
        )


def print_cycle(report: Mapping[str, Any]) -> None:
    s = report["split"]
    print(f"{'stage':<14} {'runs':>4} {'wall s':>8} {'share':>6} {'work s':>8}  bookkeeping")
    for row in s["stages"]:
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in row["bookkeeping"].items() if v >= 0.005)
        print(
            f"{row['stage']:<14} {row['runs']:>4} {row['wall_s']:>8.2f} {row['share']:>6.1%} "
            f"{row['work_s']:>8.2f}  {kinds}"
        )
    print(f"{'cycle':<14} {'':>4} {s['cycle_s']:>8.2f} {1:>6.0%} {s['work_s']:>8.2f}  {s['bookkeeping_s']:.2f}")
    print("\nbookkeeping by kind: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["by_kind"].items()))
    print(f"human (annotator simulator, left out): {report['human_s']:.1f} s; bootstrap {report['bootstrap_s']:.0f} s")
    print(
        "longest gaps between tasks: "
        + ", ".join(f"{g['after']}→{g['before']} {g['seconds']:.1f} s" for g in report["gaps"][:4])
    )
    print(f"train inside: {report['train_inside']}")
    print("candidate evaluations: " + "; ".join(f"{e['where']}: {e['times']}x" for e in report["evaluations"]))
    for v in report["verdicts"]:
        value = "-" if v["value"] is None else f"{v['value']:.3g}"
        print(f"  {v['goal']:<30} {value:>8} (goal <= {v['bound']:g}) {'ok' if v['ok'] else 'MISSED ' + v['why']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny world: 64 px, 1 epoch, ONNX only")
    parser.add_argument("--images", type=int, default=None, help="production images (default 12 quick, else 200)")
    parser.add_argument("--budget", type=int, default=None, help="images sampled (default 8 quick, else sample.budget)")
    parser.add_argument("--train-probe", action="store_true", help="retrain under each probe of PROBES")
    parser.add_argument("--probe-epochs", type=int, default=None, help="epochs per probe (default 3 quick, else cycle)")
    parser.add_argument("--rounds", type=int, default=2, help="turns each probe takes (default 2)")
    parser.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated, of {', '.join(PROBES)}")
    parser.add_argument(
        "--probe-only", action="store_true", help="no cycle: render the world, train from scratch under each probe"
    )
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "benchmarks" / "cycle.json")
    args = parser.parse_args(argv)
    apply_env()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    project = load_params(PROJECT_ROOT / "params.yaml")
    images = args.images or (12 if args.quick else 200)
    budget = args.budget or (8 if args.quick else project.sample.budget)
    root = (args.root or Path(tempfile.mkdtemp(prefix="visionloop-cycle-"))).resolve()
    load_before = os.getloadavg()
    os.environ["VISIONLOOP_DVC_REMOTE"] = str(root / "dvc-remote")  # never the user's shared remote
    here = Path.cwd()
    report: dict[str, Any] = {}
    probes = {name: PROBES[name] for name in args.probes.split(",")}
    if args.probe_only:
        try:
            report = probe_world(
                root / "loop", quick=args.quick, epochs=args.probe_epochs or 3, probes=probes, rounds=args.rounds
            )
        finally:
            os.chdir(here)
        return finish(report, args, load_before)
    try:
        with (
            label_studio(root) as _,
            prefect_test_harness(server_startup_timeout=120),  # 30 s is short on 2 busy cores
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        ):
            loop = root / "loop"
            params_file = make_project(loop, quick=args.quick, images=images, budget=budget, document_root=root)
            os.chdir(loop)  # the flows record in the DVC project of the working directory, as in a clone
            report = run_cycle(params_file, root=loop)
            if args.train_probe:
                epochs = args.probe_epochs or (3 if args.quick else load_params(params_file).cycle.epochs or 1)
                report["train_probe"] = probe_training(params_file, epochs=epochs, probes=probes, rounds=args.rounds)
    finally:
        os.chdir(here)
        if args.root is None and report:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    return finish(report, args, load_before)


def finish(report: dict[str, Any], args: argparse.Namespace, load_before: tuple[float, ...]) -> dict[str, Any]:
    """Host, settings and time stamp added; the tables printed; the report written."""
    report["host"] = host() | {"load_before": load_before, "load_after": os.getloadavg()}
    report["quick"] = args.quick
    report["ran_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print_report(report)
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
