"""The license entries an exported model brings with it: its inference packages, its runtime and its model code.

- :func:`inference_packages`: the distributions imported when the artifact is loaded and run, read in a clean
  interpreter (:mod:`tasks.targets.inference_probe`) from ``sys.modules``, each license as its metadata declares it;
- :func:`runtime_component`: the runtime an export target runs on (:data:`RUNTIME_MODULES`), from the installed
  package's metadata, or declared where the package cannot be read (TensorRT: NVIDIA's terms);
- :func:`model_code_component`: a model family's code, from the metadata of the package it names
  (:attr:`tasks.models.base.ModelFamily.package`).

Nothing here is a hand-written list of licenses: what is installed says. The entries are
:class:`tasks.contracts.license_record.Component`; judging them is :mod:`tasks.decisions` work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from tasks.contracts.license_record import Component, Kind
from tasks.env import PROJECT_ROOT, read_env_file
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
    return tuple(sorted([*packages, *unowned], key=lambda c: c.name.casefold()))


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
