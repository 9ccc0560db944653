"""The MLflow and Prefect UIs as a person sees them: the page checks of the browser tests, for any running pair.

``python -m tests.browser.pages --mlflow-url URL --prefect-url URL [--model NAME] [--out DIR] [--prefix P]`` checks
an MLflow server and a Prefect server that already run, e.g. the stack after ``make demo STACK=server`` with
``python -m deploy.local.stack exec -- .venv/bin/python -m tests.browser.pages`` (the URLs default to
``$MLFLOW_TRACKING_URI`` and ``$PREFECT_API_URL``, the model to params.yaml's ``registry.model_name``): on the
registered model's page the champion alias in the champion's row, with the reviewer's tags, and the row fitting a
1366×768 viewport; on the latest version's page its lineage tags; in the latest version's run the cycle report
(``cycles/<cycle>/report.md``, the cycle named by the version's ``cycle`` tag); in the Prefect UI the newest run of
the ``continuous_learning`` flow and its markdown artifact ``cycle-<cycle>``. What to look for comes from the servers'
APIs (the stock MLflow client, Prefect's REST API); what is checked is what Chromium renders. It prints what it found,
keeps one screenshot per page in ``--out`` (default ``reports/test-artifacts/browser``) and exits 1 naming what is
missing.

Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright; nothing is downloaded
(``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``, never ``playwright install``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 768}
WAIT_MS = 60_000  # a React page on a busy 2-core host; every wait is explicit, none is a sleep
CHAMPION = "champion"
CYCLE_FLOW = "continuous_learning"  # flows/continuous_learning.py: the flow whose runs publish the cycle report
# the tags a reviewer decides on, each one line in the champion's row of the version table
ROW_TAGS = ("cycle", "gate_decision", "deploy.target", "license.verdict", "dataset_md5", "git_commit")
# the lineage a cycle and the registry give a version, read on its page
LINEAGE_TAGS = ("cycle", "parent_version", "dataset_md5", "git_commit", "params_hash", "deploy.target")


class UICheckFailed(AssertionError):
    """A page does not show what the servers' APIs say it should (the message names what and where)."""


# --------------------------------------------------------------------------------------------------- browser


@contextlib.contextmanager
def chromium(executable: Path = CHROMIUM) -> Iterator[Any]:
    """Headless Debian Chromium under Playwright. Raises FileNotFoundError (with the fix) when it is missing."""
    if not executable.is_file():
        raise FileNotFoundError(f"{executable} missing: install Debian's chromium package (apt-get install chromium)")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(browser: Any, shot: Path) -> Iterator[Any]:
    """A fresh page at the viewport size; its full-page screenshot goes to ``shot``, pass or fail."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        shot.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):  # a page that crashed has no screenshot; the check says what failed
            page.screenshot(path=str(shot), full_page=True)
        context.close()


# ---------------------------------------------------------------------------------------------- MLflow pages


def open_versions(page: Any, mlflow: str, model: str, version: str) -> None:
    """The registered model's page, once the row of ``version`` is drawn."""
    page.goto(f"{mlflow}/#/models/{model}")
    page.get_by_role("link", name=f"Version {version}", exact=True).wait_for()


def version_row(page: Any, version: str) -> Any:
    """The row of ``version`` in the registered model's version table."""
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
    row.wait_for()
    return row


def row_height(page: Any, mlflow: str, model: str, version: str, shot: Path | None = None) -> float:
    """Height in px of ``version``'s row in the version table (each tag is one line of its Tags cell)."""
    open_versions(page, mlflow, model, version)
    row = version_row(page, version)
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        row.screenshot(path=str(shot))
    return float(row.bounding_box()["height"])


def check_champion_row(
    page: Any, mlflow: str, model: str, version: str, keys: Sequence[str] = ROW_TAGS, shot: Path | None = None
) -> str:
    """The champion alias and the reviewer's tags ``keys`` are in ``version``'s row, and the row fits the viewport."""
    height = row_height(page, mlflow, model, version, shot)
    row = version_row(page, version)
    where = f"{mlflow}/#/models/{model}, row of version {version}"
    if not row.locator(f'[role="status"][title="{CHAMPION}"]').is_visible():
        raise UICheckFailed(f"{where}: no '@ {CHAMPION}' alias")
    hidden = [key for key in keys if not row.locator(f'[role="status"][title="{key}"]').is_visible()]
    if hidden:
        raise UICheckFailed(f"{where}: tags {hidden} not shown")
    if height > VIEWPORT["height"]:
        raise UICheckFailed(f"{where}: {height:.0f} px tall, taller than the {VIEWPORT['height']} px viewport")
    return f"version {version}: @{CHAMPION}, tags {list(keys)}, row {height:.0f} px of {VIEWPORT['height']}"


def check_version_page(page: Any, mlflow: str, model: str, version: str, tags: Mapping[str, str]) -> str:
    """``version``'s page shows each tag of ``tags`` with its value (the alias too when ``version`` is champion)."""
    url = f"{mlflow}/#/models/{model}/versions/{version}"
    page.goto(url)
    page.get_by_role("heading", name=f"Version {version}").wait_for()
    wrong = []
    for key, value in tags.items():
        cell = page.get_by_role("cell", name=key, exact=True)
        cell.wait_for()
        if value not in page.get_by_role("row").filter(has=cell).inner_text():
            wrong.append(f"{key}={value!r}")
    if wrong:
        raise UICheckFailed(f"{url}: tags not shown with their values: {wrong}")
    return f"version {version}: lineage {dict(tags)}"


def check_cycle_report(page: Any, mlflow: str, model: str, version: str, run_name: str, cycle: str) -> str:
    """From ``version``'s page, its source run ``run_name`` → Artifacts → ``cycles/<cycle>/report.md`` renders the
    report (heading ``Cycle <cycle>: <outcome>``, the candidate line)."""
    page.goto(f"{mlflow}/#/models/{model}/versions/{version}")
    page.get_by_role("link", name=run_name, exact=True).click()  # the version's source run, as a person gets there
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text("cycles", exact=True).click()
    page.get_by_text(cycle, exact=True).click()
    page.get_by_text("report.md", exact=True).click()
    heading = page.get_by_role("heading", name=re.compile(rf"^Cycle {re.escape(cycle)}: "))
    heading.wait_for()
    if not page.get_by_text(f"candidate v{version}").first.is_visible():
        raise UICheckFailed(f"run {run_name} cycles/{cycle}/report.md: no 'candidate v{version}' line")
    return f"run {run_name}: cycles/{cycle}/report.md '{heading.inner_text().strip()}'"


# --------------------------------------------------------------------------------------------- Prefect pages


def check_cycle_run(page: Any, prefect: str, flow_run_name: str, key: str, description: str) -> int:
    """Flows → ``continuous_learning`` (its runs newest first) → run ``flow_run_name`` → Artifacts → ``key`` renders
    the cycle report and its ``description``. Returns the run's place in the flow's list (0: the newest)."""
    page.goto(f"{prefect}/flows")
    page.get_by_role("link", name=CYCLE_FLOW, exact=True).click()
    runs = page.locator("a[href^='/runs/flow-run/']")
    runs.first.wait_for()
    names = [name.strip() for name in runs.all_inner_texts()]
    if flow_run_name not in names:
        raise UICheckFailed(f"{prefect}: flow {CYCLE_FLOW} lists runs {names}, not {flow_run_name}")
    runs.nth(names.index(flow_run_name)).click()
    page.get_by_text(CYCLE_FLOW, exact=True).first.wait_for()
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text(key, exact=True).first.click()
    cycle, _, outcome = description.removeprefix("cycle ").partition(": ")
    page.get_by_role("heading", name=f"Cycle {cycle}: {outcome}").wait_for()
    if not page.get_by_text(description, exact=True).first.is_visible():
        raise UICheckFailed(f"{prefect} flow run {flow_run_name}, artifact {key}: description {description!r} missing")
    return names.index(flow_run_name)


# ---------------------------------------------------------------------------------- what the APIs say is there


@dataclass(frozen=True)
class Registry:
    """What the MLflow API says about the registered model."""

    model: str
    champion: str
    champion_tags: dict[str, str]
    latest: str
    latest_tags: dict[str, str]
    latest_run_name: str


def _answers(url: str) -> None:
    """Fail at once, naming ``url``, when the server does not answer (clients would retry for minutes)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
    except OSError as error:
        raise UICheckFailed(f"{url} does not answer ({error}): is the server up?") from error


def read_registry(mlflow: str, model: str) -> Registry:
    """The champion and the latest version of ``model`` on the MLflow server at ``mlflow``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _answers(f"{mlflow}/health")
    client = MlflowClient(tracking_uri=mlflow, registry_uri=mlflow)
    versions = client.search_model_versions(f"name = '{model}'")
    if not versions:
        raise UICheckFailed(f"{mlflow}: registered model {model!r} has no versions (run the demo first)")
    latest = max(versions, key=lambda mv: int(mv.version))
    try:
        champion = client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException as error:
        raise UICheckFailed(f"{mlflow}: {model!r} has no @{CHAMPION} alias ({error.message})") from error
    run_name = client.get_run(latest.run_id).info.run_name if latest.run_id else ""
    return Registry(
        model=model,
        champion=str(champion.version),
        champion_tags=dict(champion.tags),
        latest=str(latest.version),
        latest_tags=dict(latest.tags),
        latest_run_name=run_name or "",
    )


@dataclass(frozen=True)
class CycleRun:
    """The newest started run of the cycle flow and its cycle report artifact, as Prefect's API gives them."""

    id: str
    name: str
    key: str
    description: str


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def read_last_cycle_run(prefect: str) -> CycleRun:
    """The newest started ``continuous_learning`` run on the Prefect server whose UI is at ``prefect`` (API at
    ``/api``) and its markdown artifact ``cycle-<cycle>``."""
    api = f"{prefect}/api"
    _answers(f"{api}/health")
    runs = _post(
        f"{api}/flow_runs/filter",
        {
            "flows": {"name": {"any_": [CYCLE_FLOW]}},
            "flow_runs": {"start_time": {"is_null_": False}},
            "sort": "START_TIME_DESC",
            "limit": 1,
        },
    )
    if not runs:
        raise UICheckFailed(f"{api}: no run of flow {CYCLE_FLOW} (run the demo first)")
    run = runs[0]
    artifacts = _post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    reports = [a for a in artifacts if a["type"] == "markdown" and (a.get("key") or "").startswith("cycle-")]
    if not reports:
        raise UICheckFailed(
            f"{api}: flow run {run['name']} ({run['id']}) has no markdown artifact cycle-<cycle>; it has "
            f"{[a.get('key') for a in artifacts]}"
        )
    return CycleRun(id=run["id"], name=run["name"], key=reports[0]["key"], description=reports[0]["description"])


# ------------------------------------------------------------------------------------------------ the check


@dataclass(frozen=True)
class Outcome:
    """Each check's finding (``found``) or why it failed (``missing``), by check name; screenshots in ``shots``."""

    found: dict[str, str]
    missing: dict[str, str]
    shots: list[Path]


def check_stack(mlflow: str, prefect: str, model: str, out: Path, prefix: str = "") -> Outcome:
    """Every page check against a running MLflow (``mlflow``: its URL) and Prefect (``prefect``: the UI's URL).

    A check that fails (or times out waiting for an element) is recorded under ``missing`` and the others still run;
    screenshots are ``out/<prefix><check>.png``.
    """
    mlflow, prefect = mlflow.rstrip("/"), prefect.rstrip("/").removesuffix("/api")
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    shots: list[Path] = []
    registry: Registry | None = None
    cycle_run: CycleRun | None = None
    try:
        registry = read_registry(mlflow, model)
    except UICheckFailed as error:
        missing["mlflow-api"] = str(error)
    try:
        cycle_run = read_last_cycle_run(prefect)
    except UICheckFailed as error:
        missing["prefect-api"] = str(error)

    checks: dict[str, Callable[[Any], str]] = {}
    if registry is not None:
        reg = registry
        have = [key for key in ROW_TAGS if key in reg.champion_tags]  # a champion no cycle made has no cycle tags
        checks["mlflow-champion-row"] = lambda page: check_champion_row(
            page, mlflow, reg.model, reg.champion, have, shot=out / f"{prefix}mlflow-champion-row-only.png"
        )
        absent = [key for key in LINEAGE_TAGS if key not in reg.latest_tags]
        if absent:
            missing["mlflow-lineage"] = f"version {reg.latest}: no tags {absent} (MLflow API)"
        else:
            lineage = {key: reg.latest_tags[key] for key in LINEAGE_TAGS}
            checks["mlflow-latest-version"] = lambda page: check_version_page(
                page, mlflow, reg.model, reg.latest, lineage
            )
            checks["mlflow-cycle-report"] = lambda page: check_cycle_report(
                page, mlflow, reg.model, reg.latest, reg.latest_run_name, lineage["cycle"]
            )
    if cycle_run is not None:
        run = cycle_run
        checks["prefect-cycle-run"] = lambda page: (
            f"flow run {run.name} (newest first: #{check_cycle_run(page, prefect, run.name, run.key, run.description)}"
            f"), artifact {run.key} '{run.description}'"
        )

    if checks:
        with chromium() as browser:
            for name, check in checks.items():
                shot = out / f"{prefix}{name}.png"
                shots.append(shot)
                with open_page(browser, shot) as page:
                    try:
                        found[name] = check(page)
                    except Exception as error:  # a Playwright timeout is how a missing element shows
                        missing[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return Outcome(found=found, missing=missing, shots=shots)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.browser.pages", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--mlflow-url",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="the MLflow server (default: $MLFLOW_TRACKING_URI, as deploy.local.stack exec sets it)",
    )
    parser.add_argument(
        "--prefect-url",
        default=os.environ.get("PREFECT_API_URL"),
        help="the Prefect UI or its API …/api (default: $PREFECT_API_URL)",
    )
    parser.add_argument("--model", default=None, help="registered model (default: params.yaml registry.model_name)")
    parser.add_argument("--out", type=Path, default=Path("reports/test-artifacts/browser"), help="screenshots")
    parser.add_argument("--prefix", default="ui-", help="screenshot name prefix")
    args = parser.parse_args(argv)
    for flag, value in (("--mlflow-url", args.mlflow_url), ("--prefect-url", args.prefect_url)):
        if not value or not value.startswith("http"):
            parser.error(f"{flag}: an http(s) URL of a running server is needed, not {value!r}")
    model = args.model
    if model is None:
        from tasks.config import load_params

        model = load_params().registry.model_name
    try:
        outcome = check_stack(args.mlflow_url, args.prefect_url, model, args.out, args.prefix)
    except FileNotFoundError as error:
        print(f"ui check: {error}", file=sys.stderr)
        return 1
    for name, what in outcome.found.items():
        print(f"found   {name}: {what}")
    for name, why in outcome.missing.items():
        print(f"MISSING {name}: {why}")
    print(f"screenshots: {', '.join(str(shot) for shot in outcome.shots)}")
    return 1 if outcome.missing else 0


if __name__ == "__main__":
    sys.exit(main())
