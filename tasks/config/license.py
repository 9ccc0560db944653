"""Config of the license gate (``gate.license``): the policy, the exceptions the team holds, the data's licenses.

Read by :mod:`tasks.decisions.license_gate` (the decision) and, for ``data``, by whoever writes the license record.
It sits under ``gate`` because every top-level section is a stage, and the license gate is one of the gate's rules.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from tasks.config.base import Section

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A string with something in it besides spaces (kept stripped)."""

LicensePolicy = Literal["open-source", "commercial"]
Sha256 = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[0-9a-fA-F]{64}$")]


class LicenseException(Section):
    """A license the team holds otherwise, or a reviewed decision: the licenses it matches no longer refuse.

    ``license`` is an SPDX id or a glob over ids (``AGPL-*``, ``GPL-2.0-only WITH Classpath-exception-2.0``;
    ``UNKNOWN`` matches a component that declares nothing); ``component``, when set, limits it to components whose
    name starts with these words (``ultralytics`` matches ``ultralytics 8.4.190``, not ``ultralytics-thop 2.0.14``).
    ``reference`` names the agreement or review (``Ultralytics Enterprise License, contract 2026-042``): required.
    """

    license: NonEmpty
    component: NonEmpty | None = None
    reference: NonEmpty
    note: str | None = None


class LicenseParams(Section):
    """``gate.license``: under ``commercial`` a version whose record holds AGPL/GPL, PML, BUSL, SSPL, non-commercial,
    unclassified or unknown licenses is refused unless an exception covers them (LGPL passes with its obligation);
    under ``open-source`` nothing is refused and the obligations and warnings are shown.

    ``data`` maps each training data source (the merged manifest's ``source``: ``historical``, ``production``) to its
    declared license (an SPDX expression; ``LicenseRef-Owned`` for data the team owns); a source missing here has
    no declared license, which the gate treats as unknown. ``weights`` maps the SHA-256 of a third-party checkpoint
    (a ``train.weights`` file the project did not train) to the license its publisher declares; one missing here
    has no declared origin (unknown).
    """

    policy: LicensePolicy = "open-source"
    exceptions: tuple[LicenseException, ...] = ()
    data: dict[str, NonEmpty] = Field(default_factory=lambda: {"historical": "CC0-1.0", "production": "CC0-1.0"})
    weights: dict[Sha256, NonEmpty] = Field(default_factory=dict)
