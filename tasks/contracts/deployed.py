"""The artifact a model version runs with (chosen by export, read back by predict, gate, cycle) and its files.

A plain record with no imports beyond the standard library: the runtimes a registered model ships import it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Deployed:
    """The artifact a model version runs with here (the prediction stage opens it, the gate times it).

    Attributes:
        target: export target that ran (``openvino_int8``, ...; ``onnx`` on the fallback).
        precision: its precision as built.
        path: local file opened.
        fallback: why the version's ONNX file runs instead of its ``deploy.artifact`` (``None``: no fallback).
    """

    target: str
    precision: str
    path: Path
    fallback: str | None = None


def artifact_files(path: Path) -> list[Path]:
    """The files an artifact consists of, whether or not they exist yet.

    An OpenVINO ``.xml`` comes with its ``.bin`` weights beside it; a folder is every file below it; any other
    artifact is the file itself. Whoever copies, sizes or uploads an artifact copies these.
    """
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    return [path]
