"""Stage ``gate``: should the candidate replace the champion? Both are re-scored on the very same images.

Contract:
    inputs: a candidate model artifact and, unless this is the first cycle, the champion's (``.pt``, ``.onnx``
        or OpenVINO); the golden set ``base.paths.golden`` (forgetting check) and the union of every production
        holdout ``base.paths.holdouts/<cycle>/`` that has ``images/`` + ``labels/`` (none yet: that comparison
        is skipped with a reason); for the latency rules, the artifact each model deploys (the candidate's export
        selection, the champion's ``deploy.artifact``; without both, the scored files of both are timed);
    params: ``base`` (classes, imgsz, device, seed, paths), ``evaluate`` (inference thresholds, batch),
        ``base.threads``, ``export.speed.static_shapes``, ``gate`` (the policy, the bootstrap, ``gate.speed``);
    outputs: ``<reports>/gate.json`` (:class:`~tasks.contracts.reports.gate.GateReport`): the decision
        (``promote`` / ``reject``) and its reasons, per-set mAP50-95 of both models, the paired-bootstrap
        confidence interval of the difference, per-class AP, and the paired latency pass (both per-round series,
        the per-round ratios, the estimates and bounds, what was timed);
    side effects: the detection cache (``evaluate.cache``; its key holds the set's hash, so both models are
        still scored on the very same images); promotion itself belongs to the registry.

How: each model's detections are matched to the ground truth once, image by image, with COCO's rules
(:func:`tasks.core.coco.match_coco`). A paired bootstrap over images (:func:`tasks.core.bootstrap.paired_bootstrap`)
then re-accumulates COCO's 101-point interpolated precision from those stored matches for every resample (no COCO
re-evaluation per resample); on the full set this reproduces faster-coco-eval's ``AP`` to 1e-6, which
:func:`tasks.targets.gate_scoring.score_model` checks on every run.

Latency is not taken from the scoring pass (each model alone, one after the other):
:func:`tasks.targets.latency.measure_latency` times both deployed artifacts in one pass, taking turns round by
round on the same images, and :func:`tasks.decisions.gate.compare` judges the per-round candidate/champion ratio
with a bootstrap interval over rounds (see there why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tasks.cli import stage_main
from tasks.config import Params
from tasks.contracts.deployed import Deployed
from tasks.contracts.reports import write_report
from tasks.contracts.reports.gate import GateReport, SetComparison
from tasks.contracts.yolo_labels import list_images
from tasks.core.coco import SetScore
from tasks.decisions.gate import GOLDEN, PRODUCTION, Decision, GatePolicy, ModelScores, compare, no_ap
from tasks.targets.gate_scoring import score_model
from tasks.targets.latency import measure_latency, runtime_of
from tasks.targets.scoring import detection_cache_of

log = logging.getLogger(__name__)

STAGE = "gate"


def find_holdouts(root: Path) -> list[Path]:
    """The production holdout sets: every ``root/<cycle>/`` with ``images/`` and ``labels/``, sorted by name.

    Hidden folders (the merge stage's staging copies) are not holdouts; a cycle whose holdout holds no image
    (the merge stage writes one when a cycle had nothing to hold out) is skipped with a log line.
    """
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not ((folder / "images").is_dir() and (folder / "labels").is_dir()):
            continue
        if not list_images(folder / "images"):
            log.info("holdout %s has no images: skipped", folder)
            continue
        found.append(folder)
    return found


def gate_sets(params: Params) -> dict[str, list[Path]]:
    """The sets both models are scored on: golden always, production when any holdout exists."""
    sets = {GOLDEN: [params.base.paths.golden]}
    holdouts = find_holdouts(params.base.paths.holdouts)
    if holdouts:
        sets[PRODUCTION] = holdouts
    return sets


# ------------------------------------------------------------------------------------------------------ report


def _per_class(cand: SetScore, champ: SetScore | None) -> dict[str, dict[str, float | int | None]]:
    """Both models' AP50-95 per class on one set, the difference where both have one, and the boxes."""
    per_class: dict[str, dict[str, float | int | None]] = {}
    for cls, cand_ap in cand.per_class_ap.items():
        champ_ap = champ.per_class_ap.get(cls) if champ is not None else None
        both = champ_ap is not None and not no_ap(cand_ap) and not no_ap(champ_ap)
        per_class[cls] = {
            "candidate": cand_ap,
            "champion": champ_ap,
            "diff": cand_ap - champ_ap if both and champ_ap is not None else None,
            "boxes": cand.boxes_per_class.get(cls, 0),
        }
    return per_class


def build_report(
    candidate: ModelScores, champion: ModelScores | None, decision: Decision, *, policy: GatePolicy, digest: str = ""
) -> GateReport:
    """Assemble the report record (small: no matches) from the scores and the decision."""
    sets: dict[str, SetComparison] = {}
    for name, cand in candidate.sets.items():
        champ = champion.sets[name] if champion is not None else None
        sets[name] = SetComparison(
            images=cand.images,
            boxes=sum(cand.boxes_per_class.values()),
            paths=list(cand.paths),
            candidate_map50_95=cand.map50_95,
            champion_map50_95=champ.map50_95 if champ is not None else None,
            candidate_map50=cand.map50,
            champion_map50=champ.map50 if champ is not None else None,
            interval=decision.intervals.get(name),
            per_class=_per_class(cand, champ),
        )
    return GateReport(
        decision=decision.decision,
        reasons=decision.reasons,
        candidate=candidate.model,
        champion=champion.model if champion is not None else None,
        sets=sets,
        latency_ms_per_image={
            "candidate": candidate.ms_per_image,
            "champion": champion.ms_per_image if champion is not None else None,
        },
        policy=asdict(policy),
        params_digest=digest,
        latency=_latency_report(candidate, champion, decision),
    )


def _latency_report(candidate: ModelScores, champion: ModelScores | None, decision: Decision) -> dict[str, Any] | None:
    """The paired latency pass for the report: both series, the per-round ratios, the estimates and bounds."""
    if champion is None or candidate.latency is None or champion.latency is None:
        return None
    out: dict[str, Any] = {
        "candidate": asdict(candidate.latency),
        "champion": asdict(champion.latency),
        "rounds": len(candidate.latency.round_ms),
        "runs_per_round": candidate.latency.runs_per_round,
        "threads": candidate.latency.threads,
        "timed": f"{candidate.latency.runtime} vs {champion.latency.runtime}",
        "fallback": candidate.latency.fallback,
    }
    if decision.latency is not None:
        out |= {
            "ratios": list(decision.latency.ratios),
            "ratio": asdict(decision.latency.ratio),
            "candidate_ms": asdict(decision.latency.candidate_ms),
            "champion_ms": decision.latency.champion_ms,
        }
    return out


# ------------------------------------------------------------------------------------------------------- stage


def run(
    params: Params,
    *,
    candidate: Path,
    champion: Path | None,
    candidate_deployed: Deployed | None = None,
    champion_deployed: Deployed | None = None,
    report_path: Path | None = None,
) -> GateReport:
    """Score both models on the same sets, time them in one paired pass, decide, and write ``<reports>/gate.json``.

    Args:
        params: validated config.
        candidate: the candidate's artifact to score (in the loop: the one it would deploy, the export selection).
        champion: the champion's artifact to score, ``None`` on the first cycle.
        candidate_deployed: the artifact the candidate would ship (the export stage's selection), for the latency
            pass; ``None``: not known, both models are timed on the files they were scored with.
        champion_deployed: the artifact the champion runs (:func:`tasks.adapters.model_cache.find_deployed`), likewise.
        report_path: where to write the JSON (default ``<reports>/gate.json``).

    Raises:
        tasks.targets.gate_scoring.ScoringError: the gate's mAP disagrees with faster-coco-eval's on a set.
    """
    start = time.perf_counter()
    policy = GatePolicy.from_config(params.gate, seed=params.base.seed)
    sets = gate_sets(params)
    if PRODUCTION not in sets:
        log.info("no production holdouts under %s: the gate decides on golden only", params.base.paths.holdouts)
    cache = detection_cache_of(params)  # the champion's golden and older holdouts recur every cycle
    cand = score_model(candidate, sets, params=params, cache=cache)
    champ = score_model(champion, sets, params=params, cache=cache) if champion is not None else None
    if champ is not None and champion is not None and policy.judges_latency:
        cand_latency, champ_latency = measure_latency(
            params, candidate, champion, candidate_deployed=candidate_deployed, champion_deployed=champion_deployed
        )
        cand = dataclasses.replace(cand, latency=cand_latency)
        champ = dataclasses.replace(champ, latency=champ_latency)
    decision = compare(cand, champ, policy)
    for reason in decision.reasons:
        log.log(logging.INFO if reason.passed else logging.WARNING, "%s: %s", reason.code, reason.message)
    log.info("gate: %s", decision.decision)
    report = dataclasses.replace(
        build_report(cand, champ, decision, policy=policy, digest=params.digest()),
        wall_s=round(time.perf_counter() - start, 2),
        cache_hits=cache.hits,
        cache_misses=cache.misses,
    )
    write_report(params.base.paths.reports, STAGE, report, params, path=report_path)
    return report


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidate", type=Path, required=True, help="candidate model artifact")
    parser.add_argument("--champion", type=Path, default=None, help="champion model artifact (none: first cycle)")
    for who in ("candidate", "champion"):
        parser.add_argument(
            f"--{who}-deployed",
            type=Path,
            default=None,
            help=f"the artifact the {who} deploys, timed for the latency rules (both or neither: else both "
            "scored files are timed)",
        )


def _deployed(path: Path | None) -> Deployed | None:
    """A ``--*-deployed`` path as the artifact to time, its export target guessed from the path."""
    return None if path is None else Deployed(runtime_of(path), "", path)


def main(argv: list[str] | None = None) -> GateReport:
    """``python -m tasks.gate [--params P ...] --candidate PATH [--champion PATH] [--candidate-deployed PATH ...]``."""
    report: GateReport = stage_main(
        STAGE,
        __doc__,
        run=lambda params, args: run(
            params,
            candidate=args.candidate,
            champion=args.champion,
            candidate_deployed=_deployed(args.candidate_deployed),
            champion_deployed=_deployed(args.champion_deployed),
        ),
        arguments=_arguments,
        summary=lambda r: json.dumps({"decision": r.decision, "failed": [c.code for c in r.reasons if not c.passed]}),
        argv=argv,
    )
    return report


if __name__ == "__main__":  # pragma: no cover, CLI entry point
    main()
