"""The house rules of ``tasks/``: who may import what, no circles, sizes, and DVC deps that cover the code a stage runs.

Rooms (README "Layout"): ``core`` pure maths, ``contracts`` files that cross a stage boundary, ``decisions`` pure
rules, ``runtimes`` inference sessions, ``models`` model families, ``targets`` export builders, ``adapters``
services, ``sim`` demo/test fixtures. Stages are the top-level modules named after a params section.
Every import counts, lazy ones inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
import yaml

from tasks.config import Params
from tasks.env import PROJECT_ROOT

TASKS = PROJECT_ROOT / "tasks"
STAGES = {name for name in Params.model_fields if name != "base"}
INFRA = {"config", "env", "io", "cli", "serving"}  # top-level modules that are not stages (serving: old-pickle shim)
ROOMS = {"core", "contracts", "decisions", "runtimes", "models", "targets", "adapters", "sim"}
# room -> the rooms and top-level modules it may import (downward only)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "contracts": {"core", "config", "io"},
    "decisions": {"core", "contracts", "config"},
    "runtimes": {"core", "contracts", "config"},
    "models": {"runtimes", "core", "contracts", "config", "env", "io"},
    "targets": {"models", "runtimes", "decisions", "core", "contracts", "config", "env", "io"},
    "adapters": {"runtimes", "contracts", "core", "config", "io", "env", "cli"},
    "sim": {"adapters", "contracts", "core", "config", "io", "env", "cli"},
}
ALLOWED_INFRA: dict[str, set[str]] = {
    "config": set(),
    "io": set(),
    "env": set(),
    "cli": {"config", "env", "io"},
    "serving": {"runtimes"},
}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
LONG_MARK = "# long:"  # a comment right above a def that says why the function stays whole


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def tasks_files() -> list[Path]:
    return sorted(TASKS.rglob("*.py"))


@functools.cache
def imports_of(path: Path) -> frozenset[str]:
    """Every module name ``path`` imports (top-level and lazy), resolved to modules that exist where local."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if module_path(sub) is not None:
                    found.add(sub)
    return frozenset(found)


def local_imports(path: Path) -> set[str]:
    """The ``tasks`` modules ``path`` imports (packages only when nothing below them is named)."""
    names = {m for m in imports_of(path) if m.split(".")[0] == "tasks" and module_path(m) is not None}
    return {m for m in names if not any(other.startswith(m + ".") for other in names)} - {"tasks"}


def owner(name: str) -> str:
    """``tasks.core.boxes`` -> ``core``; ``tasks.train`` -> ``train``; ``tasks`` -> ``tasks``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_room(name: str) -> bool:
    return owner(name) in ROOMS


def third_party(path: Path, top: str) -> bool:
    return any(m.split(".")[0] == top for m in imports_of(path))


def rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


# ------------------------------------------------------------------ who may import what


def test_every_module_lives_in_a_room_or_is_a_stage_or_infra():
    for path in tasks_files():
        name = module_name(path)
        if name == "tasks":
            continue
        assert owner(name) in ROOMS | STAGES | INFRA, f"{rel(path)}: not a stage, not infra, not in a room"


def test_nothing_in_tasks_imports_prefect():
    for path in tasks_files():
        assert not third_party(path, "prefect"), f"{rel(path)} imports prefect: stage code runs without Prefect"


def test_only_models_import_ultralytics():
    for path in tasks_files():
        if third_party(path, "ultralytics"):
            assert owner(module_name(path)) == "models", f"{rel(path)} imports ultralytics (only tasks/models/ may)"


def test_only_adapters_import_label_studio_sdk():
    for path in tasks_files():
        if third_party(path, "label_studio_sdk"):
            assert owner(module_name(path)) == "adapters", f"{rel(path)} imports label_studio_sdk"


# The pyfunc class must subclass mlflow.pyfunc.PythonModel: it is the model MLflow loads, not a client call.
MLFLOW_EXCEPTIONS = {"tasks/runtimes/pyfunc.py"}


def test_only_adapters_talk_to_mlflow():
    for path in tasks_files():
        if third_party(path, "mlflow") and rel(path) not in MLFLOW_EXCEPTIONS:
            assert owner(module_name(path)) == "adapters", f"{rel(path)} imports mlflow (only tasks/adapters/ may)"


# The world stage is the demo's data source: it renders the synthetic world, so it alone may import tasks.sim.
SIM_IMPORTERS = {"tasks/world.py", "flows/demo.py", "flows/demo_commercial.py"}


def test_sim_is_imported_only_by_the_demo_and_the_world_stage():
    for path in [*tasks_files(), *sorted((PROJECT_ROOT / "flows").glob("*.py"))]:
        if owner(module_name(path)) == "sim":
            continue
        if any(m == "tasks.sim" or m.startswith("tasks.sim.") for m in imports_of(path)):
            assert rel(path) in SIM_IMPORTERS, f"{rel(path)} imports tasks.sim (demo and test fixtures only)"


def test_rooms_import_downward_only():
    for path in tasks_files():
        name = module_name(path)
        if name == "tasks" or owner(name) in STAGES:
            continue
        allowed = ALLOWED.get(owner(name), ALLOWED_INFRA.get(owner(name), set()))
        for target in local_imports(path):
            if owner(target) == owner(name):
                continue
            assert owner(target) not in STAGES, f"{rel(path)} imports the stage module {target}"
            assert owner(target) in allowed, f"{rel(path)} ({owner(name)}) may not import {target}"


def test_stages_do_not_import_other_stages():
    for stage in sorted(STAGES):
        path = TASKS / f"{stage}.py"
        for target in local_imports(path):
            assert owner(target) not in STAGES - {stage}, f"tasks/{stage}.py imports the stage {target}"


def _graph() -> dict[str, set[str]]:
    graph = {module_name(p): local_imports(p) for p in tasks_files()}
    return {k: {t for t in v if t in graph and t != k} for k, v in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` (module -> modules it imports), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_tasks():
    cycle = find_cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


# ------------------------------------------------------------------ sizes


@pytest.mark.parametrize("path", tasks_files(), ids=rel)
def test_module_is_short_enough_to_read(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{rel(path)}: {lines} lines (at most {MAX_MODULE_LINES}: split it by role)"


def long_functions(path: Path) -> list[str]:
    source = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(source))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        comment, row = [], first - 2
        while row >= 0 and source[row].strip().startswith("#"):  # the comment block right above the def
            comment.append(source[row].strip())
            row -= 1
        if length > MAX_FUNCTION_LINES and not any(line.startswith(LONG_MARK) for line in comment):
            found.append(f"{rel(path)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_functions_are_short_or_say_why():
    problems = [item for path in tasks_files() for item in long_functions(path)]
    assert not problems, f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_MARK}' comment: {problems}"


# ------------------------------------------------------------------ DVC deps cover the code a stage runs


def closure(start: str) -> set[str]:
    graph = _graph()
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo += sorted(graph.get(node, ()))
        package = node.rpartition(".")[0]
        while package and package != "tasks":  # importing tasks.a.b runs tasks/a/__init__.py first
            if package in graph and package not in seen:
                todo.append(package)
            package = package.rpartition(".")[0]
    return seen


def covered(file: str, deps: list[str]) -> bool:
    return any(file == dep.rstrip("/") or file.startswith(dep.rstrip("/") + "/") for dep in deps)


DVC = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
DVC_MODULE = {"params": "tasks.cli"}  # the one DVC stage that is not a tasks/<stage>.py: it writes the effective params


@pytest.mark.parametrize("stage", sorted(DVC))
def test_dvc_deps_cover_every_module_the_stage_imports(stage):
    deps = [d if isinstance(d, str) else next(iter(d)) for d in DVC[stage]["deps"]]
    missing = sorted(rel(p) for m in closure(f"tasks.{stage}") if (p := module_path(m)) and not covered(rel(p), deps))
    assert not missing, f"dvc.yaml stage {stage}: add to deps {missing} (the stage imports them)"


def test_the_registered_model_class_runs_on_runtimes_alone():
    """The pyfunc class a version pickles imports nothing of tasks/ outside runtimes/ (it must load anywhere)."""
    outside = sorted(m for m in closure("tasks.runtimes.pyfunc") if owner(m) != "runtimes")
    assert not outside, f"tasks/runtimes/pyfunc.py pulls in {outside}"
