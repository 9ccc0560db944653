"""One stage = one name: dvc.yaml, params.yaml, the config models, tasks/<stage>.py, the Prefect tasks."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

from tasks.config import Params, load_params
from tasks.env import PROJECT_ROOT

DVC = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
SECTIONS = [name for name in Params.model_fields if name != "base"]
PREFECT = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())


def prefect_task_names() -> set[str]:
    tree = ast.parse((PROJECT_ROOT / "flows" / "stages.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "task":
            names |= {kw.value.value for kw in node.keywords if kw.arg == "name"}
    return names


def test_params_yaml_sections_match_config_models():
    assert set(PARAMS) == {"base", *SECTIONS}
    load_params(PROJECT_ROOT / "params.yaml")


def test_every_sampling_strategy_is_one_name_in_scores_config_and_params():
    """A strategy is a name in ``STRATEGIES`` (the scores, the report's counts), a ``sample.strategies`` field in the
    config, and a line in params.yaml, in the same order (the order breaks ties)."""
    from tasks.config import SampleStrategies
    from tasks.decisions.sampling import STRATEGIES

    assert list(STRATEGIES) == list(SampleStrategies.model_fields) == list(PARAMS["sample"]["strategies"])


@pytest.mark.parametrize("stage", SECTIONS)
def test_every_section_is_a_stage_module_with_run_and_main(stage):
    module = importlib.import_module(f"tasks.{stage}")
    assert callable(module.run) and callable(module.main)
    assert module.__doc__ and "Contract" in module.__doc__, "a stage module documents its contract"


@pytest.mark.parametrize("stage", SECTIONS)
def test_every_stage_has_a_prefect_task_of_the_same_name(stage):
    assert stage in prefect_task_names()


EFFECTIVE = "params.effective.yaml"  # every DVC stage reads its params from it; the `params` stage writes it


def test_the_params_stage_writes_the_effective_params_from_params_yaml():
    spec = DVC["params"]
    assert spec["cmd"] == f"python -m tasks.cli effective-params --params params.yaml --out {EFFECTIVE}"
    assert "params.yaml" in spec["deps"]
    assert [next(iter(o)) if isinstance(o, dict) else o for o in spec["outs"]] == [EFFECTIVE]


@pytest.mark.parametrize("stage", sorted(set(DVC) - {"params"}))
def test_dvc_stage_contract(stage):
    spec = DVC[stage]
    assert stage in SECTIONS, f"dvc stage {stage} has no params section / config model"
    assert spec["cmd"] == f"python -m tasks.{stage} --params {EFFECTIVE}"
    assert f"tasks/{stage}.py" in spec["deps"], "a stage depends on its own module"
    (declared,) = spec["params"]
    assert list(declared) == [EFFECTIVE], "a stage reads its params from the effective params file"
    keys = declared[EFFECTIVE]
    assert stage in keys, "a stage depends on its own params section"
    for key in keys:
        node = PARAMS
        for part in key.split("."):
            assert part in node, f"dvc.yaml {stage}: params key {key} not in params.yaml"
            node = node[part]


@pytest.mark.parametrize("stage", sorted(DVC))
def test_dvc_deps_exist_or_are_produced(stage):
    produced = set()
    for spec in DVC.values():
        for out in spec.get("outs", []) + spec.get("metrics", []):
            produced.add(out if isinstance(out, str) else next(iter(out)))
    for dep in DVC[stage]["deps"]:
        if "${" in dep:
            continue
        assert (PROJECT_ROOT / dep).exists() or dep in produced, f"{stage}: dep {dep} missing"


# Which code may import Prefect, Ultralytics, Label Studio's SDK or MLflow: tests/test_rooms.py (all of tasks/).


@pytest.mark.parametrize("deployment", PREFECT["deployments"], ids=lambda d: d["name"])
def test_prefect_deployments_point_at_flows(deployment):
    file, func = deployment["entrypoint"].split(":")
    module = importlib.import_module(str(Path(file).with_suffix("")).replace("/", "."))
    flow = getattr(module, func)
    assert flow.name == func
    assert set(deployment["parameters"]) <= set(flow.parameters.properties)


# Stages a Prefect retry may repeat: a second run of the same inputs changes nothing (registry finds its version
# by training run id; champion re-downloads atomically). Everything else either retries inside its adapter
# (label) or must not run twice (promote appends the audit trail).
IDEMPOTENT = {"registry", "champion"}


def prefect_task_retries() -> dict[str, int]:
    tree = ast.parse((PROJECT_ROOT / "flows" / "stages.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "task":
            keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}
            if "name" in keywords:
                retries = keywords.get("retries")
                found[keywords["name"].value] = retries.value if isinstance(retries, ast.Constant) else 0
    return found


def test_prefect_retries_only_wrap_idempotent_stages():
    retries = prefect_task_retries()
    assert {"label", "promote", "registry"} <= set(retries)  # the parser sees the tasks
    retried = {name for name, count in retries.items() if count}
    assert retried <= IDEMPOTENT, f"Prefect retries on non-idempotent tasks: {sorted(retried - IDEMPOTENT)}"


LOG_STORE = "tasks/adapters/log_store.py"  # the one reader of base.paths.predictions (a mirror of S3, or the log)


def _log_bypasses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        paths_owner = (isinstance(owner, ast.Attribute) and owner.attr == "paths") or (
            isinstance(owner, ast.Name) and owner.id == "paths"
        )
        if (node.attr == "predictions" and paths_owner) or (
            node.attr == "append" and isinstance(owner, ast.Name) and owner.id in ("prediction_log", "plog")
        ):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_stages_reach_the_prediction_log_only_through_the_log_store():
    """With ``base.storage.predictions`` set the log lives on S3 and ``base.paths.predictions`` is a mirror that only
    :func:`tasks.adapters.log_store.log_root` keeps in sync: a stage that reads the folder itself (or appends with
    ``prediction_log.append``) would miss or lose S3's parts."""
    files = sorted((PROJECT_ROOT / "tasks").rglob("*.py")) + sorted((PROJECT_ROOT / "flows").rglob("*.py"))
    bypasses = [hit for f in files if f.relative_to(PROJECT_ROOT).as_posix() != LOG_STORE for hit in _log_bypasses(f)]
    assert not bypasses, "use tasks.adapters.log_store.log_root(params) / append(params, ...):\n" + "\n".join(bypasses)
