"""Stage ``promote``: move registry aliases on a gate decision, roll back, and keep an audit trail.

Contract:
    inputs: a registered model version and a decision (``promote`` / ``reject``) with its reasons, or a
        rollback target (``previous`` by default, or a named version);
    params: ``registry`` (store, model name), ``promote``, ``gate.license`` (the version's license record is
        judged again before it may become champion, by promotion or rollback);
    outputs: alias moves in MLflow (``previous ← champion ← challenger`` on promote; champion unchanged and
        the version tagged ``rejected`` on reject), one audit record per move or decision appended to
        ``promote.audit_log`` (JSON lines: who, what, when, why, from → to), ``<reports>/promote.json``;
    side effects: MLflow alias and tag writes, under an exclusive file lock so that two promotions racing
        each other leave exactly one champion and a trail in which each move starts where the last ended.

A promotion is a compare-and-set: given ``expected_champion`` (the version the gate judged the candidate against,
``None`` when there was no champion), it moves nothing when the champion changed meanwhile (a rollback, another
cycle): the candidate is rejected with that reason, to be judged again by the next cycle against the new champion.

``python -m tasks.promote --audit`` prints the trail; ``--rollback [--to VERSION]`` rolls back after checking
the target version loads and predicts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import getpass
import logging
import socket
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

from tasks.adapters import mlflow as mlflow_adapter
from tasks.adapters.mlflow import registry_lock
from tasks.cli import stage_main
from tasks.config import Params, VisionloopError
from tasks.contracts import audit
from tasks.contracts.license_record import RECORD_TAG, LicenseRecordError, parse_record
from tasks.contracts.model_version import CHALLENGER, CHAMPION, PREVIOUS
from tasks.contracts.reports import write_report
from tasks.contracts.reports.promote import AuditRecord, PromoteResult
from tasks.decisions.license_gate import check_licenses
from tasks.io import append_json_lines, json_lines, write_bytes_atomic

log = logging.getLogger(__name__)

Action = Literal["challenge", "promote", "reject", "rollback"]


class _Any(enum.Enum):
    ANY = "any"


ANY = _Any.ANY
"""``expected_champion`` default of :func:`promote`: promote whatever the champion is now (no compare-and-set)."""
Expected = str | None | Literal[_Any.ANY]


class PromoteError(VisionloopError, ValueError):
    """The command line names no action."""


class RollbackError(VisionloopError, RuntimeError):
    """No rollback target, or the target does not load and predict."""


def default_who() -> str:
    """``user@host`` of the process (flows pass their flow-run name instead)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def append_audit(params: Params, records: list[AuditRecord]) -> None:
    """Append records to the JSON-lines trail (one write + fsync per call, under the registry lock)."""
    append_json_lines(params.promote.audit_log, [asdict(r) for r in records])


def read_audit(params: Params) -> list[AuditRecord]:
    """The whole trail, oldest first (a torn last line from a crash is reported and skipped)."""
    return audit.read_audit(params.promote.audit_log)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _plan(params: Params, alias: str, version: str, *, who: str, action: str, why: str) -> AuditRecord:
    """The record of moving ``alias`` to ``version`` (from where it points now); nothing moves yet."""
    old = mlflow_adapter.find_alias(params, alias)
    return AuditRecord(
        ts=_now(),
        who=who,
        action=action,
        model=params.registry.model_name,
        alias=alias,
        from_version=old.version if old else None,
        to_version=str(version),
        why=why,
    )


def pending_path(params: Params) -> Path:
    """This checkout's write-ahead file of alias moves in progress: ``<promote.audit_log>.pending``."""
    return audit.pending_path(params.promote.audit_log)


def recover(params: Params) -> list[AuditRecord]:
    """Record the moves an interrupted promote, rollback or challenge of this checkout made (``--recover``).

    The next promote, rollback or challenge does the same first; this is for ``make doctor``'s finding.
    """
    with registry_lock(params):
        return _recover(params)


def write_ahead(params: Params, records: list[AuditRecord]) -> None:
    """Write the moves about to be made to :func:`pending_path` (atomically), before any alias moves."""
    write_bytes_atomic(pending_path(params), json_lines([asdict(r) for r in records]))


def _apply(params: Params, records: list[AuditRecord]) -> None:
    """Move the aliases of ``records`` and append them to the trail, written ahead so a kill loses no record.

    The planned moves go to :func:`pending_path` first, then the aliases move, then the trail gets the records,
    then the pending file goes. A run killed in between leaves the file for the next run (:func:`_recover`).
    """
    moves = [r for r in records if r.alias]
    if moves:
        write_ahead(params, moves)
        for record in moves:
            mlflow_adapter.set_alias(params, str(record.alias), str(record.to_version))
    append_audit(params, records)
    pending_path(params).unlink(missing_ok=True)


def _recover(params: Params) -> list[AuditRecord]:
    """Append the moves a killed run of this checkout made but never recorded; the caller holds the registry lock.

    Only this checkout's write-ahead file counts: a planned move whose alias points at its target is recorded (it
    happened), one whose alias does not is dropped (the run died before it). An alias moved by anyone else (another
    clone sharing the MLflow server keeps its own trail) is never claimed as this checkout's move.
    """
    path = pending_path(params)
    if not path.is_file():
        return []
    planned = audit.read_audit(path)
    tail = {(r.ts, r.alias, r.to_version) for r in read_audit(params)[-len(planned) :]} if planned else set()
    records = []
    for record in planned:
        if (record.ts, record.alias, record.to_version) in tail:
            continue  # appended before the kill; only the pending file was left
        now = mlflow_adapter.find_alias(params, str(record.alias))
        if now is not None and now.version == record.to_version:
            records.append(replace(record, why=f"{record.why} (moved by an interrupted run, recorded by its re-run)"))
    if records:
        log.warning("recorded %d alias move(s) an interrupted run made: %s", len(records), _moves(records))
    append_audit(params, records)
    path.unlink()
    return records


def challenge(params: Params, *, version: str, why: str, who: str | None = None) -> PromoteResult:
    """``challenger ← version``: a candidate the loop registered, before its decision."""
    who = who or default_who()
    with registry_lock(params):
        recovered = _recover(params)
        records = [_plan(params, CHALLENGER, str(version), who=who, action="challenge", why=why)]
        _apply(params, records)
    return PromoteResult("challenge", str(version), _moves(records), recovered + records)


def stale_champion_reason(version: str, *, expected: str | None, current: str | None) -> str:
    """Why a promotion was refused because the champion moved (``None``: there was no champion)."""
    return (
        f"champion moved from {_named(expected)} to {_named(current)} while v{version} was trained and gated against "
        f"{_named(expected)}; re-run the cycle to judge it against {_named(current)}"
    )


def license_refusal(params: Params, version: str) -> list[str]:
    """Why ``version`` may not become champion under ``gate.license`` as configured now (empty: it may).

    The version's ``license.record`` tag (written by the registry stage) is judged again here, so a policy changed
    after registration applies to every later promotion and rollback. A version without a record (registered by
    hand, or before records existed) is refused under ``commercial`` (nothing shows what ships) and allowed with a
    warning under ``open-source``; so is a record that cannot be read.
    """
    policy = params.gate.license
    where = f"v{version} of {params.registry.model_name}"
    text = mlflow_adapter.get_version(params, version).tags.get(RECORD_TAG)
    try:
        record = parse_record(text, where=where) if text is not None else None
    except LicenseRecordError as exc:
        record, problem = None, str(exc)
    else:
        problem = f"{where} has no {RECORD_TAG} tag: re-register it (python -m tasks.registry) to record its licenses"
    if record is None:
        if policy.policy == "commercial":
            return [f"license gate (commercial): {problem}; fail closed"]
        log.warning("%s; promoted under the open-source policy", problem)
        return []
    verdict = check_licenses(record, policy)
    return [f"license gate ({verdict.policy}): {line}" for line in verdict.reasons()]


def promote(
    params: Params, *, version: str, why: str, who: str | None = None, expected_champion: Expected = ANY
) -> PromoteResult:
    """``previous ← champion ← version``; the ``challenger`` alias is cleared if it pointed at ``version``.

    Args:
        version: the model version to promote.
        why: the reason (the audit trail keeps it).
        who: the actor (default ``user@host``).
        expected_champion: compare-and-set under the registry lock: the version the candidate was gated against
            (``None``: there was no champion). When the champion is another version now, nothing moves: ``version``
            is tagged rejected with the reason, an audit record ``reject`` is appended and the result's action is
            ``reject``. :data:`ANY` (default) promotes over whatever the champion is.

    A version the license gate refuses (:func:`license_refusal`) is rejected the same way, the refused
    components named in the reason.
    """
    who = who or default_who()
    version = str(version)
    with registry_lock(params):
        recovered = _recover(params)
        records: list[AuditRecord] = []
        champion = mlflow_adapter.find_alias(params, CHAMPION)
        current = champion.version if champion is not None else None
        if expected_champion is not ANY and current != expected_champion and current != version:
            reason = stale_champion_reason(version, expected=expected_champion, current=current)
            log.warning("not promoting v%s: %s", version, reason)
            record = _reject_locked(params, version=version, why=reason, who=who)
            return PromoteResult("reject", version, {}, [*recovered, record])
        refused = license_refusal(params, version) if current != version else []
        if refused:
            log.warning("not promoting v%s: %s", version, "; ".join(refused))
            record = _reject_locked(params, version=version, why="; ".join(refused), who=who)
            return PromoteResult("reject", version, {}, [*recovered, record])
        if current == version:
            log.info("version %s is already the champion; nothing to move", version)
        else:
            previous = mlflow_adapter.find_alias(params, PREVIOUS)
            if current is not None and (previous is None or previous.version != current):
                records.append(
                    _plan(params, PREVIOUS, current, who=who, action="promote", why=f"replaced by v{version}")
                )
            records.append(_plan(params, CHAMPION, version, who=who, action="promote", why=why))
        _apply(params, records)
        challenger = mlflow_adapter.find_alias(params, CHALLENGER)  # also when a killed run left it behind
        if challenger is not None and challenger.version == version:
            mlflow_adapter.delete_alias(params, CHALLENGER)
    records = recovered + records
    return PromoteResult("promote", version, _moves(records), records)


def reject(params: Params, *, version: str, reasons: list[str], who: str | None = None) -> PromoteResult:
    """Keep the champion; tag ``version`` as rejected with its reasons and record the decision."""
    who = who or default_who()
    with registry_lock(params):
        record = _reject_locked(params, version=str(version), why="; ".join(reasons) or "rejected", who=who)
    return PromoteResult("reject", str(version), {}, [record])


def _reject_locked(params: Params, *, version: str, why: str, who: str) -> AuditRecord:
    """Tag ``version`` rejected and append the ``reject`` record; the caller holds the registry lock."""
    mlflow_adapter.set_version_tags(params, version, {"rejected": "true", "reject_reasons": why[:4500]})
    record = AuditRecord(
        ts=_now(),
        who=who,
        action="reject",
        model=params.registry.model_name,
        alias=None,
        from_version=None,
        to_version=version,
        why=why,
    )
    append_audit(params, [record])
    return record


def check_loads_and_predicts(params: Params, version: str) -> int:
    """Load ``models:/<name>/<version>`` with stock MLflow and predict one image; return the row count.

    Raises:
        RollbackError: the version cannot be loaded or does not predict.
    """
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    try:
        model = mlflow_adapter.load_pyfunc(params, version)
        buffer = io.BytesIO()
        Image.fromarray(np.full((params.base.imgsz, params.base.imgsz, 3), 127, np.uint8)).save(buffer, "PNG")
        out = model.predict(pd.DataFrame({"image": [buffer.getvalue()]}))
    except Exception as exc:  # any failure to load or run means "not a safe rollback target"
        raise RollbackError(
            f"version {version} of {params.registry.model_name} does not load and predict: {exc}"
        ) from exc
    return len(out)


def rollback(
    params: Params,
    *,
    to_version: str | None = None,
    why: str = "manual rollback",
    who: str | None = None,
    expected_champion: Expected = ANY,
) -> PromoteResult:
    """Move ``champion`` back to ``previous`` (or to ``to_version``) after checking it loads and predicts.

    The champion being replaced becomes ``previous``, so a rollback can itself be rolled back. The aliases are read
    again under the registry lock after the (slow) load-and-predict check: a rollback to ``previous`` whose
    ``previous`` or champion moved meanwhile (another rollback, a promotion) moves nothing, and so does any rollback
    whose champion is not ``expected_champion`` (the automatic rollback judged one particular champion).

    Raises:
        RollbackError: no ``previous`` alias and no version given, the target is broken, it is already champion, or
            the aliases moved while the target was checked (run it again to judge the new state).
    """
    who = who or default_who()
    seen_previous = None
    if to_version is None:
        previous = mlflow_adapter.find_alias(params, PREVIOUS)
        if previous is None:
            raise RollbackError(
                f"model {params.registry.model_name!r} has no 'previous' alias to roll back to; "
                "name a version: python -m flows.rollback --to VERSION"
            )
        to_version = seen_previous = previous.version
        champion_seen = mlflow_adapter.find_alias(params, CHAMPION)
        if expected_champion is ANY:
            expected_champion = champion_seen.version if champion_seen else None
    if refused := license_refusal(params, str(to_version)):
        raise RollbackError(f"v{to_version} may not be champion: {'; '.join(refused)}")
    check_loads_and_predicts(params, to_version)
    records: list[AuditRecord] = []
    with registry_lock(params):
        recovered = _recover(params)
        champion = mlflow_adapter.find_alias(params, CHAMPION)
        current = champion.version if champion else None
        if seen_previous is not None:
            previous_now = mlflow_adapter.find_alias(params, PREVIOUS)
            if previous_now is None or previous_now.version != seen_previous:
                moved = f"v{previous_now.version}" if previous_now else "nothing"
                raise RollbackError(
                    f"'previous' moved from v{seen_previous} to {moved} while v{seen_previous} was checked; "
                    "nothing moved: run the rollback again"
                )
        if expected_champion is not ANY and current != expected_champion:
            raise RollbackError(
                f"champion moved from {_named(expected_champion)} to {_named(current)} while the rollback to "
                f"v{to_version} was checked; nothing moved: judge the new champion first"
            )
        if current == str(to_version):
            raise RollbackError(f"version {to_version} is already the champion")
        records.append(_plan(params, CHAMPION, str(to_version), who=who, action="rollback", why=why))
        if champion is not None:
            records.append(
                _plan(
                    params,
                    PREVIOUS,
                    champion.version,
                    who=who,
                    action="rollback",
                    why=f"rolled back from v{champion.version}",
                )
            )
        _apply(params, records)
    return PromoteResult("rollback", str(to_version), _moves(records), recovered + records)


def _named(version: str | None) -> str:
    return f"v{version}" if version is not None else "no champion"


def _moves(records: list[AuditRecord]) -> dict[str, list[str | None]]:
    return {r.alias: [r.from_version, r.to_version] for r in records if r.alias}


def format_audit(records: list[AuditRecord]) -> str:
    """The trail as a fixed-width table, oldest first."""
    header = f"{'when (UTC)':<24} {'who':<28} {'action':<9} {'alias':<10} {'from':>5} → {'to':<5} why"
    rows = [
        f"{r.ts[:23]:<24} {r.who[:28]:<28} {r.action:<9} {(r.alias or '-'):<10} {r.from_version or '-':>5} → "
        f"{r.to_version or '-':<5} {r.why}"
        for r in records
    ]
    return "\n".join([header, *rows]) if rows else "audit trail is empty"


def run(
    params: Params,
    *,
    version: str,
    decision: Action,
    reasons: list[str] | None = None,
    who: str | None = None,
    expected_champion: Expected = ANY,
) -> PromoteResult:
    """Apply a decision for ``version`` and write ``<reports>/promote.json``.

    ``expected_champion`` applies to ``promote`` only (see :func:`promote`): a champion that moved turns the
    promotion into a rejection, and the result's ``action`` says ``reject``.
    """
    start = time.perf_counter()
    reasons = reasons or []
    if decision == "challenge":
        result = challenge(params, version=version, why="; ".join(reasons) or "candidate", who=who)
    elif decision == "promote":
        why = "; ".join(reasons) or "promoted"
        result = promote(params, version=version, why=why, who=who, expected_champion=expected_champion)
    elif decision == "reject":
        result = reject(params, version=version, reasons=reasons, who=who)
    else:
        result = rollback(params, to_version=version, why="; ".join(reasons) or "rollback", who=who)
    result = replace(result, wall_s=round(time.perf_counter() - start, 2))
    write_report(params.base.paths.reports, "promote", result, params)
    return result


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audit", action="store_true", help="print the audit trail and exit")
    parser.add_argument("--recover", action="store_true", help="record the moves an interrupted run made, and exit")
    parser.add_argument("--rollback", action="store_true", help="champion back to previous (or --to)")
    parser.add_argument("--to", default=None, help="rollback target version")
    parser.add_argument("--version", default=None)
    parser.add_argument("--decision", choices=["promote", "reject"], default=None)
    parser.add_argument("--reason", action="append", default=[])


def _run_cli(params: Params, args: argparse.Namespace) -> list[AuditRecord]:
    if args.audit:
        return read_audit(params)
    if args.recover:
        return recover(params)
    if args.rollback:
        return rollback(params, to_version=args.to, why="; ".join(args.reason) or "manual rollback").records
    if args.version and args.decision:
        return run(params, version=args.version, decision=args.decision, reasons=args.reason).records
    raise PromoteError("give --audit, --recover, --rollback, or --version with --decision")


def main(argv: list[str] | None = None) -> list[AuditRecord]:
    """``python -m tasks.promote [--params P ...] (--audit | --version V --decision D [--reason R] | --rollback)``."""
    return stage_main("promote", __doc__, run=_run_cli, arguments=_arguments, summary=format_audit, argv=argv)


if __name__ == "__main__":
    main()
