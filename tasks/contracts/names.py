"""Names that cross stage boundaries: the cycle name.

A cycle name names folders (``samples/<cycle>/``, ``labels/<cycle>/``, ``holdouts/<cycle>/``) and ledger rows, so the
sample, label, validate, merge and cycle stages must accept exactly the same names: this module is the one place the
rule lives.
"""

from __future__ import annotations

import re

CYCLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")
"""A letter or digit, then up to 127 letters, digits and ``. _ = -`` (file-safe on every OS, no path separators)."""

CYCLE_NAME_RULE = "use letters, digits and . _ = - (it names folders)"


def is_cycle_name(name: str) -> bool:
    """Whether ``name`` is a valid cycle name (see :data:`CYCLE_NAME`)."""
    return bool(CYCLE_NAME.match(name))


def check_cycle_name(name: str, *, error: type[Exception] = ValueError) -> str:
    """Return ``name`` if it is a valid cycle name, else raise ``error`` naming it and the rule.

    Args:
        name: the cycle name to check.
        error: the exception class to raise (each stage passes its own ``VisionloopError`` subclass).

    Raises:
        error: ``"cycle 'a/b': use letters, digits and . _ = - (it names folders)"``.
    """
    if not is_cycle_name(name):
        raise error(f"cycle {name!r}: {CYCLE_NAME_RULE}")
    return name
