"""An alias that names a model version the loop cannot use, said as such: never read as "there is no champion".

Beside :mod:`tasks.adapters.mlflow` (which calls it). Two broken states, both refused before anything is written:

- The version was deleted. MLflow 3 drops a deleted version's aliases (``delete_model_version`` of its SQL and file
  registries), so the store answers "no such alias", exactly as before the first promotion. The audit trail
  (``promote.audit_log``) still records where the alias was last moved: :func:`deleted_target` finds that version
  gone, and :func:`tasks.adapters.mlflow.get_alias` raises :class:`BrokenAliasError` instead of inviting a bootstrap
  (which a loop would follow by promoting its candidate over no champion at all).
- The version's artifact files are gone from the artifact store: the alias resolves but nothing of the version can
  be fetched; :func:`artifacts_missing` is the error its downloads raise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.config import VisionloopError
from tasks.contracts import audit
from tasks.contracts.model_version import CHAMPION, ModelVersionInfo


class BrokenAliasError(VisionloopError, LookupError):
    """An alias names a version that cannot be used: deleted from the registry, or its artifact files gone."""


def _fix(alias: str) -> str:
    if alias == CHAMPION:
        return (
            "run `make rollback` (champion back to 'previous') or `make rollback VERSION=<n>` with a version that "
            "exists (`python -m tasks.promote --audit` lists the moves)"
        )
    return f"point {alias!r} at a version that exists (the MLflow UI), or use another alias"


def deleted_target(mlflow_client: Any, *, name: str, alias: str, audit_log: Path) -> str | None:
    """The version the audit trail last moved ``alias`` of ``name`` to, when the store no longer has it; else None.

    Asked when MLflow has no such alias: ``None`` means the alias was never set (or was moved off a version that
    still exists), the plain "no alias" state.
    """
    from mlflow.exceptions import MlflowException

    last = None
    for record in audit.read_audit(audit_log):
        if record.model == name and record.alias == alias:
            last = record.to_version
    if last is None:
        return None
    try:
        mlflow_client.get_model_version(name, last)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return last
        raise
    return None


def refuse_if_deleted(mlflow_client: Any, name: str, alias: str, *, audit_log: Path) -> None:
    """Raise :class:`BrokenAliasError` when MLflow's missing ``alias`` went with its deleted version.

    Raises:
        BrokenAliasError: the audit trail last moved ``alias`` to a version the store no longer has.
    """
    version = deleted_target(mlflow_client, name=name, alias=alias, audit_log=audit_log)
    if version is not None:
        raise BrokenAliasError(
            f"model {name!r}: alias {alias!r} is gone with version {version}, which was deleted from "
            f"{mlflow_client.tracking_uri} (MLflow drops a deleted version's aliases; the audit trail {audit_log} "
            f"last moved {alias!r} to v{version}); nothing was changed: {_fix(alias)}"
        )


def artifacts_missing(mlflow_client: Any, info: ModelVersionInfo, *, what: str, local: Path) -> BrokenAliasError:
    """The error of a version whose ``what`` (e.g. "ONNX artifact") is not in the artifact store."""
    where = mlflow_client.get_model_version_download_uri(info.name, info.version)
    named = f" (alias {', '.join(repr(a) for a in info.aliases)})" if info.aliases else ""
    fix = _fix(info.aliases[0]) if info.aliases else "register it again from its training run (the registry stage)"
    return BrokenAliasError(
        f"model {info.name!r} version {info.version}{named}: no {what} in its artifacts at {where} (the files are "
        f"gone from the artifact store; nothing came down into {local}); nothing was changed: {fix}"
    )
