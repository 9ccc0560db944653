"""Checkpoints the project did not produce are never unpickled (issue 12).

Ultralytics checkpoints are pickles of whole model objects: they do not load with ``torch.load(weights_only=True)``,
so opening one runs whatever code it carries. Every ``.pt`` entry point (the runtime loader behind
``load_detector``: evaluate, export's reference, gate, timing; the ONNX export; the warm start of training) must
first find the file's SHA-256 in a record of the project (``reports/train.json``, a registered version's
``checkpoint_sha256`` tag) or in ``train.trusted_checkpoints``.

One real training run (1 epoch, 64 px) makes the project's checkpoint; a foreign one is a fresh Ultralytics model
saved by the test; a booby-trapped one is a pickle whose ``__reduce__`` creates a marker file when unpickled.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tasks import train, world
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.checkpoints import (
    CHECKPOINT_SHA256,
    UntrustedCheckpointError,
    check_trusted,
    trusted_checkpoints,
)
from tasks.contracts.reports import load_report
from tasks.core.hashing import file_sha256
from tasks.models import family
from tasks.models.base import TrainData
from tasks.models.yolo import configure_ultralytics
from tasks.runtimes.detectors import InferenceSettings, load_detector
from tests.conftest import tiny_params_dict

SETTINGS = InferenceSettings(imgsz=64)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """A tiny project whose train stage ran once: ``models/train/best.pt`` and ``reports/train.json``."""
    root = tmp_path_factory.mktemp("project")
    params = Params.model_validate(tiny_params_dict(root))
    world.run(params)
    train.run(params)
    return params


def allowing(params: Params, *hashes: str) -> Params:
    """``params`` with ``train.trusted_checkpoints`` naming ``hashes``."""
    cfg = params.train.model_copy(update={"trusted_checkpoints": tuple(hashes)})
    return params.model_copy(update={"train": cfg})


def foreign_checkpoint(path: Path) -> Path:
    """A freshly built Ultralytics model saved as a ``.pt``: a real checkpoint, not made by the project."""
    configure_ultralytics()
    from ultralytics import YOLO

    YOLO("yolo26n.yaml").save(str(path))
    return path


class _Trap:
    """Unpickling this creates ``marker``: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return Path.touch, (self.marker,)


def trapped_checkpoint(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": _Trap(marker)}))
    return path


def open_runtime(params: Params, path: Path) -> Any:
    family(params)  # every stage looks its family up before loading: that says whose records count
    return load_detector(path, SETTINGS)


def export(params: Params, path: Path) -> Any:
    return family(params).export_onnx(path, path.parent / "out" / "model.onnx", params=params)


def warm_start(params: Params, path: Path) -> Any:
    warm = params.model_copy(update={"train": params.train.model_copy(update={"weights": path})})
    data = TrainData(train=path.parent / "none", val=path.parent / "none", classes=("a",))  # fails after the load
    return family(warm).fit(warm, data=data, out_dir=path.parent / "fit", on_epoch=lambda e, m: None)


ENTRY_POINTS = [
    pytest.param(open_runtime, id="load_detector"),
    pytest.param(export, id="export_onnx"),
    pytest.param(warm_start, id="warm-start"),
]


# ---------------------------------------------------------------------------------------------- the project's own


def test_the_train_stage_records_its_checkpoint(project: Params) -> None:
    best = project.base.paths.models / "train" / "best.pt"
    report = load_report(project.base.paths.reports, "train")
    assert report.checkpoint_sha256 == file_sha256(best)
    assert trusted_checkpoints(project)[report.checkpoint_sha256].endswith("train.json")


def test_a_project_trained_checkpoint_loads(project: Params) -> None:
    best = project.base.paths.models / "train" / "best.pt"
    detector = open_runtime(project, best)
    assert detector.forward is not None


def test_a_project_trained_checkpoint_exports(project: Params, tmp_path: Path) -> None:
    copy = tmp_path / "best.pt"
    shutil.copyfile(project.base.paths.models / "train" / "best.pt", copy)
    export(project, copy)
    assert (tmp_path / "out" / "model.onnx").is_file()


# ---------------------------------------------------------------------------------------------- refused


def test_one_byte_changed_is_refused(project: Params, tmp_path: Path) -> None:
    data = bytearray((project.base.paths.models / "train" / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    changed = tmp_path / "best.pt"
    changed.write_bytes(bytes(data))
    sha = file_sha256(changed)
    with pytest.raises(UntrustedCheckpointError) as caught:
        open_runtime(project, changed)
    message = str(caught.value)
    assert str(changed) in message and sha in message and "train.trusted_checkpoints" in message


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_foreign_checkpoint_is_refused_then_allowed(
    project: Params, tmp_path: Path, entry: Callable[[Params, Path], Any]
) -> None:
    foreign = foreign_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(UntrustedCheckpointError, match=file_sha256(foreign)):
        entry(project, foreign)
    allowed = allowing(project, file_sha256(foreign))
    if entry is warm_start:  # allowed: it goes on to train, which needs data: the check let it through
        with pytest.raises(Exception) as caught:
            entry(allowed, foreign)
        assert not isinstance(caught.value, UntrustedCheckpointError)
    else:
        entry(allowed, foreign)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_refused_file_is_never_unpickled(
    project: Params, tmp_path: Path, entry: Callable[[Params, Path], Any]
) -> None:
    marker = tmp_path / "unpickled.marker"
    trap = trapped_checkpoint(tmp_path / "trap.pt", marker)
    with pytest.raises(UntrustedCheckpointError):
        entry(project, trap)
    assert not marker.exists(), "the refused checkpoint was unpickled"
    # the trap works: allowed, the same entry point unpickles it (and then fails on what it found)
    with pytest.raises(Exception):  # noqa: B017 - any failure after unpickling
        entry(allowing(project, file_sha256(trap)), trap)
    assert marker.exists()


def test_without_a_family_lookup_nothing_is_trusted(project: Params, tmp_path: Path) -> None:
    """A loader called in a context where no params said whose records count trusts no checkpoint."""
    import contextvars

    best = project.base.paths.models / "train" / "best.pt"
    family(project)  # registers the loader in this process
    with pytest.raises(UntrustedCheckpointError):
        contextvars.Context().run(load_detector, best, SETTINGS)


# ---------------------------------------------------------------------------------------------- records and rules


def test_the_registry_records_the_checkpoint_hash(project: Params) -> None:
    sha = file_sha256(project.base.paths.models / "train" / "best.pt")
    assert mlflow_adapter.checkpoint_hashes(project) == {}  # nothing registered yet
    assert trusted_checkpoints(project, registered={"f" * 64: "model m v1"})["f" * 64] == "model m v1"
    assert CHECKPOINT_SHA256 == "checkpoint_sha256" and len(sha) == 64


@pytest.mark.parametrize(
    "trusted, ok",
    [
        pytest.param({}, False, id="empty"),
        pytest.param({"a" * 64: "reports/train.json"}, True, id="recorded"),
        pytest.param({"b" * 64: "train.trusted_checkpoints"}, False, id="other-hash"),
    ],
)
def test_check_trusted(trusted: dict[str, str], ok: bool) -> None:
    if ok:
        assert check_trusted(Path("x.pt"), "a" * 64, trusted) == "reports/train.json"
    else:
        with pytest.raises(UntrustedCheckpointError, match=r"x\.pt: checkpoint sha256 a{64} .*add 'a{64}'"):
            check_trusted(Path("x.pt"), "a" * 64, trusted)


@pytest.mark.parametrize(
    "value, error",
    [
        pytest.param([], None, id="empty"),
        pytest.param(["A" * 64], None, id="upper-case-kept-lower"),
        pytest.param(["a" * 63], "String should match pattern", id="too-short"),
        pytest.param(["g" * 64], "String should match pattern", id="not-hex"),
        pytest.param("a" * 64, "valid tuple", id="not-a-list"),
    ],
)
def test_the_allow_list_is_validated(project: Params, value: Any, error: str | None) -> None:
    data = project.model_dump(mode="json")
    data["train"]["trusted_checkpoints"] = value
    if error is None:
        assert Params.model_validate(data).train.trusted_checkpoints == tuple(v.lower() for v in value)
    else:
        with pytest.raises(ValidationError, match=error):
            Params.model_validate(data)
