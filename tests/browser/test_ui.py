"""The registry and the loop as a person sees them: the MLflow and Prefect UIs in headless Chromium.

A real ``mlflow server`` (tests/mlflow_server.py) and a real ``prefect server start`` on 127.0.0.1; the data is
made by the project's own code on tiny inputs: a constant ONNX detector registered by the registry stage with the
lineage a cycle adds (:func:`tasks.cycle.candidate_lineage`), promoted by the promote stage, its cycle report written
and logged by :func:`tasks.cycle.run` and published to Prefect by the loop's own ``_publish``
(``tests/browser/publish_cycle.py``). Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright (no browser
download: ``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``, never ``playwright install``); without it the tests skip, and fail
under ``CI=true``.

Screenshots (the test artifacts) go to ``reports/test-artifacts/browser/<test>.png`` in the checkout.

The row check: MLflow's version table draws every version tag as one line (~24 px, long values truncated), so a
version's row is as tall as its tag count. The champion's row must fit the viewport; the same table with the tag set
versions carried before (per-target export figures, INT8 lineage JSON, one ``dvc.md5.<output>`` per output) must
not, which shows the check can fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tasks import cycle, promote, registry
from tasks.adapters import mlflow as mlflow_adapter
from tasks.config import Params
from tasks.contracts.reports import write_report
from tasks.contracts.reports.export import ArtifactCheck, ExportReport, ParityResult, SpeedResult
from tasks.env import PROJECT_ROOT
from tests.conftest import tiny_params_dict
from tests.integration.conftest import free_port
from tests.integration.test_license_record import trained
from tests.mlflow_server import mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 768}
WAIT_MS = 60_000  # a React page on a busy 2-core host; every wait is explicit, none is a sleep
SHOTS = PROJECT_ROOT / "reports" / "test-artifacts" / "browser"
CYCLE = "c-browser-0001"
# The targets an INT8-capable CPU host builds, and the evaluation sets: what the old tags were written for
OLD_TARGETS = ("onnx", "onnx_int8", "openvino", "openvino_int8")
OLD_SETS = ("golden", "holdout")
DVC_OUTPUTS = (
    "data/world",
    "data/holdouts",
    "data/merged",
    "models/export",
    "models/train/best.pt",
    "params.effective.yaml",
    "reports/world.json",
    "reports/merge.json",
    "reports/train.json",
    "reports/evaluate.json",
    "reports/export.json",
)


def unavailable(why: str) -> None:
    """Skip, or fail under ``CI=true`` (a real component that cannot start fails CI)."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


# --------------------------------------------------------------------------------------------------- servers


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        time.sleep(0.5)
    unavailable(f"{what} did not answer {url} within {timeout:.0f} s: {log.read_text()[-1500:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def prefect_server(root: Path) -> Iterator[Callable[[], str]]:
    """``prefect server start`` on 127.0.0.1 (SQLite under ``root``); yields a call that waits until it answers and
    gives its API URL (it boots while the test makes its data). The UI asks the API at ``PREFECT_UI_API_URL``:
    without it the page calls the default port and shows "Can't connect to Server API"."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(root / "server-home"),
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    log_path = root / "prefect-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> str:
            _wait_healthy(f"{api}/health", process, log_path, "prefect server")
            return api

        try:
            yield ready
        finally:
            _stop(process)


# ------------------------------------------------------------------------------------------------------ data


def write_export_report(params: Params) -> None:
    """An export report for the constant ONNX detector: FP32 ONNX built, checked and selected."""
    onnx = params.base.paths.models / "export" / "model.onnx"
    speed = SpeedResult(2, True, {"p50": 1.0, "p95": 1.2, "p99": 1.5, "mean": 1.05}, 4, 3.0, 1000.0, 5.0, 0.1, 5, 1)
    check = ArtifactCheck(
        target="onnx",
        path=str(onnx),
        size_mb=0.01,
        map50_95={"golden": 0.5},
        reference_map50_95={"golden": 0.5},
        max_drop=0.003,
        passed=True,
        parity=ParityResult(4, 10, 10, 0, 0, 0, 0, 0.9, True),
        speed=speed,
    )
    report = ExportReport(
        weights=str(params.base.paths.models / "train" / "best.pt"),
        params_digest=params.digest(),
        reference_map50_95={"golden": 0.5},
        artifacts=[check],
        selected={"target": "onnx", "path": str(onnx), "reason": "the only one"},
        selection={"onnx": "selected: the only one"},
        lineage={},
        host={},
    )
    write_report(params.base.paths.reports, "export", report, params)


def later_tags(version: str) -> dict[str, str]:
    """The tags the pin and the monitor add to a loop champion, with values shaped as theirs."""
    return {
        "dvc.commit": "9dfe0ce4052cfa71a160aeccf99ce8664f72f05c",
        "dvc.ref": f"refs/visionloop/pins/visionloop-detector-v{version}",
        "dvc.remote": "visionloop",
        "dvc.restorable": "true",
        "dvc.md5": json.dumps({output: "d41d8cd98f00b204e9800998ecf8427e.dir" for output in DVC_OUTPUTS}),
        "monitor.baseline": "monitor/baseline.parquet",
    }


def old_tags() -> dict[str, str]:
    """What a version carried before the registry moved per-target figures off its tags (shape as
    ``export_tags`` wrote them; one ``dvc.md5.<output>`` tag per DVC output)."""
    tags = {}
    for target in OLD_TARGETS:
        for index, name in enumerate(OLD_SETS):
            tags[f"export.{target}.map50_95" + ("" if index == 0 else f".{name}")] = "0.4321"
        tags[f"export.{target}.p50_ms"] = "12.345"
    tags["export.calibration"] = json.dumps({"source": "data/train/images", "seed": 0, "count": 64, "sha": "f" * 64})
    tags["export.quantization"] = json.dumps({"quantization": {"keep_head_fp32": True}, "calibration": {"images": 64}})
    tags["export.versions"] = json.dumps({"onnxruntime": "1.32.0", "openvino": "2026.4.1", "nncf": "3.4.0"})
    tags |= {f"dvc.md5.{output}": "d41d8cd98f00b204e9800998ecf8427e.dir" for output in DVC_OUTPUTS}
    return tags


@dataclass(frozen=True)
class Loop:
    """What the UIs should show: the registry (old-style version and champion) and the published cycle run."""

    params: Params
    mlflow: str
    prefect: str  # the UI's root (the API is at /api)
    old: str
    champion: str
    run_id: str
    experiment_id: str
    flow_run: dict[str, str]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    root = tmp_path_factory.mktemp("browser")
    (root / "mlflow").mkdir()
    with prefect_server(root) as prefect_ready, mlflow_server(root / "mlflow") as url:
        params = Params.model_validate(tiny_params_dict(root / "project", registry={"tracking_uri": url}))
        trained(params)
        write_export_report(params)
        # the version a registration made before: today's tags plus the per-target ones it carried then
        old = registry.run(params)
        mlflow_adapter.set_version_tags(params, old.version, old_tags())
        # the cycle's candidate: registered with the lineage the cycle adds, promoted, its report logged
        trained(params)  # a new training run: a new version
        gx = root / "gx-validation.json"
        gx.write_text("{}")
        lineage, _ = cycle.candidate_lineage(params, cycle=CYCLE, champion=None, gx_report=gx, gate_decision="promote")
        candidate = registry.run(params, extra_lineage=lineage)
        promote.promote(params, version=candidate.version, why="browser test: gate passed")
        # what a loop champion gets after registration and that this test does not run: the DVC pin and push
        # (tasks.registry.pin) and the monitoring baseline (tasks.monitor): the row is measured with all of them
        mlflow_adapter.set_version_tags(params, candidate.version, later_tags(candidate.version))
        written = cycle.run(params, cycle=CYCLE, outcome="promote")
        api = prefect_ready()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": api, "PREFECT_HOME": str(root / "client-home")}
        published = subprocess.run(
            [sys.executable, "-m", "tests.browser.publish_cycle", written.folder],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert published.returncode == 0, published.stderr[-3000:]
        client = MlflowClient(url)
        yield Loop(
            params=params,
            mlflow=url,
            prefect=api.removesuffix("/api"),
            old=old.version,
            champion=candidate.version,
            run_id=candidate.run_id,
            experiment_id=client.get_run(candidate.run_id).info.experiment_id,
            flow_run=json.loads(published.stdout.strip().splitlines()[-1]),
        )


# --------------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        unavailable(f"{CHROMIUM} missing: install Debian's chromium package (apt-get install chromium)")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page at the viewport size; its screenshot is kept as the test's artifact, pass or fail."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page
    SHOTS.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):  # a page that crashed has no screenshot; the test says why it failed
        page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def version_row(page: Any, version: str) -> Any:
    """The row of ``version`` in the registered model's version table."""
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
    row.wait_for()
    return row


def open_versions(page: Any, loop: Loop) -> None:
    page.goto(f"{loop.mlflow}/#/models/{loop.params.registry.model_name}")
    page.get_by_role("link", name=f"Version {loop.champion}", exact=True).wait_for()


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    ("which", "fits"),
    [
        pytest.param("champion", True, id="champion-fits"),
        pytest.param("old", False, id="old-tag-set-does-not-fit"),
    ],
)
def test_a_version_row_fits_the_viewport_only_with_the_reviewers_tags(loop: Loop, page: Any, which: str, fits: bool):
    """The champion's row in the version table fits the viewport; the old tag set's row does not (the check can
    fail). Each tag is one line of the Tags cell, so the height counts tags."""
    open_versions(page, loop)
    row = version_row(page, loop.champion if which == "champion" else loop.old)
    box = row.bounding_box()
    tags = (
        MlflowClient(loop.mlflow)
        .get_model_version(loop.params.registry.model_name, loop.champion if which == "champion" else loop.old)
        .tags
    )
    row.screenshot(path=str(SHOTS / f"row-{which}.png"))
    print(f"{which}: {len(tags)} tags, row {box['height']:.0f} px, viewport {VIEWPORT['height']} px")
    assert (box["height"] <= VIEWPORT["height"]) is fits, f"{which}: {len(tags)} tags, row {box['height']:.0f} px"
    if which == "champion":
        assert row.locator('[role="status"][title="champion"]').is_visible(), "the alias is not in the champion's row"
        for key in ("cycle", "gate_decision", "deploy.target", "license.verdict", "dataset_md5", "git_commit"):
            assert row.locator(f'[role="status"][title="{key}"]').is_visible(), f"tag {key} not in the champion's row"
        assert not [k for k in tags if k.startswith("export.")], "per-target figures are run metrics now"


def test_the_champion_version_page_shows_its_alias_and_lineage(loop: Loop, page: Any):
    page.goto(f"{loop.mlflow}/#/models/{loop.params.registry.model_name}/versions/{loop.champion}")
    page.get_by_role("heading", name=f"Version {loop.champion}").wait_for()
    page.locator('[role="status"][title="champion"]').wait_for()  # the alias: "@ champion"
    tags = MlflowClient(loop.mlflow).get_model_version(loop.params.registry.model_name, loop.champion).tags
    for key in ("cycle", "parent_version", "dataset_md5", "git_commit", "params_hash", "deploy.target"):
        cell = page.get_by_role("cell", name=key, exact=True)
        cell.wait_for()
        row = page.get_by_role("row").filter(has=cell)
        assert tags[key] in row.inner_text(), f"tag {key}: {tags[key]!r} not shown"


def test_the_latest_versions_cycle_report_is_in_its_run(loop: Loop, page: Any):
    latest = max(
        MlflowClient(loop.mlflow).search_model_versions(f"name = '{loop.params.registry.model_name}'"),
        key=lambda mv: int(mv.version),
    )
    assert latest.version == loop.champion
    page.goto(f"{loop.mlflow}/#/models/{loop.params.registry.model_name}/versions/{latest.version}")
    page.get_by_role("link", name="train-test").click()  # the version's source run, as a person gets there
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text("cycles", exact=True).click()
    page.get_by_text(CYCLE, exact=True).click()
    page.get_by_text("report.md", exact=True).click()
    page.get_by_role("heading", name=f"Cycle {CYCLE}: promote").wait_for()
    assert page.get_by_text(f"candidate v{loop.champion}").first.is_visible()


def test_the_prefect_ui_shows_the_last_cycle_run_and_its_report(loop: Loop, page: Any):
    key = "cycle-" + CYCLE
    page.goto(f"{loop.prefect}/runs")
    newest = page.locator("a[href^='/runs/flow-run/']").first  # the runs list shows the newest first
    newest.wait_for()
    assert newest.inner_text().strip() == loop.flow_run["name"]
    newest.click()
    page.get_by_text("continuous_learning", exact=True).first.wait_for()
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text(key, exact=True).first.click()
    page.get_by_role("heading", name=f"Cycle {CYCLE}: promote").wait_for()
    assert page.get_by_text(f"cycle {CYCLE}: promote", exact=True).first.is_visible()  # the description
