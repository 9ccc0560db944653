"""``reports/registry.json``: the model version the registry stage registered (or found already registered).

The registry stage writes a :class:`RegistryResult` with :func:`tasks.contracts.reports.write_report`; readers
(the cycle report) use ``load_report(reports, "registry")``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.contracts.model_version import ModelVersionInfo


@dataclass(frozen=True)
class RegistryResult(ModelVersionInfo):
    """The registered version (name, version, run_id, source, tags, aliases) and how this run got it.

    Attributes:
        reused: ``True`` when the training run already had a version (a re-run of the same candidate found it
            instead of registering another); its tags were brought up to date.
        wall_s: seconds the stage took (``None`` in reports written before it was recorded).
    """

    reused: bool = False
    wall_s: float | None = None
