"""``reports/forget.json``: what the forget stage removed, store by store (hashes and paths, never pixels).

The forget stage returns a :class:`ForgetReport`; the same content is the entry of the privacy audit trail
(:mod:`tasks.contracts.privacy_audit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ForgetMode = Literal["forget", "already_forgotten", "retention"]


@dataclass(frozen=True)
class ForgetReport:
    """One forget (or retention) run.

    Attributes:
        mode: ``forget`` (an image), ``already_forgotten`` (the trail says it went before; only re-checked) or
            ``retention`` (old raw data by the policy).
        image_sha256: the image's content hash (empty for retention).
        removed: store -> what was removed or rewritten there (files, rows, task ids, object ids).
        left: store -> where a trace was still found afterwards (empty: gone everywhere that was searched).
        notes: what a person should know (e.g. versions whose pinned data lost objects).
        wall_s: seconds the run took.
    """

    mode: ForgetMode
    image_sha256: str
    removed: dict[str, list[str]] = field(default_factory=dict)
    left: dict[str, list[str]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    wall_s: float = 0.0
