"""Label efficiency: does active sampling beat random at equal labels? Several loop cycles in a row per policy.

A world is rendered and a first champion (v1) bootstrapped once per seed; its production stream (one batch per
cycle, drifting from severity 0.5 to 1) is held back. Then, for every sampling policy, the same v1 runs
``--cycles`` cycles of the real loop, each on the next batch: ``continuous_learning`` (predict, sample ``--budget``
images, queue them with the ``files`` label backend: task JSON to the outbox, no server) → the annotator
simulator answers the outbox into the inbox (:func:`tasks.sim.annotator.run_files`) → ``continuous_learning``
continues (label, validate, merge, retrain ``--epochs`` warm-started from the champion, evaluate, export ONNX,
gate, register, promote). Policies (``sample.strategies`` of params.yaml, ``sample.budget`` = ``--budget``):

* ``random``: only ``random`` (rate 1: a seeded uniform draw of the whole pool);
* ``default``: the strategies as params.yaml has them (``drift`` and ``disagreement`` find nothing without a
  monitor report or a second alias, as in a loop that runs no monitor);
* ``uncertainty``: only ``low_confidence``, ``entropy`` and ``margin``;
* ``mix+drift``: the default mix, with the monitor (``tasks.monitor``) run on the new batch's predictions before
  sampling, so ``drift`` samples the batches it flags.

The gate's rules are off (every candidate is promoted): the benchmark compares samplers, so each policy's next
cycle samples with the model its own labels trained (the gate is measured in ``benchmarks/gate.py``); the golden
loss per cycle is reported instead. After v1 and after every cycle the champion's ONNX file is scored on two fixed
test sets rendered once for the whole run with their own seed (never the policy's own holdouts): ``drifted`` (the
production stream's sources at severity 1) and ``golden`` (the source domain), mAP50-95 with a 95 % bootstrap
interval over images (:func:`tasks.core.bootstrap.bootstrap_map`).

Reported (``reports/benchmarks/loop.json`` + ``loop.png``): the learning curves (labels bought vs drifted and golden
mAP50-95), the ratio "labels the default mix needs to reach random's final drifted mAP / random's labels"
(interpolated on the curve; None with the reason when never reached) per seed with its spread, the recovery after
each cycle ``(mAP now − v1 on drifted) / (v1 on golden − v1 on drifted)``, the golden loss per cycle, the goals
(ratio ≤ 0.6, golden loss ≤ 1 pt per cycle, recovery ≥ 50 % after one cycle and ≥ 80 % after three) and the budget.

    python benchmarks/loop.py [--policies random default uncertainty mix+drift] [--cycles 4] [--seeds 7 8]
        [--images 150] [--budget 30] [--imgsz 128] [--epochs 10] [--bootstrap-epochs 30] [--test-images 200]
        [--root DIR] [--out reports/benchmarks/loop.json] [--quick]

Resumable: everything lives under ``--root`` (default ``$TMPDIR/visionloop-bench-loop``): ``settings.json``,
``params.source.yaml`` (params.yaml as the run found it: every loop is configured from this copy),
``results.json`` (v1 per seed and one record per finished (policy, seed, cycle)), the test sets, per seed the
bootstrapped ``base`` snapshot and each policy's parked loop folder. A re-run with the same settings continues
where the last one stopped (policies and seeds may be added); other settings need another ``--root``. Each
(policy, seed) runs in a subprocess (its log under ``logs/``) at the fixed path ``<root>/active``: MLflow and
the prediction log store absolute paths, so a loop folder is only ever used at that one path.

``--quick`` (tiny world: 64 px, 12 images a batch, 1 cycle, random and default, 1 epoch) is run by
``tests/integration/test_bench_loop.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dvc_scale import host
from soak import hold_back_batches

from tasks.config import Params, load_params
from tasks.core.plots import png_bytes, pyplot
from tasks.env import PROJECT_ROOT, apply_env
from tasks.io import write_bytes_atomic, write_json_atomic

POLICIES = ("random", "default", "uncertainty", "mix+drift")
STAGES = ("predict", "sample", "label", "validate", "merge", "train", "evaluate", "export", "gate")
UNCERTAINTY = ("low_confidence", "entropy", "margin")
HARNESS_TIMEOUT_S = 180
TEST_SEED = 20261201  # the test sets' own seed: the same images whatever --seeds says
RESAMPLES, LEVEL = 1000, 0.95
GOALS = {"ratio_max": 0.6, "golden_loss_pt_max": 1.0, "recovery_after_1": 0.5, "recovery_after_3": 0.8}
# seconds per cycle = FIXED_S + epochs x images trained and validated x S_PER_IMAGE_EPOCH x (imgsz / 160)^2, until a
# cycle of this run has been measured (then the median measured cycle). Calibrated 2026-12-01 on this project's
# 2-core host under a load average of ~6.7: one cycle at 128 px, 2 epochs, 22 labels took 390 s (train 133 s,
# everything else 257 s); a 2-epoch bootstrap 253 s (train 116 s). A quiet host is ~2x faster (README: the demo).
FIXED_S = 255.0
S_PER_IMAGE_EPOCH = 0.137
BOOTSTRAP_FIXED_S = 140.0  # world rendering, evaluate, export, registry of the first champion


@dataclass(frozen=True)
class Settings:
    """What shapes the world and the cycles: a run folder holds one of these (policies and seeds may grow)."""

    cycles: int
    images: int  # per production batch (one batch arrives per cycle)
    budget: int  # images sampled (and labeled) per cycle
    imgsz: int
    epochs: int  # retraining epochs per cycle
    bootstrap_epochs: int
    train_images: int
    val_images: int
    golden_images: int
    test_images: int  # per fixed test set (drifted, golden)
    quick: bool = False


FULL = Settings(  # params.yaml's sizes (world, train, cycle), 4 batches of 150 images, 30 labels a cycle
    cycles=4,
    images=150,
    budget=30,
    imgsz=160,
    epochs=10,
    bootstrap_epochs=30,
    train_images=600,
    val_images=100,
    golden_images=200,
    test_images=200,
)
QUICK = Settings(
    cycles=1,
    images=12,
    budget=6,
    imgsz=64,
    epochs=1,
    bootstrap_epochs=1,
    train_images=24,
    val_images=8,
    golden_images=8,
    test_images=12,
    quick=True,
)


# ------------------------------------------------------------------ the maths (pure)


def policy_strategies(policy: str, strategies: Mapping[str, Any]) -> dict[str, Any]:
    """``sample.strategies`` for a policy, from params.yaml's (``budget: 0`` switches a strategy off).

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {list(POLICIES)}")
    out = {name: dict(config) if config is not None else None for name, config in strategies.items()}
    keep: Sequence[str] | None = {"random": ("random",), "uncertainty": UNCERTAINTY}.get(policy)
    for name, config in out.items():
        if keep is not None and config is not None and name not in keep:
            config["budget"] = 0
    if policy == "random":
        out["random"] = {**(out.get("random") or {}), "rate": 1.0, "budget": 10**6}  # the global budget caps it
    return out


def labels_to_reach(labels: Sequence[float], maps: Sequence[float], target: float) -> float | None:
    """Labels at which a learning curve first reaches ``target``, linearly interpolated between two cycles.

    Args:
        labels: ``(N,)`` labels bought after each point (0 for v1), non-decreasing.
        maps: ``(N,)`` mAP at each point.
        target: the mAP to reach.

    Returns:
        The labels (``labels[0]`` when the first point reaches it already); None when no point reaches it.
    """
    for i, (n, m) in enumerate(zip(labels, maps, strict=True)):
        if m >= target:
            if i == 0 or maps[i - 1] >= m:
                return float(n)
            before_n, before_m = labels[i - 1], maps[i - 1]
            return float(before_n + (n - before_n) * (target - before_m) / (m - before_m))
    return None


def label_ratio(
    mix: tuple[Sequence[float], Sequence[float]], random: tuple[Sequence[float], Sequence[float]]
) -> tuple[float | None, str]:
    """Labels the mix needs to reach random's final mAP, as a share of random's labels; ``(None, why)`` when not.

    Args:
        mix, random: ``(labels, maps)`` curves, v1 first (see :func:`labels_to_reach`).

    Returns:
        ``(ratio, reason)``: ratio < 1 means the mix needed fewer labels than random for random's final mAP.
    """
    random_labels, random_maps = random
    if len(random_labels) < 2 or random_labels[-1] <= 0:
        return None, "random bought no labels"
    target = random_maps[-1]
    if target <= random_maps[0]:
        return None, f"random's final mAP {target:.4f} is not above v1's {random_maps[0]:.4f}: nothing to reach"
    needed = labels_to_reach(mix[0], mix[1], target)
    if needed is None:
        return None, f"the mix never reached random's final mAP {target:.4f} (best {max(mix[1]):.4f})"
    return needed / random_labels[-1], f"{needed:.0f} labels vs random's {random_labels[-1]:.0f}"


def recovery(now: float, *, v1_drifted: float, v1_golden: float) -> float | None:
    """Share of the drift's drop won back: ``(now − v1 on drifted) / (v1 on golden − v1 on drifted)``.

    None when the drift cost v1 nothing (no drop, or drifted above golden): there is nothing to recover.
    """
    drop = v1_golden - v1_drifted
    if drop <= 0:
        return None
    return (now - v1_drifted) / drop


def golden_losses(golden: Sequence[float]) -> list[float]:
    """Golden mAP50-95 lost in each cycle, in points: ``100 x (before − after)``; ``golden[0]`` is v1's."""
    return [100.0 * (a - b) for a, b in itertools.pairwise(golden)]


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min, max and count of the values that are not None (None for each when there is none)."""
    found = [v for v in values if v is not None]
    if not found:
        return {"median": None, "min": None, "max": None, "n": 0, "of": len(values)}
    return {
        "median": statistics.median(found),
        "min": min(found),
        "max": max(found),
        "n": len(found),
        "of": len(values),
    }


def estimate_cycle_s(settings: Settings, cycle: int) -> float:
    """Estimated seconds of cycle ``cycle`` (1-based): fixed part + retraining on history + labels so far."""
    # merge.recency repeats the newer cycles' labels; validation runs on the historical val set every epoch
    trained = settings.train_images + settings.val_images + 2 * settings.budget * cycle
    return FIXED_S + settings.epochs * trained * S_PER_IMAGE_EPOCH * (settings.imgsz / 160) ** 2


def budget(
    settings: Settings,
    *,
    policies: int,
    seeds: int,
    measured: Sequence[float] = (),
    pending_cycles: int | None = None,
    pending_bootstraps: int | None = None,
) -> dict[str, Any]:
    """The run's budget: seconds per cycle (measured median when some cycle ran, else the model) x policies x cycles
    x seeds, plus one bootstrap per seed; ``remaining_s`` for the cycles and bootstraps still to run (all when not
    given)."""
    model = statistics.mean(estimate_cycle_s(settings, k) for k in range(1, settings.cycles + 1))
    per_cycle = statistics.median(measured) if measured else model
    trained = settings.train_images + settings.val_images
    boot = BOOTSTRAP_FIXED_S + settings.bootstrap_epochs * trained * S_PER_IMAGE_EPOCH * (settings.imgsz / 160) ** 2
    total = per_cycle * policies * settings.cycles * seeds + boot * seeds
    todo = policies * settings.cycles * seeds if pending_cycles is None else pending_cycles
    remaining = per_cycle * todo + boot * (seeds if pending_bootstraps is None else pending_bootstraps)
    return {
        "s_per_cycle": round(per_cycle, 1),
        "s_per_cycle_from": f"median of {len(measured)} measured cycles" if measured else "the cost model",
        "s_per_bootstrap": round(boot, 1),
        "policies": policies,
        "cycles": settings.cycles,
        "seeds": seeds,
        "total_s": round(total, 0),
        "total_h": round(total / 3600, 2),
        "remaining_s": round(remaining, 0),
    }


# ------------------------------------------------------------------ summary (pure)


def curve(v1: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], set_name: str) -> tuple[list[float], list[float]]:
    """``(labels, mAP50-95)`` of the champion on ``set_name``: v1 at 0 labels, then each cycle in order."""
    ordered = sorted(rows, key=lambda r: r["cycle"])
    labels = [0.0] + [float(r["labels"]) for r in ordered]
    maps = [v1[set_name]["map50_95"]] + [r["champion"][set_name]["map50_95"] for r in ordered]
    return labels, maps


def summarise(results: Mapping[str, Any], *, policies: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Curves, recovery, golden loss per (policy, seed), the label ratio per seed with its spread, the goals."""
    per: dict[str, dict[str, Any]] = {}
    for policy in policies:
        per[policy] = {}
        for seed in seeds:
            v1 = results["v1"].get(str(seed))
            rows = [r for r in results["cycles"] if r["policy"] == policy and r["seed"] == seed]
            if v1 is None or not rows:
                continue
            drifted, golden = curve(v1, rows, "drifted"), curve(v1, rows, "golden")
            vd, vg = v1["drifted"]["map50_95"], v1["golden"]["map50_95"]
            per[policy][str(seed)] = {
                "labels": drifted[0],
                "drifted": drifted[1],
                "golden": golden[1],
                "recovery": [recovery(m, v1_drifted=vd, v1_golden=vg) for m in drifted[1][1:]],
                "golden_loss_pt": golden_losses(golden[1]),
                "golden_loss_vs_v1_pt": [100.0 * (vg - g) for g in golden[1][1:]],
                "s_per_cycle": [r["wall_s"] for r in sorted(rows, key=lambda r: r["cycle"])],
            }
    ratios: dict[str, tuple[float | None, str]] = {}
    for seed in seeds:
        mine, theirs = per.get("default", {}).get(str(seed)), per.get("random", {}).get(str(seed))
        if mine and theirs:
            ratios[str(seed)] = label_ratio((mine["labels"], mine["drifted"]), (theirs["labels"], theirs["drifted"]))
    losses = [x for p in per.values() for s in p.values() for x in s["golden_loss_pt"]]
    after = {
        k: [s["recovery"][k - 1] for p in per.values() for s in p.values() if len(s["recovery"]) >= k] for k in (1, 3)
    }
    ratio_spread = spread([r for r, _ in ratios.values()])
    worst_loss = max(losses) if losses else None
    recovered = {k: spread(after[k]) for k in (1, 3)}
    return {
        "policies": per,
        "ratio": {
            "what": "labels the default mix needs to reach random's final drifted mAP50-95 / random's labels",
            "per_seed": {seed: {"ratio": r, "why": why} for seed, (r, why) in ratios.items()},
            **ratio_spread,
        },
        "goals": {
            "ratio": {
                "goal": f"<= {GOALS['ratio_max']} (median over seeds)",
                "median": ratio_spread["median"],
                "met": _met(ratio_spread["median"], GOALS["ratio_max"], below=True) if ratios else None,
            },
            "golden_loss_pt": {
                "goal": f"<= {GOALS['golden_loss_pt_max']} in every cycle",
                "worst": worst_loss,
                "met": _met(worst_loss, GOALS["golden_loss_pt_max"], below=True),
            },
            **{
                f"recovery_after_{k}": {
                    "goal": f">= {GOALS[f'recovery_after_{k}']} for every policy and seed",
                    **recovered[k],
                    "met": _met(recovered[k]["min"], GOALS[f"recovery_after_{k}"], below=False),
                }
                for k in (1, 3)
            },
        },
    }


def _met(value: float | None, goal: float, *, below: bool) -> bool | None:
    """Whether ``value`` meets ``goal`` (at most it when ``below``, else at least); None without a value."""
    if value is None:
        return None
    return value <= goal if below else value >= goal


def pending_cycles(results: Mapping[str, Any], policy: str, seed: int, cycles: int) -> list[int]:
    """The cycles (1-based) of (policy, seed) with no record yet: what a re-run still runs."""
    done = {r["cycle"] for r in results["cycles"] if r["policy"] == policy and r["seed"] == seed}
    return [k for k in range(1, cycles + 1) if k not in done]


# ------------------------------------------------------------------ the run folder


def loop_params_dict(
    source: Path, active: Path, settings: Settings, *, policy: str, seed: int, document_root: Path
) -> dict[str, Any]:
    """params.yaml for one (policy, seed) loop at ``active``, from the ``source`` params (see the module docstring
    for what is changed)."""
    data = yaml.safe_load(source.read_text())
    data["base"].update(imgsz=settings.imgsz, seed=seed)
    data["base"]["paths"] = {key: str(active / value) for key, value in data["base"]["paths"].items()}
    world = data["world"]
    world.update(
        image_size=[settings.imgsz, settings.imgsz],
        train_images=settings.train_images,
        val_images=settings.val_images,
        golden_images=settings.golden_images,
    )
    world["production"].update(batches=settings.cycles, images_per_batch=settings.images)
    data["train"].update(epochs=settings.bootstrap_epochs)
    data["cycle"].update(epochs=settings.epochs)
    data["registry"].update(tracking_uri=f"sqlite:///{active / 'mlflow.db'}", artifact_root=str(active / "mlartifacts"))
    data["promote"].update(audit_log=str(active / "data" / "audit" / "aliases.jsonl"))
    data["label"].update(backend="files", document_root=str(document_root), min_labeled=1, wait_timeout_s=0)
    data["sample"].update(budget=settings.budget, max_per_day=None)
    data["sample"]["strategies"] = policy_strategies(policy, data["sample"]["strategies"])
    data["predict"]["shadow"].update(share=0.0)  # no challenger to shadow: every candidate is promoted
    data["export"].update(targets=["onnx"])
    data["gate"].update(min_production_gain=-1.0, max_golden_loss=None, max_class_drop=None, max_latency_factor=None)
    data["monitor"]["trigger"].update(enabled=False)  # the benchmark drives the cycles itself
    if settings.quick:  # 1-epoch models: their boxes sit far below predict.conf, and their mAP is noise
        data["predict"].update(conf=0.001, max_det=5, evidence_conf=None)  # no band below so low a conf
        data["export"].update(max_map_drop=1.0)
    return data


def write_params(active: Path, settings: Settings, *, policy: str, seed: int, root: Path) -> Path:
    """Write ``<active>/params.yaml`` for (policy, seed) and return it."""
    data = loop_params_dict(source_params(root), active, settings, policy=policy, seed=seed, document_root=root)
    active.mkdir(parents=True, exist_ok=True)
    path = active / "params.yaml"
    write_bytes_atomic(path, yaml.safe_dump(data, sort_keys=False).encode())
    return path


def source_params(root: Path) -> Path:
    """``<root>/params.source.yaml``: the project's params.yaml as the run found it on its first start; every
    (policy, seed) of the run is configured from it, whatever params.yaml says by the time it runs."""
    path = root / "params.source.yaml"
    if not path.is_file():
        write_bytes_atomic(path, (PROJECT_ROOT / "params.yaml").read_bytes())
    elif path.read_bytes() != (PROJECT_ROOT / "params.yaml").read_bytes():
        print(f"note: params.yaml changed since this run started; it goes on with {path}", flush=True)
    return path


def read_results(root: Path) -> dict[str, Any]:
    """``<root>/results.json``: ``v1`` (seed -> scores) and ``cycles`` (one record per finished cycle)."""
    path = root / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {"v1": {}, "cycles": []}


def done_cycles(results: Mapping[str, Any], policy: str, seed: int) -> int:
    """How many cycles of (policy, seed) are recorded."""
    return sum(1 for r in results["cycles"] if r["policy"] == policy and r["seed"] == seed)


def check_settings(root: Path, settings: Settings) -> None:
    """Record the settings of a new run folder; refuse a run folder made with other settings."""
    path = root / "settings.json"
    if path.is_file():
        found = json.loads(path.read_text())
        if found != asdict(settings):
            differ = sorted(k for k in found if found[k] != asdict(settings).get(k))
            raise SystemExit(
                f"{root} holds a run with other settings ({', '.join(differ)}): use the same flags, or --root "
                "elsewhere to start a new run"
            )
        return
    write_json_atomic(path, asdict(settings))


def render_test_sets(root: Path, params: Params, n: int) -> dict[str, Path]:
    """The fixed test sets (rendered once per run folder): ``drifted`` (production sources at severity 1) and
    ``golden`` (source domain), ``n`` images each, seeded by :data:`TEST_SEED`."""
    from tasks.sim.drift import plan_sources
    from tasks.sim.sets import render_batch, render_set, set_seed

    world, classes = params.world, params.base.classes
    size = (world.image_size[0], world.image_size[1])
    sets = {"drifted": root / "tests" / "drifted", "golden": root / "tests" / "golden"}
    if (root / "tests" / "done").is_file():
        return sets
    shutil.rmtree(root / "tests", ignore_errors=True)
    plans = plan_sources(
        world.source,
        world.scenarios,
        world.production.sources,
        scenario=world.production.scenario,
        severity=1.0,
        images=n,
    )
    out = sets["drifted"]
    seed = set_seed(TEST_SEED, "loop-drifted")
    render_batch(
        plans,
        classes=classes,
        image_size=size,
        seed=seed,
        prefix="drifted",
        images_dir=out / "images",
        labels_dir=out / "labels",
        sources_csv=out / "sources.csv",
    )
    out = sets["golden"]
    render_set(
        world.source,
        n=n,
        classes=classes,
        image_size=size,
        seed=set_seed(TEST_SEED, "loop-golden"),
        prefix="golden",
        images_dir=out / "images",
        labels_dir=out / "labels",
    )
    (root / "tests" / "done").write_text("rendered\n")
    return sets


# ------------------------------------------------------------------ one (policy, seed): the worker


def score(params: Params, model: Path, sets: Mapping[str, Path], *, seed: int) -> dict[str, Any]:
    """mAP50-95 / mAP50 of ``model`` on each test set, with the bootstrap interval of mAP50-95 over images."""
    from tasks.core.bootstrap import bootstrap_map
    from tasks.targets.gate_scoring import score_model

    scores = score_model(model, dict(sets), params=params)
    out = {}
    for name, s in scores.sets.items():
        ci = bootstrap_map(s.matches, resamples=RESAMPLES, seed=seed, level=LEVEL)
        out[name] = {"map50_95": s.map50_95, "map50": s.map50, "low": ci.low, "high": ci.high, "images": s.images}
    return out


def activate(root: Path, policy: str, seed: int, results: Mapping[str, Any]) -> Path:
    """Put (policy, seed)'s loop folder at ``<root>/active`` (parking whatever else is there) and return it.

    Raises:
        SystemExit: cycles of (policy, seed) are recorded but its loop folder is gone.
    """
    active = root / "active"
    me = {"policy": policy, "seed": seed}
    if _owner(active) == me:
        return active
    park(root)
    parked = root / f"seed-{seed}" / policy
    if parked.is_dir():
        parked.rename(active)
    elif done_cycles(results, policy, seed):
        raise SystemExit(
            f"{policy} seed {seed}: {done_cycles(results, policy, seed)} cycles recorded in {root / 'results.json'} "
            f"but its loop folder {parked} is gone; remove its records from results.json to run it again"
        )
    else:
        shutil.copytree(root / f"seed-{seed}" / "base", active, symlinks=True)
        write_json_atomic(active / "owner.json", me)
    return active


def _owner(active: Path) -> dict[str, Any] | None:
    path = active / "owner.json"
    return json.loads(path.read_text()) if path.is_file() else None


def park(root: Path) -> None:
    """Move the policy loop folder at ``<root>/active`` to ``seed-<s>/<policy>``; remove anything else there (an
    unfinished bootstrap is redone)."""
    active = root / "active"
    owner = _owner(active)
    if owner is not None and owner["policy"] != "base":
        parked = root / f"seed-{owner['seed']}" / str(owner["policy"])
        shutil.rmtree(parked, ignore_errors=True)
        parked.parent.mkdir(parents=True, exist_ok=True)
        active.rename(parked)
    elif active.exists():
        shutil.rmtree(active)


def bootstrap_seed(root: Path, settings: Settings, seed: int, sets: Mapping[str, Path]) -> None:
    """World + v1 for ``seed`` at ``<root>/active``, scored and recorded, then snapshotted to ``seed-<s>/base``."""
    from flows.bootstrap import bootstrap

    active = root / "active"
    park(root)
    write_json_atomic(active / "owner.json", {"policy": "base", "seed": seed})
    params_file = write_params(active, settings, policy="default", seed=seed, root=root)
    params = load_params(params_file)
    _use_store(params)
    started = time.perf_counter()
    bootstrap(params_path=str(params_file))
    hold_back_batches(params, active / "incoming")
    v1 = score(params, params.base.paths.models / "export" / "model.onnx", sets, seed=seed)
    v1["wall_s"] = time.perf_counter() - started
    base = root / f"seed-{seed}" / "base"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(active, base, symlinks=True)
    shutil.rmtree(active)
    results = read_results(root)
    results["v1"][str(seed)] = v1
    write_json_atomic(root / "results.json", results)


def _use_store(params: Params) -> None:
    """This loop's MLflow store, whatever the environment names (``MLFLOW_TRACKING_URI`` wins over params)."""
    os.environ["MLFLOW_TRACKING_URI"] = params.registry.tracking_uri
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


def run_policy_cycle(root: Path, params_file: Path, params: Params, policy: str, cycle: int) -> dict[str, Any]:
    """Cycle ``cycle`` of the loop at ``<root>/active``: the next batch arrives, the loop runs to the labels, the
    simulator answers the outbox, the loop ends. Re-entrant: a cycle that stopped half-way is continued."""
    import pyarrow.parquet as pq

    from flows.continuous_learning import continuous_learning
    from tasks import cycle as cycles
    from tasks import monitor, predict
    from tasks.contracts.ledger import LABELED, ledger_path, read_ledger
    from tasks.contracts.sample_manifest import manifest_path
    from tasks.sim import annotator

    timings: dict[str, float] = {}
    start = time.perf_counter()
    production, incoming = params.base.paths.production, root / "active" / "incoming"
    arrived = sorted(p.name for p in production.iterdir() if p.is_dir()) if production.is_dir() else []
    if len(arrived) < cycle:
        batch = sorted(p for p in incoming.iterdir() if p.is_dir())[0]
        batch.rename(production / batch.name)
    # a cycle closed before its record was written is not run again
    fresh = not cycles.open_cycles(params) and sum(s.status == "closed" for s in _states(params)) < cycle
    flagged = None
    if policy == "mix+drift" and fresh:
        mark = time.perf_counter()
        predict.run(params)
        flagged = monitor.run(params).flagged_batches
        timings["monitor_s"] = time.perf_counter() - mark
    if fresh:
        mark = time.perf_counter()
        continuous_learning(params_path=str(params_file), return_state=True)
        timings["to_labels_s"] = time.perf_counter() - mark
    open_now = cycles.open_cycles(params)
    answered = 0
    if open_now:
        name = open_now[-1].cycle
        mark = time.perf_counter()
        answered = annotator.run_files(params).answered
        timings["annotate_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        continuous_learning(params_path=str(params_file), cycle=name)
        timings["train_run_s"] = time.perf_counter() - mark
    closed = sorted((s for s in _states(params) if s.status == "closed"), key=lambda s: s.started_at)
    last = closed[-1]
    ledger = read_ledger(ledger_path(params))
    manifest = manifest_path(params.base.paths.samples, last.cycle)
    strategies = (
        pq.read_table(manifest, columns=["strategy"]).column("strategy").to_pylist() if manifest.is_file() else []
    )
    return {
        "cycle_name": last.cycle,
        "outcome": last.outcome,
        "labels": sum(1 for r in ledger.values() if r["status"] == LABELED),
        "labels_cycle": sum(1 for r in ledger.values() if r["status"] == LABELED and r["cycle"] == last.cycle),
        "selected": len(strategies),
        "by_strategy": {s: strategies.count(s) for s in sorted(set(strategies))},
        "answered": answered,
        "flagged_batches": flagged,
        "stage_s": timings,
        "stages_wall_s": stage_walls(params.base.paths.reports) if last.outcome in ("promote", "reject") else {},
        "loop_s": time.perf_counter() - start,
    }


def stage_walls(reports: Path) -> dict[str, float]:
    """``wall_s`` of each stage report the cycle left in ``reports`` (what the retraining share of a cycle is)."""
    walls = {}
    for stage in STAGES:
        path = reports / f"{stage}.json"
        found = json.loads(path.read_text()).get("wall_s") if path.is_file() else None
        if isinstance(found, int | float):
            walls[stage] = float(found)
    return walls


def _states(params: Params) -> list[Any]:
    from tasks import cycle as cycles

    root = params.base.paths.samples
    found = [cycles.read_state(params, p.name) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    return [s for s in found if s is not None]


def run_worker(root: Path, policy: str, seed: int) -> None:
    """One (policy, seed) in this process: its remaining cycles, each recorded; policy ``base`` bootstraps the seed."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    apply_env()
    settings = Settings(**json.loads((root / "settings.json").read_text()))
    os.environ["VISIONLOOP_DVC_REMOTE"] = str(root / "dvc-remote")  # never the user's shared remote
    # a shared, busy host can take over the harness's default 30 s to start the temporary API
    with (
        prefect_test_harness(server_startup_timeout=HARNESS_TIMEOUT_S),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        sets = {"drifted": root / "tests" / "drifted", "golden": root / "tests" / "golden"}
        if policy == "base":  # its own process: MLflow keeps the store it opened, and active/ is replaced after
            print(f"bootstrap seed {seed}", flush=True)
            bootstrap_seed(root, settings, seed, sets)
            return
        results = read_results(root)
        active = activate(root, policy, seed, results)
        params_file = write_params(active, settings, policy=policy, seed=seed, root=root)
        params = load_params(params_file)
        _use_store(params)
        for k in pending_cycles(results, policy, seed, settings.cycles):
            before = [r for r in read_results(root)["cycles"] if r["policy"] == policy and r["seed"] == seed]
            previous = max(before, key=lambda r: r["cycle"]) if before else {"champion": results["v1"][str(seed)]}
            started = time.perf_counter()
            row = run_policy_cycle(root, params_file, params, policy, k)
            candidate = params.base.paths.models / "export" / "model.onnx"
            scored = score(params, candidate, sets, seed=seed) if row["outcome"] in ("promote", "reject") else None
            champion: dict[str, Any] = (
                scored if scored is not None and row["outcome"] == "promote" else previous["champion"]
            )
            record = {"policy": policy, "seed": seed, "cycle": k, **row, "candidate": scored, "champion": champion}
            record["wall_s"] = time.perf_counter() - started
            everything = read_results(root)
            everything["cycles"].append(record)
            write_json_atomic(root / "results.json", everything)
            print(
                f"{policy} seed {seed} cycle {k}: {row['outcome']}, {row['labels']} labels, drifted "
                f"{champion['drifted']['map50_95']:.4f}, golden {champion['golden']['map50_95']:.4f} "
                f"in {record['wall_s']:.0f} s",
                flush=True,
            )


# ------------------------------------------------------------------ report


def plot_curves(results: Mapping[str, Any], summary: Mapping[str, Any]) -> bytes | None:
    """Two panels (drifted, golden): labels bought vs the champion's mAP50-95 per policy, the mean over seeds, the
    band the 95 % bootstrap interval (one seed) or the seeds' min..max (several); PNG bytes, None without curves."""
    per = summary["policies"]
    if not any(per.values()):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, set_name in zip(axes[0], ("drifted", "golden"), strict=True):
        for policy, seeds in per.items():
            if not seeds:
                continue
            curves = list(seeds.values())
            n = min(len(c["labels"]) for c in curves)
            labels = [statistics.mean(c["labels"][i] for c in curves) for i in range(n)]
            values = [[c[set_name][i] for c in curves] for i in range(n)]
            if len(curves) == 1:
                seed = next(iter(seeds))
                rows = sorted(
                    (r for r in results["cycles"] if r["policy"] == policy and str(r["seed"]) == seed),
                    key=lambda r: r["cycle"],
                )
                points = [results["v1"][seed][set_name]] + [r["champion"][set_name] for r in rows]
                low, high = [p["low"] for p in points[:n]], [p["high"] for p in points[:n]]
            else:
                low, high = [min(v) for v in values], [max(v) for v in values]
            line = ax.plot(labels, [statistics.mean(v) for v in values], marker="o", label=policy)
            ax.fill_between(labels, low, high, alpha=0.15, color=line[0].get_color())
        ax.set_xlabel("labels bought")
        ax.set_ylabel("mAP50-95")
        ax.set_title(f"{set_name} test set")
        ax.legend(fontsize=8)
    return png_bytes(fig)


def print_table(summary: Mapping[str, Any]) -> None:
    """One row per (policy, seed, point): labels, drifted and golden mAP50-95, recovery, golden loss."""
    print(
        f"\n{'policy':<12}{'seed':>5}{'cycle':>6}{'labels':>7}{'drifted':>9}{'golden':>8}{'recovery':>9}{'loss pt':>8}"
    )
    for policy, seeds in summary["policies"].items():
        for seed, c in seeds.items():
            for i, n in enumerate(c["labels"]):
                rec = c["recovery"][i - 1] if i else None
                loss = c["golden_loss_pt"][i - 1] if i else None
                print(
                    f"{policy:<12}{seed:>5}{i:>6}{n:>7.0f}{c['drifted'][i]:>9.4f}{c['golden'][i]:>8.4f}"
                    f"{'' if rec is None else f'{100 * rec:.0f} %':>9}{'' if loss is None else f'{loss:+.1f}':>8}"
                )
    ratio = summary["ratio"]
    print(f"\nratio ({ratio['what']}): median {ratio['median']} over {ratio['n']}/{ratio['of']} seeds")
    for seed, r in ratio["per_seed"].items():
        print(f"  seed {seed}: {r['ratio']} ({r['why']})")
    print(f"goals: {json.dumps(summary['goals'])}")


def run(root: Path, settings: Settings, *, policies: Sequence[str], seeds: Sequence[int], out: Path) -> dict[str, Any]:
    """The whole benchmark (resuming what ``root`` holds); writes ``out`` and its PNG beside it; returns the report."""
    apply_env()
    root.mkdir(parents=True, exist_ok=True)
    check_settings(root, settings)
    params = load_params(write_params(root / "scratch", settings, policy="default", seed=seeds[0], root=root))
    sets = render_test_sets(root, params, settings.test_images)
    started = time.perf_counter()
    results = read_results(root)
    measured = [r["wall_s"] for r in results["cycles"]]
    plan = budget(
        settings,
        policies=len(policies),
        seeds=len(seeds),
        measured=measured,
        pending_cycles=sum(len(pending_cycles(results, p, s, settings.cycles)) for p in policies for s in seeds),
        pending_bootstraps=sum(str(s) not in results["v1"] for s in seeds),
    )
    print(f"budget: {json.dumps(plan)}", flush=True)
    (root / "logs").mkdir(exist_ok=True)
    for seed in seeds:
        for policy in ["base", *policies]:
            results = read_results(root)
            if (
                str(seed) in results["v1"]
                if policy == "base"
                else not pending_cycles(results, policy, seed, settings.cycles)
            ):
                continue
            log = root / "logs" / f"{policy}-s{seed}.log"
            print(f"{policy} seed {seed}: running (log {log})", flush=True)
            with log.open("a") as sink:
                done = subprocess.run(
                    [sys.executable, __file__, "--root", str(root), "--worker", policy, str(seed)],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    check=False,
                )
            if done.returncode != 0:
                tail = log.read_text()[-3000:]
                raise SystemExit(f"{policy} seed {seed} failed (exit {done.returncode}); end of {log}:\n{tail}")
            for row in read_results(root)["cycles"]:
                if row["policy"] == policy and row["seed"] == seed:
                    print(
                        f"  cycle {row['cycle']}: {row['outcome']}, {row['labels']} labels, drifted "
                        f"{row['champion']['drifted']['map50_95']:.4f}, golden "
                        f"{row['champion']['golden']['map50_95']:.4f}, {row['wall_s']:.0f} s",
                        flush=True,
                    )
    results = read_results(root)
    summary = summarise(results, policies=policies, seeds=seeds)
    measured = [r["wall_s"] for r in results["cycles"]]
    report = {
        "settings": asdict(settings),
        "policies": list(policies),
        "seeds": list(seeds),
        "budget_at_start": plan,
        "budget": budget(settings, policies=len(policies), seeds=len(seeds), measured=measured),
        "measured_s_per_cycle": spread(measured),
        "bootstrap_s": {seed: v["wall_s"] for seed, v in results["v1"].items()},
        "v1": {seed: {k: v for k, v in s.items() if k != "wall_s"} for seed, s in results["v1"].items()},
        **summary,
        "cycles": [r for r in results["cycles"] if r["policy"] in policies and r["seed"] in seeds],
        "test_sets": {name: str(path) for name, path in sets.items()},
        "root": str(root),
        "wall_s_this_run": round(time.perf_counter() - started, 1),
        "host": host(),
    }
    print_table(summary)
    write_json_atomic(out, report)
    png = plot_curves(results, summary)
    if png is not None:
        write_bytes_atomic(out.with_suffix(".png"), png)
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if png else ""))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[7])
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--images", type=int, default=None, help="images per production batch (one per cycle)")
    parser.add_argument("--budget", type=int, default=None, help="images sampled and labeled per cycle")
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="retraining epochs per cycle")
    parser.add_argument("--bootstrap-epochs", type=int, default=None)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None, help="images per fixed test set")
    parser.add_argument("--quick", action="store_true", help="tiny world, 1 cycle, random and default, 1 epoch")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "visionloop-bench-loop")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "benchmarks" / "loop.json")
    parser.add_argument("--worker", nargs=2, metavar=("POLICY", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.worker:
        run_worker(root, args.worker[0], int(args.worker[1]))
        return None
    base = QUICK if args.quick else FULL
    given = {
        "cycles": args.cycles,
        "images": args.images,
        "budget": args.budget,
        "imgsz": args.imgsz,
        "epochs": args.epochs,
        "bootstrap_epochs": args.bootstrap_epochs,
        "train_images": args.train_images,
        "test_images": args.test_images,
    }
    settings = Settings(**{**asdict(base), **{k: v for k, v in given.items() if v is not None}})
    policies = args.policies or (["random", "default"] if args.quick else list(POLICIES))
    if min(settings.budget, settings.cycles, settings.images) < 1:
        raise SystemExit("--budget, --cycles and --images must be at least 1")
    return run(root, settings, policies=policies, seeds=args.seeds, out=args.out)


if __name__ == "__main__":
    main()
