"""What an exported artifact's inference path imports, and the licenses those distributions declare.

``python -m tasks.targets.inference_probe ARTIFACT --settings JSON --out FILE`` is run in a clean interpreter by
:func:`tasks.targets.inference_licenses.inference_packages`: it opens ``ARTIFACT`` with the project's loader
(:func:`tasks.runtimes.detectors.load_detector`), predicts one synthetic image, and writes to ``FILE`` (JSON) the
distributions owning the top-level modules imported since it started, each with its license as its metadata
declares it (:func:`read_license`). The standard library, the project's own packages and what the interpreter
imported before the probe ran (``site`` and ``.pth`` hooks) are left out. It also lists the shared libraries a
wheel vendors (auditwheel's ``<distribution>.libs/`` folders: FFmpeg inside opencv-python, libgfortran inside
numpy) that the process had mapped by then (:func:`loaded_bundled_libraries`): they carry no metadata of their own.

This module imports the standard library only at its top, so everything it reports was imported by loading and
running the artifact. :func:`read_license` is also used in-process for the model code and the runtimes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# longer than this, or over several lines, the License field holds a license text rather than a name
SHORT_LICENSE = 100
_NOT_DECLARED = {"", "unknown", "none"}  # old setuptools wrote "UNKNOWN" for an absent license
_ALWAYS_IGNORED = {"__main__", "__mp_main__"}


def read_license(meta: metadata.PackageMetadata) -> tuple[str | None, str]:
    """A distribution's license as its metadata declares it, and the field it came from.

    Read in order: ``License-Expression`` (PEP 639), ``License`` when it is a name (one line, at most
    :data:`SHORT_LICENSE` characters), then the ``License ::`` trove classifiers (the last segment of each,
    several joined by `` AND ``: without an SPDX expression, the conservative reading is that all apply). A
    ``License`` field holding a whole license text, with no classifier, gives ``"license text, see metadata"``.

    Args:
        meta: the distribution's metadata (``importlib.metadata.distribution(name).metadata``).

    Returns:
        ``(license, source)``; ``(None, "no license field")`` when nothing is declared.
    """
    expression = _field(meta, "License-Expression")
    if expression:
        return expression, "package metadata License-Expression"
    text = _field(meta, "License")
    if text and "\n" not in text and len(text) <= SHORT_LICENSE:
        return text, "package metadata License"
    classifiers = meta.get_all("Classifier") or []
    names = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    if names:
        return " AND ".join(dict.fromkeys(names)), "package metadata classifiers"
    if text:
        return "license text, see metadata", "package metadata License (full text)"
    return None, "no license field"


def _field(meta: metadata.PackageMetadata, key: str) -> str | None:
    if key not in meta:
        return None
    value = str(meta[key]).strip()
    return None if value.casefold() in _NOT_DECLARED else value


def _module_paths(module: ModuleType) -> list[Path]:
    """Where a module's code lives (its file, or a package's folders); none for built-in modules."""
    found = [getattr(module, "__file__", None), *list(getattr(module, "__path__", None) or [])]
    return [Path(p).resolve() for p in found if isinstance(p, str)]


def _in_project(module: ModuleType) -> bool:
    """Code of the project itself (``tasks``, ``flows``, ...), not a distribution installed in its ``.venv``."""
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return any(
        p.is_relative_to(PROJECT_ROOT) and not any(p.is_relative_to(prefix) for prefix in prefixes)
        for p in _module_paths(module)
    )


def third_party_modules(names: Iterable[str]) -> list[str]:
    """The top-level modules among ``names`` (``sys.modules`` keys) that are neither standard library nor the
    project's own code, sorted."""
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | _ALWAYS_IGNORED
    tops = {name.split(".")[0] for name in names} - stdlib
    return sorted(top for top in tops if (module := sys.modules.get(top)) is None or not _in_project(module))


def _loaded_files(top: str) -> set[Path]:
    return {
        path
        for name, module in list(sys.modules.items())
        if module is not None and (name == top or name.startswith(top + "."))
        for path in _module_paths(module)
    }


def _owners(top: str, candidates: Sequence[str]) -> list[str]:
    """Of the distributions that ship files under ``top`` (a namespace such as ``google``), those owning a file
    that was loaded; all of them when their records cannot tell (two wheels shipping the same files)."""
    if len(candidates) < 2:
        return list(candidates)
    loaded = _loaded_files(top)
    owning = [name for name in candidates if not loaded.isdisjoint(_files_of(name))]
    return owning or list(candidates)


def _files_of(name: str) -> set[Path]:
    dist = metadata.distribution(name)
    return {Path(str(dist.locate_file(f))).resolve() for f in dist.files or ()}


def _mapped_files() -> set[Path]:
    """The files this process has mapped (Linux ``/proc/self/maps``); empty where that cannot be read."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    return {Path(parts[5]) for line in lines if len(parts := line.split(maxsplit=5)) == 6 and parts[5].startswith("/")}


def loaded_bundled_libraries(mapped: Iterable[Path] | None = None) -> list[dict[str, str]]:
    """The vendored shared libraries among the mapped files: those in a ``<top>.libs/`` folder some distribution
    ships (auditwheel's layout), with the distribution that ships them.

    Args:
        mapped: the mapped files (default: this process's, :func:`_mapped_files`).

    Returns:
        ``[{"file": "opencv_python.libs/libavcodec-e0dd92b8.so.59.37.100", "distribution": "opencv-python"}...]``,
        sorted by file; a folder no distribution owns gives distribution ``""``.
    """
    found = []
    for path in sorted(set(mapped if mapped is not None else _mapped_files())):
        folder = path.parent.name
        if folder.endswith(".libs") and ".so" in path.name:
            found.append({"file": f"{folder}/{path.name}", "distribution": _libs_owner(folder, path.name)})
    return found


def _libs_owner(folder: str, file: str) -> str:
    """The distribution whose record lists ``<folder>/<file>`` (auditwheel names the folder after the
    distribution, so that one is tried first); ``""`` when none does."""
    wanted = f"{folder}/{file}"
    named = folder.removesuffix(".libs")
    candidates: list[Any] = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        candidates.append(metadata.distribution(named))
    for dist in [*candidates, *metadata.distributions()]:
        if any(str(f) == wanted for f in dist.files or ()):
            return str(dist.metadata["Name"])
    return ""


def describe_distributions(modules: Iterable[str]) -> dict[str, Any]:
    """The distributions owning ``modules`` (top-level names), with version and license, and the modules no
    distribution owns.

    Returns:
        ``{"packages": [{"name", "version", "license", "source", "modules"}...], "unowned": [module...]}``,
        packages sorted by name (case-insensitive).
    """
    owners_of = metadata.packages_distributions()
    by_dist: dict[str, list[str]] = {}
    unowned = []
    for top in modules:
        names = _owners(top, owners_of.get(top, []))
        if not names:
            unowned.append(top)
        for name in names:
            by_dist.setdefault(name, []).append(top)
    packages = []
    for name in sorted(by_dist, key=str.casefold):
        dist = metadata.distribution(name)
        license_, source = read_license(dist.metadata)
        packages.append(
            {
                "name": dist.metadata["Name"] or name,
                "version": dist.version,
                "license": license_,
                "source": source,
                "modules": sorted(by_dist[name]),
            }
        )
    return {"packages": packages, "unowned": sorted(unowned)}


def probe(artifact: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Load ``artifact``, predict one synthetic image, and describe what that imported (see the module docstring)."""
    before = set(sys.modules)
    from tasks.runtimes.detectors import InferenceSettings, load_detector, predict_images

    detector = load_detector(artifact, InferenceSettings(**settings))
    import numpy as np

    image = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (48, 1, 3))  # 48x64 horizontal gradient
    predict_images(detector, [image])
    described = describe_distributions(third_party_modules(set(sys.modules) - before))
    return described | {"bundled": loaded_bundled_libraries()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.targets.inference_probe", description=__doc__)
    parser.add_argument("artifact", type=Path, help="exported model (.onnx, OpenVINO .xml or folder, .engine)")
    parser.add_argument("--settings", required=True, help="tasks.runtimes.detectors.InferenceSettings as JSON")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    result = probe(args.artifact, json.loads(args.settings))
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
