"""The license entries an exported model brings with it: its inference packages, its runtime and its model code.

- :func:`inference_packages`: the distributions imported when the artifact is loaded and run, read in a clean
  interpreter (:mod:`tasks.targets.inference_probe`) from ``sys.modules``, each license as its metadata declares it;
  :func:`cached_inference_packages` keeps the answer per inference path (:func:`inference_path_key`);
- :func:`runtime_component`: the runtime an export target runs on (:data:`RUNTIME_MODULES`), from the installed
  package's metadata, or declared where the package cannot be read (TensorRT: NVIDIA's terms);
- :func:`model_code_component`: a model family's code, from the metadata of the package it names
  (:attr:`tasks.models.base.ModelFamily.package`);
- :func:`bundled_components`: the shared libraries a wheel vendors (FFmpeg inside opencv-python, the GCC runtime
  inside numpy) that the artifact's inference path had loaded.

Nothing here is a hand-written list of package licenses: what is installed says. The one exception is
:data:`BUNDLED_LIBRARIES`: a vendored ``.so`` carries no metadata, so the projects it comes from are named here by
file name, with the license each project publishes; a vendored library not in that table is unknown (refused
under ``commercial`` until someone reads its notice and adds it). The entries are
:class:`tasks.contracts.license_record.Component`; judging them is :mod:`tasks.decisions` work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from tasks.contracts.license_record import Component, Kind
from tasks.env import PROJECT_ROOT, read_env_file
from tasks.io import write_json_atomic
from tasks.models.base import ModelFamily
from tasks.runtimes.detectors import InferenceSettings
from tasks.targets.inference_probe import read_license

PROBE_TIMEOUT_S = 120.0
# what the probe's interpreter keeps of the caller's environment: enough to start and find a GPU, nothing that
# changes what Python imports (it also runs with -E -s: no PYTHONPATH, no user site-packages)
PASSED_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES")

# export target (tasks.targets.builders.TARGETS) -> the Python module of the runtime its artifact runs on
RUNTIME_MODULES: dict[str, str] = {
    "onnx": "onnxruntime",
    "onnx_int8": "onnxruntime",
    "openvino": "openvino",
    "openvino_int8": "openvino",
    "tensorrt_fp16": "tensorrt",
    "tensorrt_int8": "tensorrt",
}
# runtimes whose license is stated here because their package metadata cannot be read on every host
DECLARED_RUNTIMES: dict[str, tuple[str, str]] = {
    "tensorrt": ("NVIDIA TensorRT license", "declared: NVIDIA Software License Agreement"),
}


# vendored shared library (file name, without auditwheel's hash) -> the project it comes from and its license
# as that project publishes it (the wheels' third-party notices, e.g. opencv-python's LICENSE-3RD-PARTY.txt)
_GCC_RUNTIME = "GPL-3.0-or-later WITH GCC-exception-3.1"
BUNDLED_LIBRARIES: tuple[tuple[str, str, str], ...] = (
    (r"libav(codec|format|util|device|filter)|libsw(scale|resample)|libpostproc", "FFmpeg", "LGPL-2.1-or-later"),
    (r"libQt[56]\w*", "Qt", "LGPL-3.0-only"),
    (r"lib(ssl|crypto)\S*\.so\.1\.[01]", "OpenSSL 1.x", "OpenSSL"),
    (r"lib(ssl|crypto)\S*\.so\.3", "OpenSSL 3", "Apache-2.0"),
    (r"libgfortran|libgomp|libgcc_s|libstdc\+\+", "GCC runtime", _GCC_RUNTIME),
    (r"libquadmath", "GCC libquadmath", "LGPL-2.1-or-later"),
    (r"lib(scipy_)?openblas", "OpenBLAS", "BSD-3-Clause"),
    (r"libpng", "libpng", "libpng-2.0"),
    (r"libvpx", "libvpx", "BSD-3-Clause"),
    (r"libaom|libavif|libdav1d|libopenjp2", "AOM / AVIF / dav1d / OpenJPEG codecs", "BSD-2-Clause"),
    (r"libX\w*|libxcb\S*|libxkbcommon\S*", "X.Org / XCB / xkbcommon", "MIT"),
    (r"libjpeg", "libjpeg-turbo", "IJG AND BSD-3-Clause AND Zlib"),
    (r"libz\b|libz\.|libz-", "zlib", "Zlib"),
    (r"libzstd|libwebp\w*|libsharpyuv|libssh2|libpcre", "zstd / WebP / libssh2 / PCRE", "BSD-3-Clause"),
    (r"liblzma", "xz", "0BSD"),
    (r"libtiff", "libtiff", "libtiff"),
    (r"libfreetype", "FreeType", "FTL OR GPL-2.0-or-later"),
    (r"libharfbuzz|liblcms2|libbrotli\w*", "HarfBuzz / Little CMS / Brotli", "MIT"),
    (r"libyajl", "YAJL", "ISC"),
    (r"libde265|libheif", "libde265 / libheif", "LGPL-3.0-or-later"),
)


class InferenceProbeError(RuntimeError):
    """The clean interpreter could not load or run the artifact, so its inference packages are unknown."""


def probe_env() -> dict[str, str]:
    """The probe's environment: :data:`PASSED_ENV` from the caller and the project's offline settings
    (``visionloop.env``; a value the caller set wins, as in :func:`tasks.env.apply_env`)."""
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env.update({key: os.environ.get(key, value) for key, value in read_env_file().items()})
    return env


def inference_packages(
    artifact: Path, settings: InferenceSettings, *, timeout_s: float = PROBE_TIMEOUT_S
) -> tuple[Component, ...]:
    """The distributions imported when ``artifact`` is loaded and predicts one image, with their licenses.

    Runs ``python -E -s -m tasks.targets.inference_probe`` (this interpreter, the project root as working
    directory, :func:`probe_env`): what the caller already imported does not count. The standard library, the
    project's own code and the interpreter's start-up hooks are left out (:mod:`tasks.targets.inference_probe`).

    Args:
        artifact: an exported model as :func:`tasks.runtimes.detectors.load_detector` opens it (``.onnx``, an
            OpenVINO ``.xml`` or its folder, a TensorRT ``.engine``).
        settings: the inference settings it is opened with (``imgsz``, ``device``, ...).
        timeout_s: how long the probe may take.

    Returns:
        ``package`` components named ``<distribution> <version>``, sorted by name; a top-level module no
        distribution owns is one entry with license ``None`` (unknown).

    Raises:
        InferenceProbeError: the probe failed (artifact missing or unloadable, runtime absent) or timed out;
            the message names the artifact and the probe's last error line.
    """
    artifact = Path(artifact).resolve()
    with tempfile.TemporaryDirectory(prefix="visionloop-probe-") as scratch:
        out = Path(scratch) / "probe.json"
        cmd = [
            *(sys.executable, "-E", "-s", "-m", "tasks.targets.inference_probe", str(artifact)),
            *("--settings", json.dumps(dataclasses.asdict(settings)), "--out", str(out)),
        ]
        try:
            done = subprocess.run(
                cmd, cwd=PROJECT_ROOT, env=probe_env(), capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise InferenceProbeError(
                f"{artifact}: the inference license probe did not finish within {timeout_s:g} s"
            ) from None
        if done.returncode != 0 or not out.is_file():
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            raise InferenceProbeError(
                f"{artifact}: the inference license probe failed (exit {done.returncode}): "
                f"{lines[-1] if lines else 'no output'}"
            )
        found = json.loads(out.read_text())
    packages = [
        Component("package", f"{p['name']} {p['version']}", p["license"], p["source"]) for p in found["packages"]
    ]
    unowned = [Component("package", f"module {m}", None, "no distribution owns it") for m in found["unowned"]]
    listed = tuple(sorted([*packages, *unowned], key=lambda c: c.name.casefold()))
    return listed + bundled_components(found.get("bundled", []))


def cache_dir() -> Path:
    """Where probe answers are kept: ``$XDG_CACHE_HOME/visionloop/license-probe`` (``~/.cache`` without it),
    beside the project's venvs."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "visionloop" / "license-probe"


@functools.cache
def _environment_fingerprint() -> str:
    """The interpreter, every installed distribution with its version, and the project's own code (the loader the
    probe runs): what decides which packages an inference path imports. Computed once per process."""
    digest = hashlib.sha256(f"{sys.executable}\n{sys.prefix}\n{sys.version}\n".encode())
    names = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    digest.update("\n".join(names).encode())
    for source in sorted((PROJECT_ROOT / "tasks").rglob("*.py")):
        digest.update(f"{source.relative_to(PROJECT_ROOT)}\n".encode() + source.read_bytes())
    return digest.hexdigest()


def inference_path_key(target: str, settings: InferenceSettings) -> str:
    """What the packages of an artifact's inference path depend on: its export target (the format and runtime
    that load it), the inference settings, the probe's environment variables and :func:`_environment_fingerprint`.
    Not the weights: two artifacts of one target run the same code."""
    parts = {
        "target": target,
        "settings": dataclasses.asdict(settings),
        "env": sorted(read_env_file().items()),
        "environment": _environment_fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_inference_packages(
    artifact: Path, settings: InferenceSettings, target: str, *, folder: Path | None = None
) -> tuple[Component, ...]:
    """:func:`inference_packages` of ``artifact``, probed once per inference path (:func:`inference_path_key`).

    The clean-interpreter probe costs seconds and every registration asks for it; what it answers depends on the
    runtime code path, not on the weights. A missing artifact is always probed (and fails naming it); a cache
    file that cannot be read is probed again and rewritten. Only successful answers are kept.

    Args:
        artifact: the selected artifact (it passed the export stage's load, parity and accuracy checks).
        settings: the inference settings it is opened with.
        target: its export target (``onnx``, ``openvino_int8``, ...).
        folder: the cache folder (default :func:`cache_dir`).
    """
    if not Path(artifact).exists():
        return inference_packages(artifact, settings)
    file = (folder or cache_dir()) / f"{inference_path_key(target, settings)}.json"
    try:
        return tuple(Component(**entry) for entry in json.loads(file.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = inference_packages(artifact, settings)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next registration another probe
        write_json_atomic(file, [dataclasses.asdict(c) for c in found])
    return found


def _library_name(file: str) -> str:
    """``opencv_python.libs/libavcodec-e0dd92b8.so.59.37.100`` -> ``libavcodec`` (auditwheel's hash and the
    version dropped)."""
    name = file.rsplit("/", 1)[-1].split(".so")[0]
    return re.sub(r"-[0-9a-f]{8}([-.].*)?$", "", name)


def bundled_project(file: str) -> tuple[str, str] | None:
    """The project and license of a vendored library file (:data:`BUNDLED_LIBRARIES`); ``None``: not known."""
    base = file.rsplit("/", 1)[-1]
    for pattern, project, license_ in BUNDLED_LIBRARIES:
        if re.match(rf"(?:{pattern})\d*(?:[-._]|$)", base):
            return project, license_
    return None


def bundled_components(found: list[dict[str, str]]) -> tuple[Component, ...]:
    """``bundled`` components for the vendored libraries the probe saw loaded (``{"file", "distribution"}``):
    one per (distribution, project), naming the library files; an unknown library is its own component with
    license ``None``."""
    groups: dict[tuple[str, str, str | None], list[str]] = {}
    for entry in found:
        dist = entry["distribution"] or "an unknown distribution"
        known = bundled_project(entry["file"])
        project, license_ = known if known is not None else (_library_name(entry["file"]), None)
        groups.setdefault((dist, project, license_), []).append(entry["file"])
    components = []
    for (dist, project, license_), files in groups.items():
        try:
            where = f"{dist} {metadata.version(dist)}"
        except (metadata.PackageNotFoundError, ValueError):
            where = dist
        libraries = ", ".join(sorted({_library_name(f) for f in files}))
        folders = ", ".join(sorted({f.rsplit("/", 1)[0] for f in files}))
        source = (
            f"vendored in {folders}: license as {project} publishes it"
            if license_ is not None
            else f"vendored {files[0]}: not in tasks.targets.inference_licenses.BUNDLED_LIBRARIES"
        )
        components.append(Component("bundled", f"{project} in {where} ({libraries})", license_, source))
    return tuple(sorted(components, key=lambda c: c.name.casefold()))


def distributions_component(kind: Kind, names: list[str]) -> Component:
    """One component for the installed distributions ``names`` (several: one module shipped by more than one),
    license read from their metadata (``None`` unless every one declares one)."""
    dists = [metadata.distribution(name) for name in sorted(names, key=str.casefold)]
    read = [read_license(d.metadata) for d in dists]
    licenses = list(dict.fromkeys(lic for lic, _ in read if lic is not None))
    return Component(
        kind,
        ", ".join(f"{d.metadata['Name']} {d.version}" for d in dists),
        " AND ".join(licenses) if all(lic is not None for lic, _ in read) else None,
        "; ".join(dict.fromkeys(source for _, source in read)),
    )


def runtime_component(target: str) -> Component:
    """The runtime the artifact of export target ``target`` runs on (``runtime`` component).

    Raises:
        ValueError: ``target`` is not an export target.
    """
    try:
        module = RUNTIME_MODULES[target]
    except KeyError:
        raise ValueError(f"export target {target!r}: no runtime known for it ({sorted(RUNTIME_MODULES)})") from None
    if module in DECLARED_RUNTIMES:
        license_, source = DECLARED_RUNTIMES[module]
        installed = metadata.packages_distributions().get(module, [])
        versions = [f"{name} {metadata.version(name)}" for name in installed]
        return Component("runtime", ", ".join(versions) or module, license_, source)
    names = metadata.packages_distributions().get(module, [])
    if not names:
        return Component("runtime", module, None, f"not installed here (no distribution provides {module})")
    return distributions_component("runtime", names)


def model_code_component(family: ModelFamily) -> Component:
    """The code of ``family`` (``model_code`` component): the package it names, license from its metadata.

    Named ``<family>: <distribution> <version>``; license ``None`` when the package is not installed here.
    """
    try:
        found = distributions_component("model_code", [family.package])
    except metadata.PackageNotFoundError:
        return Component("model_code", f"{family.name}: {family.package}", None, "not installed here")
    return dataclasses.replace(found, name=f"{family.name}: {found.name}")
