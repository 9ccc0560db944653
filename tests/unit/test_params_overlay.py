"""Params overlays: repeated --params and ``extends:``, the stamp every report carries, and the DVC bridge."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.cli import main as cli_main
from tasks.cli import stage_main, write_effective_params
from tasks.config import ConfigError, VisionloopError, load_params
from tasks.env import PROJECT_ROOT

BASE = PROJECT_ROOT / "params.yaml"


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_later_file_wins_key_by_key(tmp_path):
    site = write(tmp_path / "site.yaml", {"train": {"epochs": 3}, "gate": {"min_class_boxes": 7}})
    params = load_params([BASE, site])
    base = load_params(BASE)
    assert params.train.epochs == 3 and params.gate.min_class_boxes == 7
    # untouched keys of a touched section keep the base's value
    assert params.train.model_dump(exclude={"epochs"}) == base.train.model_dump(exclude={"epochs"})
    assert params.sources == (str(BASE), str(site))
    assert params.stamp()["digest"] != base.stamp()["digest"]
    assert base.stamp() == {"sources": [str(BASE)], "digest": base.digest()}


def test_extends_names_the_base_relative_to_the_overlay(tmp_path):
    (tmp_path / "conf").mkdir()
    base = tmp_path / "params.yaml"
    base.write_text(BASE.read_text())
    mid = write(tmp_path / "conf" / "mid.yaml", {"extends": "../params.yaml", "train": {"epochs": 5}})
    top = write(tmp_path / "conf" / "top.yaml", {"extends": "mid.yaml", "train": {"batch": 4}})
    params = load_params(top)
    assert (params.train.epochs, params.train.batch) == (5, 4)
    assert params.sources == (str(base), str(mid), str(top))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": {"extends": "b.yaml"}, "b.yaml": {"extends": "a.yaml"}}, "'extends' chain loops"),
        ({"a.yaml": {"extends": "missing.yaml"}}, "missing.yaml: params file not found"),
        ({"a.yaml": {"extends": 3}}, "'extends' must be a path"),
        ({"a.yaml": {"extends": "params.yaml", "train": {"epoch": 3}}}, "train.epoch"),
    ],
    ids=["loop", "missing-base", "not-a-path", "typo-in-overlay"],
)
def test_bad_overlays_fail_naming_the_file_and_key(tmp_path, files, message):
    (tmp_path / "params.yaml").write_text(BASE.read_text())
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_params(tmp_path / "a.yaml")


def test_the_stage_command_line_layers_repeated_params(tmp_path, capsys):
    site = write(tmp_path / "site.yaml", {"train": {"epochs": 2}})
    seen = stage_main(
        "train",
        "doc",
        run=lambda params, args: params,
        summary=lambda params: f"epochs={params.train.epochs}",
        argv=["--params", str(BASE), "--params", str(site)],
    )
    assert seen.train.epochs == 2 and capsys.readouterr().out.strip() == "epochs=2"
    assert stage_main("train", "doc", run=lambda params, args: params, argv=[]).sources == ("params.yaml",)


def test_a_stage_error_is_a_clean_exit_with_the_stage_name(capsys):
    def fail(params, args):
        raise VisionloopError("bad input at data/x.txt line 3")

    with pytest.raises(SystemExit) as exit_info:
        stage_main("merge", "doc", run=fail, argv=["--params", str(BASE)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "merge: bad input at data/x.txt line 3"


def test_the_effective_params_file_loads_back_to_the_layered_params(tmp_path):
    site = write(tmp_path / "site.yaml", {"train": {"epochs": 3}, "gate": {"min_class_boxes": 7}})
    layered = load_params([BASE, site], overrides={"merge": {"seed": 11}})
    path = write_effective_params(layered, tmp_path / "params.effective.yaml")
    again = load_params(path)
    assert again.digest() == layered.digest()
    assert (again.train.epochs, again.gate.min_class_boxes, again.merge.seed) == (3, 7, 11)
    assert path.read_text().startswith("# effective params, written by visionloop")


def test_the_effective_params_command_writes_the_file(tmp_path, capsys):
    site = write(tmp_path / "site.yaml", {"train": {"epochs": 4}})
    out = tmp_path / "eff.yaml"
    cli_main(["effective-params", "--params", str(BASE), "--params", str(site), "--out", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    assert load_params(out).train.epochs == 4
    with pytest.raises(SystemExit, match="params file not found"):
        cli_main(["effective-params", "--params", str(tmp_path / "missing.yaml"), "--out", str(out)])


@pytest.mark.parametrize(
    ("overrides", "fails"),
    [
        ({"train": {"yolo": {"workers": 2}}}, True),  # on the default cpu device: Ultralytics would ignore it
        ({"train": {"yolo": {"workers": 2}}, "base": {"device": "0"}}, False),
        ({"train": {"yolo": {"workers": 0}}}, False),
    ],
    ids=["workers-on-cpu", "workers-on-cuda", "no-workers"],
)
def test_a_key_the_device_would_ignore_fails_at_load(overrides, fails):
    if fails:
        with pytest.raises(ConfigError, match=r"train\.yolo\.workers = 2 does nothing"):
            load_params(BASE, overrides=overrides)
    else:
        load_params(BASE, overrides=overrides)
