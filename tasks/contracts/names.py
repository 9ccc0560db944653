"""Names that cross stage boundaries: the cycle name and the image id.

A cycle name names folders (``samples/<cycle>/``, ``labels/<cycle>/``, ``holdouts/<cycle>/``) and ledger rows, so the
sample, label, validate, merge and cycle stages must accept exactly the same names: this module is the one place the
rule lives. An image id (a production file's stem, carried by the prediction log, sample manifests and the label
ledger) names the labeled files ``labels/<cycle>/{images,labels}/<image_id>.*``: an id from a tampered log or
manifest must never reach outside that folder, so every stage that turns one into a path checks it here.
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


IMAGE_ID = re.compile(r"^(?!\.)[^/\\\x00-\x1f*?\[\]]{1,200}$")
"""1-200 characters; no path separator, control character or glob character, no leading dot (so never ``..``)."""

IMAGE_ID_RULE = "an image id names a file: no / or \\, no leading dot, no control or glob characters, 1-200 characters"


def check_image_id(image_id: object, *, where: str, error: type[Exception] = ValueError) -> str:
    """Return ``image_id`` if it is safe as a file stem, else raise ``error`` naming it, its origin and the rule.

    Raises:
        error: e.g. ``"sample manifest row 3: image id '../../x': an image id names a file: ..."``.
    """
    if not isinstance(image_id, str) or not IMAGE_ID.match(image_id):
        raise error(f"{where}: image id {image_id!r}: {IMAGE_ID_RULE}")
    return image_id
