from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, Params, load_params
from tasks.env import PROJECT_ROOT

DEFAULT = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def with_change(section: str, key: str, value) -> dict:
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data[section][key] = value
    return data


def test_project_params_load():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.base.classes == DEFAULT["base"]["classes"]
    assert params.train.epochs == DEFAULT["train"]["epochs"]


@pytest.mark.parametrize(
    ("data", "key_path"),
    [
        pytest.param(with_change("train", "epoch", 3), "train.epoch", id="unknown-key-typo"),
        pytest.param(with_change("train", "epochs", "many"), "train.epochs", id="wrong-type"),
        pytest.param(with_change("train", "epochs", 0), "train.epochs", id="out-of-range"),
        pytest.param(with_change("evaluate", "conf", 1.5), "evaluate.conf", id="fraction-above-one"),
        pytest.param(with_change("base", "colour", "red"), "base.colour", id="unknown-base-key"),
        pytest.param({**DEFAULT, "traing": {}}, "traing", id="unknown-section"),
        pytest.param({k: v for k, v in DEFAULT.items() if k != "base"}, "base", id="missing-base"),
        pytest.param(with_change("export", "targets", ["tflite"]), "export.targets.0", id="unknown-export-target"),
    ],
)
def test_bad_key_names_its_path(tmp_path, data, key_path):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, data))
    assert f"  {key_path}:" in str(err.value)
    assert str(tmp_path / "params.yaml") in str(err.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("base: [unclosed", "not valid YAML", id="not-yaml"),
        pytest.param("- a\n- b\n", "top level must be a mapping", id="list-top-level"),
    ],
)
def test_unreadable_params(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_params(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_scenario_names_must_exist(tmp_path):
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data["world"]["production"]["scenario"] = ["fog"]
    with pytest.raises(ConfigError, match=r"'fog'.*not defined under world.scenarios"):
        load_params(write(tmp_path, data))


def test_class_weights_length_checked(tmp_path):
    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data["world"]["source"]["class_weights"] = [1.0]
    with pytest.raises(ConfigError, match="class_weights has 1 entries"):
        load_params(write(tmp_path, data))


def test_overrides_merge_and_are_validated(tmp_path):
    path = write(tmp_path, DEFAULT)
    assert load_params(path, overrides={"train": {"epochs": 2}}).train.epochs == 2
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_params(path, overrides={"train": {"epochz": 2}})


def test_digest_changes_with_content():
    a = Params.model_validate(DEFAULT)
    b = Params.model_validate(with_change("train", "epochs", 99))
    assert a.digest() == Params.model_validate(DEFAULT).digest()
    assert a.digest() != b.digest()
