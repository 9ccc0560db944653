"""``python -m tasks.merge`` as DVC and the flows call it: one cycle, then every cycle, then a clear failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.config import load_params
from tasks.contracts import merged_manifest as mm
from tasks.core.hashing import file_md5
from tests.conftest import tiny_params_dict
from tests.unit.test_merge import make_cycle, write_set

pytestmark = pytest.mark.integration


def cli(params_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.merge", "--params", str(params_file), *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(tmp_path), sort_keys=False))
    paths = load_params(path).base.paths
    write_set(paths.train, [f"train_{i:06d}" for i in range(6)], tone=0)
    write_set(paths.val, [f"val_{i:06d}" for i in range(2)], tone=1)
    write_set(paths.golden, [f"golden_{i:06d}" for i in range(2)], tone=2)
    return path


def test_cli_merges_a_cycle_then_every_cycle(params_file):
    params = load_params(params_file)
    paths = params.base.paths
    done = cli(params_file)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["mode"] == "bootstrap"

    make_cycle(params, "2026-11-02", 5, tone=3)
    done = cli(params_file, "--cycle", "2026-11-02")
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout.splitlines()[-1])
    assert first["mode"] == "merged" and first["images"] == 6 + 2 + 5

    make_cycle(params, "2026-11-09", 5, tone=4)
    (paths.labels / "outbox").mkdir()  # the label stage's exchange folder is not a cycle
    done = cli(params_file)
    assert done.returncode == 0, done.stderr
    report = json.loads((paths.reports / "merge.json").read_text())
    assert report["cycles"] == ["2026-11-02", "2026-11-09"]
    assert report["repeats"] == {"2026-11-02": 2, "2026-11-09": 4}
    assert report["manifest_md5"] == file_md5(paths.merged / mm.MANIFEST)
    assert sorted(p.name for p in paths.holdouts.iterdir()) == ["2026-11-02", "2026-11-09"]
    assert mm.use_merged(params)


def test_cli_names_a_missing_cycle(params_file):
    done = cli(params_file, "--cycle", "2026-12-01")
    assert done.returncode == 1
    assert "merge: " in done.stderr and "2026-12-01: cycle folder not found" in done.stderr
    assert "Traceback" not in done.stderr
