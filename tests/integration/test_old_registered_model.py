"""A model version registered by the code *before* ``tasks/`` had rooms still loads and predicts after the move.

The pyfunc pickles its class by reference (``tasks.serving.DetectorModel`` then) and ships the old ``tasks/`` as
``code_paths``. When such a version is loaded in a process where the new ``tasks`` package is already imported
(the rollback check does exactly this), the old name must resolve in the new package: ``tasks/serving.py`` keeps
it. This test checks the old code out of git (commit :data:`OLD_COMMIT`, the last one before the move),
registers a version with it in a temporary MLflow store in a separate process, then loads that version here,
with the new package imported, and predicts.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tasks.runtimes.pyfunc  # the new package is imported first, as in the rollback check
from tasks.env import PROJECT_ROOT
from tests.onnx_models import constant_detector

OLD_COMMIT = "43852b6"  # the last commit with the flat tasks/ (tasks.serving.DetectorModel, tasks.inference)
CLASSES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
# (x1, y1, x2, y2, score, class) rows the constant detector returns, in 64 px letterboxed input pixels
ROWS = [[8.0, 8.0, 24.0, 24.0, 0.9, 1.0], [30.0, 30.0, 60.0, 50.0, 0.8, 4.0], [0.0, 0.0, 4.0, 4.0, 0.01, 0.0]]

pytestmark = pytest.mark.integration


REGISTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tasks.config import load_params
    from tasks.registry import mlflow_run, register_model

    work = Path(sys.argv[1])
    params = load_params("params.yaml", overrides={
        "base": {"imgsz": 64, "classes": CLASSES},
        "registry": {"artifact_root": str(work / "mlartifacts")},
    })
    with mlflow_run(params, run_name="before-the-move") as run_id:
        pass
    info = register_model(params, run_id=run_id, weights=Path(sys.argv[2]), onnx=Path(sys.argv[3]),
                          reports={}, lineage={"made_by": "old tasks/"})
    print(info.name, info.version)
    """
).replace("CLASSES", repr(CLASSES))


def old_tree(dest: Path) -> Path:
    """``tasks/`` and ``params.yaml`` of :data:`OLD_COMMIT`, from this clone's git history."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "archive", "--format=tar", OLD_COMMIT, "tasks", "params.yaml"],
            capture_output=True,
            check=True,
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        message = f"git history without {OLD_COMMIT} (a shallow clone?): cannot build the old model ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.fixture
def restored_sys_path():
    """MLflow puts a loaded model's ``code_paths`` (here: the *old* ``tasks/``) first on ``sys.path``; later tests
    that spawn processes must find this checkout's ``tasks`` again."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def test_a_version_registered_before_the_move_loads_and_predicts(tmp_path, restored_sys_path):
    import mlflow.pyfunc

    old = old_tree(tmp_path / "old")
    assert (old / "tasks" / "serving.py").is_file() and not (old / "tasks" / "runtimes").exists()
    onnx_path = constant_detector(tmp_path / "model.onnx", ROWS)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"not used by the pyfunc")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": store}
    done = subprocess.run(
        [sys.executable, "-c", REGISTER, str(tmp_path), str(weights), str(onnx_path)],
        cwd=old,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name, version = done.stdout.split()[-2:]

    assert "tasks.serving" in sys.modules or tasks.runtimes.pyfunc  # the new package is what resolves the pickle
    # the store of this test only (an earlier test in the session may have set the process-wide URIs)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert type(model.unwrap_python_model()).__module__ == "tasks.runtimes.pyfunc"
    image = Image.fromarray(np.full((64, 64, 3), 127, np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = model.predict(pd.DataFrame({"image": [buffer.getvalue()]}))
    # the row below predict.conf is dropped; the two others come back in original pixels (64 px: unchanged)
    assert list(out["class_name"]) == ["square", "hexagon"]
    np.testing.assert_allclose(out[["x1", "y1", "x2", "y2"]].to_numpy()[0], [8, 8, 24, 24], atol=1e-3)
