"""The registry and the loop as a person sees them: the MLflow and Prefect UIs in headless Chromium.

A real ``mlflow server`` (tests/mlflow_server.py) and a real ``prefect server start`` on 127.0.0.1; the data is
made by the project's own code on tiny inputs (``tests/browser/loop_data.py``): a constant ONNX detector registered
by the registry stage with the lineage a cycle adds (:func:`tasks.cycle.candidate_lineage`), promoted by the promote
stage, its cycle report written and logged by :func:`tasks.cycle.run` and published to Prefect by the loop's own
``_publish`` (``tests/browser/publish_cycle.py``). Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright
(no browser download: ``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``, never ``playwright install``); without it the tests
skip, and fail under ``CI=true``. The page checks are ``tests/browser/pages.py`` (also a command for a running
stack; the stack's own UI test is in tests/stack/test_stack.py).

Screenshots (the test artifacts) go to ``reports/test-artifacts/browser/<test>.png`` in the checkout.

The row check: MLflow's version table draws every version tag as one line (~24 px, long values truncated), so a
version's row is as tall as its tag count. The champion's row must fit the viewport; the same table with the tag set
versions carried before (per-target export figures, INT8 lineage JSON, one ``dvc.md5.<output>`` per output) must
not, which shows the check can fail.
"""

from __future__ import annotations

import contextlib
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

from tasks.config import Params
from tasks.env import PROJECT_ROOT
from tests.browser import loop_data, pages
from tests.conftest import tiny_params_dict
from tests.integration.conftest import free_port
from tests.mlflow_server import mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHOTS = PROJECT_ROOT / "reports" / "test-artifacts" / "browser"
CYCLE = "c-browser-0001"


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
        made = loop_data.make_cycle(params, cycle_name=CYCLE, prefect_api=prefect_ready, home=root, with_old=True)
        assert made.old is not None
        yield Loop(
            params=params,
            mlflow=url,
            prefect=prefect_ready().removesuffix("/api"),
            old=made.old,
            champion=made.champion,
            run_id=made.run_id,
            experiment_id=MlflowClient(url).get_run(made.run_id).info.experiment_id,
            flow_run=made.flow_run,
        )


# --------------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        with pages.chromium() as chromium:
            yield chromium
    except FileNotFoundError as error:
        unavailable(str(error))


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page at the viewport size; its screenshot is kept as the test's artifact, pass or fail."""
    with pages.open_page(browser, SHOTS / f"{request.node.name}.png") as page:
        yield page


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
    model = loop.params.registry.model_name
    version = loop.champion if which == "champion" else loop.old
    tags = MlflowClient(loop.mlflow).get_model_version(model, version).tags
    height = pages.row_height(page, loop.mlflow, model, version, shot=SHOTS / f"row-{which}.png")
    print(f"{which}: {len(tags)} tags, row {height:.0f} px, viewport {pages.VIEWPORT['height']} px")
    assert (height <= pages.VIEWPORT["height"]) is fits, f"{which}: {len(tags)} tags, row {height:.0f} px"
    if which == "champion":
        print(pages.check_champion_row(page, loop.mlflow, model, version))  # the alias and the reviewer's tags
        assert not [k for k in tags if k.startswith("export.")], "per-target figures are run metrics now"


def test_the_champion_version_page_shows_its_alias_and_lineage(loop: Loop, page: Any):
    model = loop.params.registry.model_name
    tags = MlflowClient(loop.mlflow).get_model_version(model, loop.champion).tags
    pages.check_version_page(page, loop.mlflow, model, loop.champion, {k: tags[k] for k in pages.LINEAGE_TAGS})
    page.locator(f'[role="status"][title="{pages.CHAMPION}"]').wait_for()  # the alias: "@ champion"


def test_the_latest_versions_cycle_report_is_in_its_run(loop: Loop, page: Any):
    registry_seen = pages.read_registry(loop.mlflow, loop.params.registry.model_name)
    assert (registry_seen.latest, registry_seen.champion) == (loop.champion, loop.champion)
    assert registry_seen.latest_tags["cycle"] == CYCLE
    print(
        pages.check_cycle_report(
            page, loop.mlflow, registry_seen.model, registry_seen.latest, registry_seen.latest_run_name, CYCLE
        )
    )


def test_the_prefect_ui_shows_the_last_cycle_run_and_its_report(loop: Loop, page: Any):
    run = pages.read_last_cycle_run(loop.prefect)
    assert (run.id, run.name, run.key) == (loop.flow_run["id"], loop.flow_run["name"], "cycle-" + CYCLE)
    assert run.description == f"cycle {CYCLE}: promote"
    assert pages.check_cycle_run(page, loop.prefect, run.name, run.key, run.description) == 0  # the newest first
