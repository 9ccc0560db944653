"""The command of tests/browser/pages.py fails fast, naming what is missing, without a browser or a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import pages
from tests.integration.conftest import free_port


@pytest.mark.parametrize(
    "prefect_suffix", [pytest.param("", id="prefect-ui-url"), pytest.param("/api", id="prefect-api-url")]
)
def test_servers_that_do_not_answer_are_named_and_the_command_exits_1(
    prefect_suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    mlflow = f"http://127.0.0.1:{free_port()}"
    prefect = f"http://127.0.0.1:{free_port()}"
    argv = ["--mlflow-url", mlflow, "--prefect-url", prefect + prefect_suffix, "--model", "m", "--out", str(tmp_path)]
    assert pages.main(argv) == 1
    out = capsys.readouterr().out
    assert f"MISSING mlflow-api: {mlflow}/health does not answer" in out
    assert f"MISSING prefect-api: {prefect}/api/health does not answer" in out
    assert list(tmp_path.iterdir()) == []  # nothing to look for: no page opened, no screenshot


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--prefect-url", "http://127.0.0.1:1"], id="no-mlflow-url"),
        pytest.param(["--mlflow-url", "127.0.0.1:5000", "--prefect-url", "http://127.0.0.1:1"], id="not-a-url"),
    ],
)
def test_a_missing_or_bad_url_is_a_usage_error(argv: list[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as exit_:
        pages.main(argv)
    assert exit_.value.code == 2
