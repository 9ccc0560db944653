"""Config of the ``forget`` stage: where its audit trail goes and the retention policy (off by default)."""

from __future__ import annotations

from pathlib import Path

from tasks.config.base import PositiveInt, Section


class RetentionParams(Section):
    """How long raw production data is kept (``None`` = forever: the default, "never discard")."""

    prediction_log_days: PositiveInt | None = None
    production_image_days: PositiveInt | None = None


class ForgetParams(Section):
    """``make forget IMAGE=...`` (one image out of every store) and ``--retention`` (old raw data out)."""

    audit_log: Path = Path("data/audit/forget.jsonl")
    retention: RetentionParams = RetentionParams()
