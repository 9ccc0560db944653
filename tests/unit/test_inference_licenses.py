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
    inference_packages,
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
    assert {c.kind for c in found} == {"package"}
    assert [c.name for c in found] == sorted((c.name for c in found), key=str.casefold)
    assert all(version == metadata.version(dist) for dist, version in (c.name.rsplit(" ", 1) for c in found))


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
