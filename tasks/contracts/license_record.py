"""The license record of a model version: one entry per component that ships with it or went into it.

Written by the registry stage (MLflow version tags ``license.*`` and the cycle report's "Licenses" section), read by
the license gate (:mod:`tasks.decisions.license_gate`). A component's ``license`` is the SPDX expression as declared
where ``source`` says (package metadata, the family module per size, params for data sources and third-party
weights); ``None`` means nothing was declared, which the gate treats as unknown (fail closed under ``commercial``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["model_code", "weights", "data", "runtime", "package"]
KINDS: tuple[Kind, ...] = ("model_code", "weights", "data", "runtime", "package")


@dataclass(frozen=True)
class Component:
    """One thing whose license applies to the shipped model.

    Attributes:
        kind: ``model_code`` (the family's training/inference code), ``weights`` (their origin), ``data`` (one
            declared training data source), ``runtime`` (the export runtime of the selected artifact) or ``package``
            (a distribution imported when the selected artifact is loaded and run).
        name: what it is, readable: ``ultralytics 8.4.190``, ``trained from scratch here``, ``world``,
            ``onnxruntime 1.32.0``.
        license: SPDX expression as declared (``AGPL-3.0-only``, ``MIT OR Apache-2.0``), a name the source gave
            (``PML-1.0``), or ``None`` when nothing was declared.
        source: where ``license`` was read: ``package metadata License-Expression``, ``package metadata
            classifiers``, ``family rfdetr (size nano)``, ``params license.data.world``, ...
    """

    kind: Kind
    name: str
    license: str | None
    source: str


@dataclass(frozen=True)
class LicenseRecord:
    """Every component of one model version (``components`` in a stable order: by kind as in :data:`KINDS`, then
    name)."""

    components: tuple[Component, ...]
