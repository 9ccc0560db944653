"""Licenses read from what is installed and loaded: an exported model's inference path, its runtime, its model code.

The probe runs for real (a clean interpreter of this venv) on tiny ONNX and OpenVINO artifacts built here; the
metadata reader runs on crafted ``.dist-info`` folders.
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.models import FAMILIES
from tasks.runtimes.detectors import InferenceSettings
from tasks.targets import inference_probe
from tasks.targets.builders import TARGETS
from tasks.targets.inference_licenses import (
    RUNTIME_MODULES,
    InferenceProbeError,
    bundled_components,
    bundled_project,
    cached_inference_packages,
    inference_packages,
    inference_path_key,
    model_code_component,
    probe_env,
    runtime_component,
)
from tasks.targets.inference_probe import describe_distributions, read_license, third_party_modules
from tests.onnx_models import constant_detector

SIZE = 64
SETTINGS = InferenceSettings(imgsz=SIZE)
# the training stack and the project's own config stack: neither is on an exported model's inference path
NOT_ON_THE_PATH = {"torch", "ultralytics", "torchvision", "pydantic", "PyYAML", "mlflow", "visionloop"}


def as_read(dist: str) -> tuple[str | None, str]:
    return read_license(metadata.distribution(dist).metadata)


def by_distribution(components) -> dict[str, tuple[str | None, str]]:
    return {c.name.rsplit(" ", 1)[0]: (c.license, c.source) for c in components}


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory) -> Path:
    return constant_detector(
        tmp_path_factory.mktemp("onnx") / "model.onnx", [[8.0, 8.0, 24.0, 24.0, 0.9, 1.0]], imgsz=SIZE
    )


# ------------------------------------------------------------------ the real inference path


def test_an_onnx_artifact_runs_on_onnxruntime_numpy_and_opencv_not_on_the_training_stack(onnx_artifact):
    assert "pydantic" in sys.modules  # the caller has the config stack loaded: the clean interpreter must not
    found = inference_packages(onnx_artifact, SETTINGS)
    packages = by_distribution(found)
    assert packages["onnxruntime"] == ("MIT License", "package metadata License") == as_read("onnxruntime")
    assert packages["numpy"] == as_read("numpy")  # numpy's License field is its whole text: its classifier is read
    assert packages["numpy"] == ("BSD License", "package metadata classifiers")
    assert packages["opencv-python"] == as_read("opencv-python")  # the loader's letterbox and NMS import cv2
    assert not NOT_ON_THE_PATH & set(packages)
    listed = [c for c in found if c.kind == "package"]
    assert [c.name for c in listed] == sorted((c.name for c in listed), key=str.casefold)
    assert all(version == metadata.version(dist) for dist, version in (c.name.rsplit(" ", 1) for c in listed))
    # the FFmpeg opencv-python's wheel vendors is loaded with cv2: LGPL, named with the files that showed it
    ffmpeg = [c for c in found if c.kind == "bundled" and c.name.startswith("FFmpeg in opencv-python")]
    assert len(ffmpeg) == 1 and ffmpeg[0].license == "LGPL-2.1-or-later"
    assert "libavcodec" in ffmpeg[0].name and "opencv_python.libs" in ffmpeg[0].source
    bundled = [c for c in found if c.kind == "bundled"]
    assert all(c.license is not None for c in bundled), [c for c in bundled if c.license is None]


def test_an_openvino_artifact_runs_on_openvino_not_on_onnxruntime(onnx_artifact, tmp_path):
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_artifact)), str(tmp_path / "openvino" / "model.xml"))
    packages = by_distribution(inference_packages(tmp_path / "openvino", SETTINGS))
    assert packages["openvino"] == ("Apache-2.0", "package metadata License-Expression") == as_read("openvino")
    assert "numpy" in packages
    assert not (NOT_ON_THE_PATH | {"onnxruntime"}) & set(packages)


@pytest.mark.parametrize(
    "content, problem",
    [
        pytest.param(None, "model artifact not found", id="missing"),
        pytest.param(b"definitely not protobuf", "ONNX Runtime cannot load", id="not-onnx"),
        pytest.param(b"", "ONNX Runtime cannot load", id="empty"),
    ],
)
def test_an_artifact_the_probe_cannot_run_fails_naming_it(tmp_path, content, problem):
    artifact = tmp_path / "broken.onnx"
    if content is not None:
        artifact.write_bytes(content)
    with pytest.raises(InferenceProbeError, match=rf"{artifact}: the inference license probe failed .*{problem}"):
        inference_packages(artifact, SETTINGS)


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        pytest.param("cv.libs/libavcodec-e0dd92b8.so.59.37.100", ("FFmpeg", "LGPL-2.1-or-later"), id="ffmpeg"),
        pytest.param("cv.libs/libswscale-95ddd674.so.6.7.100", ("FFmpeg", "LGPL-2.1-or-later"), id="swscale"),
        pytest.param("opencv_python.libs/libQt5Core-e7f476e2.so.5.15.16", ("Qt", "LGPL-3.0-only"), id="qt"),
        pytest.param("opencv_python.libs/libssl-28bef1ac.so.1.1", ("OpenSSL 1.x", "OpenSSL"), id="openssl-1"),
        pytest.param("pkg.libs/libcrypto-01067bc0.so.3", ("OpenSSL 3", "Apache-2.0"), id="openssl-3"),
        pytest.param(
            "numpy.libs/libgfortran-040039e1-0352e75f.so.5.0.0",
            ("GCC runtime", "GPL-3.0-or-later WITH GCC-exception-3.1"),
            id="gfortran-two-hashes",
        ),
        pytest.param("numpy.libs/libscipy_openblas64_-56d6093b.so", ("OpenBLAS", "BSD-3-Clause"), id="openblas"),
        pytest.param("opencv_python.libs/libpng16-04239421.so.16.48.0", ("libpng", "libpng-2.0"), id="png-version"),
        pytest.param("torchvision.libs/libz.915b4635.so.1", ("zlib", "Zlib"), id="zlib-dot-hash"),
        pytest.param("x.libs/libzstd-1a2b3c4d.so.1", ("zstd / WebP / libssh2 / PCRE", "BSD-3-Clause"), id="not-zlib"),
        pytest.param("x.libs/libmystery-1a2b3c4d.so.1", None, id="unknown"),
        pytest.param("x.libs/libavcodecx-1a2b3c4d.so.1", None, id="prefix-is-not-enough"),
    ],
)
def test_vendored_libraries_are_known_by_file_name(file, expected):
    assert bundled_project(file) == expected


def test_vendored_libraries_group_per_project_and_unknown_ones_stay_unknown():
    found = [
        {"file": "cv.libs/libavcodec-e0dd92b8.so.59.37.100", "distribution": "opencv-python"},
        {"file": "opencv_python.libs/libavutil-734d06dd.so.57.28.100", "distribution": "opencv-python"},
        {"file": "numpy.libs/libmystery-1a2b3c4d.so.1", "distribution": "numpy"},
        {"file": "orphan.libs/libavutil-00000000.so.57", "distribution": ""},
    ]
    components = {c.name: c for c in bundled_components(found)}
    version = metadata.version("opencv-python")
    ffmpeg = components[f"FFmpeg in opencv-python {version} (libavcodec, libavutil)"]
    assert (ffmpeg.kind, ffmpeg.license) == ("bundled", "LGPL-2.1-or-later")
    mystery = components[f"libmystery in numpy {metadata.version('numpy')} (libmystery)"]
    assert mystery.license is None and "not in tasks.targets.inference_licenses.BUNDLED_LIBRARIES" in mystery.source
    assert "FFmpeg in an unknown distribution (libavutil)" in components
    assert bundled_components([]) == ()


def test_the_probe_lists_only_libraries_from_vendored_folders(tmp_path):
    mapped = [
        Path("/venv/site-packages/opencv_python.libs/libavcodec-e0dd92b8.so.59.37.100"),
        Path("/usr/lib/x86_64-linux-gnu/libc.so.6"),  # the system's: not shipped by a wheel
        Path("/venv/site-packages/cv2/cv2.abi3.so"),  # the package's own extension: its metadata covers it
        Path("/venv/site-packages/numpy.libs/README.txt"),
    ]
    found = inference_probe.loaded_bundled_libraries(mapped)
    assert [f["file"] for f in found] == ["opencv_python.libs/libavcodec-e0dd92b8.so.59.37.100"]
    assert found[0]["distribution"] == "opencv-python"
    assert inference_probe.loaded_bundled_libraries([]) == []


def test_a_probe_past_its_timeout_fails_naming_the_artifact(onnx_artifact):
    with pytest.raises(InferenceProbeError, match=rf"{onnx_artifact}: .* did not finish within 0.01 s"):
        inference_packages(onnx_artifact, SETTINGS, timeout_s=0.01)


def test_the_probe_runs_with_the_offline_settings_and_nothing_else_of_the_callers(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("VISIONLOOP_SURPRISE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a value the caller set wins, as in tasks.env.apply_env
    env = probe_env()
    assert "PYTHONPATH" not in env and "VISIONLOOP_SURPRISE" not in env
    assert env["YOLO_OFFLINE"] == "1" and env["HF_HUB_OFFLINE"] == "0"


# ------------------------------------------------------------------ reading a distribution's metadata


def crafted_dist(root: Path, name: str, *headers: str, body: str = "", module: str | None = None) -> Path:
    """A ``<name>-1.0.dist-info`` with ``headers`` (``Key: value`` lines) in its METADATA; ``module`` installed."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    text = "\n".join(["Metadata-Version: 2.4", f"Name: {name}", "Version: 1.0", *headers]) + "\n"
    (info / "METADATA").write_text(text + (f"\n{body}" if body else ""))
    if module is not None:
        (root / module).mkdir()
        (root / module / "__init__.py").write_text("")
        (info / "RECORD").write_text(f"{module}/__init__.py,,\n{info.name}/METADATA,,\n")
    return info


LONG_TEXT = "Copyright (c) 2005, Someone.\n        All rights reserved.\n        Redistribution and use ..."


@pytest.mark.parametrize(
    "headers, expected",
    [
        pytest.param((), (None, "no license field"), id="nothing-declared"),
        pytest.param(("License: UNKNOWN",), (None, "no license field"), id="old-setuptools-unknown"),
        pytest.param(("License: ",), (None, "no license field"), id="empty-license"),
        pytest.param(
            ("License-Expression: MIT OR Apache-2.0", "License: BSD", "Classifier: License :: OSI Approved :: BSD"),
            ("MIT OR Apache-2.0", "package metadata License-Expression"),
            id="expression-first",
        ),
        pytest.param(("License: AGPL-3.0",), ("AGPL-3.0", "package metadata License"), id="short-license"),
        pytest.param(
            (f"License: {LONG_TEXT}", "Classifier: License :: OSI Approved :: BSD License"),
            ("BSD License", "package metadata classifiers"),
            id="license-text-then-classifier",
        ),
        pytest.param(
            (f"License: {LONG_TEXT}",),
            ("license text, see metadata", "package metadata License (full text)"),
            id="license-text-alone",
        ),
        pytest.param(
            (f"License: {'x' * 101}",),
            ("license text, see metadata", "package metadata License (full text)"),
            id="one-line-but-too-long",
        ),
        pytest.param(
            (
                "Classifier: Programming Language :: Python",
                "Classifier: License :: OSI Approved :: Apache Software License",
                "Classifier: License :: OSI Approved :: BSD License",
            ),
            ("Apache Software License AND BSD License", "package metadata classifiers"),
            id="several-classifiers",
        ),
    ],
)
def test_license_fields_are_read_in_order(tmp_path, headers, expected):
    dist = metadata.PathDistribution(crafted_dist(tmp_path, "crafted", *headers))
    assert read_license(dist.metadata) == expected


def test_an_imported_package_with_no_license_field_is_listed_as_unknown(tmp_path, monkeypatch):
    crafted_dist(tmp_path, "quietpkg", module="quietpkg")
    (tmp_path / "loose_module.py").write_text("")  # on the path, but no distribution owns it
    monkeypatch.syspath_prepend(str(tmp_path))
    import loose_module  # noqa: F401
    import quietpkg  # noqa: F401

    found = describe_distributions(["loose_module", "quietpkg"])
    assert found == {
        "packages": [
            {
                "name": "quietpkg",
                "version": "1.0",
                "license": None,
                "source": "no license field",
                "modules": ["quietpkg"],
            }
        ],
        "unowned": ["loose_module"],
    }


def test_the_standard_library_and_the_project_are_not_third_party():
    names = ["json", "json.decoder", "_ssl", "__main__", "tasks.env", "tasks", "numpy.linalg"]
    assert third_party_modules(names) == ["numpy"]


def test_the_probe_itself_imports_only_the_standard_library():
    """Everything the probe reports was imported by loading the artifact, not by the probe's own module."""
    tree = ast.parse(Path(inference_probe.__file__).read_text())
    tops = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    tops |= {node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert {top.split(".")[0] for top in tops} - {"__future__"} <= set(sys.stdlib_module_names)


# ------------------------------------------------------------------ runtimes and model code


def test_every_export_target_has_a_runtime():
    assert set(RUNTIME_MODULES) == set(TARGETS)


@pytest.mark.parametrize(
    "target, dist", [("onnx", "onnxruntime"), ("onnx_int8", "onnxruntime"), ("openvino", "openvino")]
)
def test_a_runtime_license_is_read_from_its_installed_package(target, dist):
    component = runtime_component(target)
    assert (component.kind, component.name) == ("runtime", f"{dist} {metadata.version(dist)}")
    assert (component.license, component.source) == as_read(dist)


@pytest.mark.parametrize("target", ["tensorrt_fp16", "tensorrt_int8"])
def test_tensorrt_is_declared_under_nvidias_terms(target):
    component = runtime_component(target)
    assert (component.license, component.source) == (
        "NVIDIA TensorRT license",
        "declared: NVIDIA Software License Agreement",
    )


def test_an_unknown_export_target_has_no_runtime():
    with pytest.raises(ValueError, match=r"export target 'coreml': no runtime known"):
        runtime_component("coreml")


def test_the_model_code_license_comes_from_the_familys_package():
    component = model_code_component(FAMILIES["yolo"])
    assert component.kind == "model_code"
    assert component.name == f"yolo: ultralytics {metadata.version('ultralytics')}"
    assert (component.license, component.source) == as_read("ultralytics") == ("AGPL-3.0", "package metadata License")


def test_a_family_whose_package_is_not_installed_has_an_unknown_code_license():
    absent = SimpleNamespace(name="ghost", package="ghost-detectors-not-installed")
    component = model_code_component(absent)  # type: ignore[arg-type]
    assert (component.name, component.license, component.source) == (
        "ghost: ghost-detectors-not-installed",
        None,
        "not installed here",
    )


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_names_an_installed_package(name):
    assert metadata.version(FAMILIES[name].package)


# ------------------------------------------------------------------ the probe's answer, kept per inference path


def test_the_probe_answers_once_per_inference_path(onnx_artifact, tmp_path, monkeypatch):
    from tasks.targets import inference_licenses

    calls: list[Path] = []
    real = inference_licenses.inference_packages

    def counted(artifact, settings, **kwargs):
        calls.append(Path(artifact))
        return real(artifact, settings, **kwargs)

    monkeypatch.setattr(inference_licenses, "inference_packages", counted)
    first = cached_inference_packages(onnx_artifact, SETTINGS, "onnx", folder=tmp_path)
    other_weights = tmp_path / "other.onnx"
    other_weights.write_bytes(onnx_artifact.read_bytes())
    again = cached_inference_packages(other_weights, SETTINGS, "onnx", folder=tmp_path)
    assert again == first and calls == [onnx_artifact]  # same target, settings, environment: one probe
    cached_inference_packages(onnx_artifact, InferenceSettings(imgsz=SIZE, threads=1), "onnx", folder=tmp_path)
    assert len(calls) == 2  # other settings: probed again
    (tmp_path / f"{inference_path_key('onnx', SETTINGS)}.json").write_text("{not json")
    assert cached_inference_packages(onnx_artifact, SETTINGS, "onnx", folder=tmp_path) == first
    assert len(calls) == 3  # an unreadable cache file is probed again and rewritten
    with pytest.raises(InferenceProbeError, match="model artifact not found"):  # a missing artifact never hits
        cached_inference_packages(tmp_path / "gone.onnx", SETTINGS, "onnx", folder=tmp_path)


@pytest.mark.parametrize(
    ("change", "same"),
    [
        pytest.param(lambda t, s: (t, s), True, id="nothing"),
        pytest.param(lambda t, s: ("openvino", s), False, id="target"),
        pytest.param(lambda t, s: (t, InferenceSettings(imgsz=SIZE * 2)), False, id="settings"),
    ],
)
def test_the_cache_key_names_what_the_inference_path_depends_on(change, same):
    assert (inference_path_key(*change("onnx", SETTINGS)) == inference_path_key("onnx", SETTINGS)) is same
