"""The Label Studio adapter's project resolution and paging, against a scripted in-memory server.

The real-server tests (tests/integration/test_labelstudio*.py) show the race between processes; these pin the
rules one by one: lists are never cut short, a create is never blindly repeated, the record is read and written
as documented, readers never create.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from label_studio_sdk.core.api_error import ApiError

from tasks.adapters import labelstudio
from tasks.config import LabelParams
from tasks.contracts.label_tasks import LabelError

URL = "http://127.0.0.1:8080"
TITLE = "visionloop"


@dataclass
class Project:
    id: int
    title: str
    label_config: str = ""


@dataclass
class Page:
    items: list[Any]
    response: Any


@dataclass
class Count:
    count: int


@dataclass
class FakeProjects:
    """``client.projects`` of a server whose behaviour each test scripts."""

    projects: list[Project] = field(default_factory=list)
    create_errors: list[Exception] = field(default_factory=list)  # raised by the next creates, in order
    create_lands_anyway: bool = False  # an erroring create still stores the project (a 500 after the commit)
    created: int = 0

    def list(self, *, title: str | None = None, page: int = 1, page_size: int = 30) -> Page:
        found = sorted((p for p in self.projects if title is None or title in p.title), key=lambda p: -p.id)
        chunk = found[(page - 1) * page_size : page * page_size]
        if page > 1 and not chunk:
            raise ApiError(status_code=404, headers={}, body={"detail": "Invalid page."})
        return Page(chunk, Count(len(found)))

    def create(self, *, title: str, label_config: str, **_: Any) -> Project:
        self.created += 1
        project = Project(max((p.id for p in self.projects), default=0) + 1, title, label_config)
        if self.create_errors:
            if self.create_lands_anyway:
                self.projects.append(project)
            raise self.create_errors.pop(0)
        self.projects.append(project)
        return project

    def get(self, *, id: int) -> Project:
        for project in self.projects:
            if project.id == id:
                return project
        raise ApiError(status_code=404, headers={}, body={"detail": "Not found."})

    def update(self, *, id: int, label_config: str) -> None:
        self.get(id=id).label_config = label_config


@dataclass
class FakeClient:
    projects: FakeProjects


def backend(tmp_path: Path, projects: FakeProjects, **kwargs: Any) -> labelstudio.LabelStudioBackend:
    settings = LabelParams(url=URL, project_title=TITLE, retries=2, retry_delay_s=0.0)
    return labelstudio.LabelStudioBackend(
        settings, ["car", "person"], record=tmp_path / "projects.json", client=FakeClient(projects), **kwargs
    )


def pages(*snapshots: list[int]):
    """``fetch_page`` over a list that is ``snapshots[k]`` on the k-th listing (the last one stays), 2 per page."""
    state = {"listing": -1}

    def fetch(page: int) -> tuple[list[int], int]:
        if page == 1:
            state["listing"] += 1
        items = snapshots[min(state["listing"], len(snapshots) - 1)]
        chunk = items[(page - 1) * 2 : page * 2]
        if page > 1 and not chunk:
            return [], -1  # the server's 404 past the end
        return chunk, len(items)

    return fetch


@pytest.mark.parametrize(
    ("snapshots", "expected"),
    [
        pytest.param([[]], [], id="empty"),
        pytest.param([[1]], [1], id="one-item"),
        pytest.param([[1, 2]], [1, 2], id="one-full-page"),
        pytest.param([[1, 2, 3, 4, 5]], [1, 2, 3, 4, 5], id="three-pages"),
    ],
)
def test_list_all_reads_every_page(snapshots, expected):
    assert sorted(labelstudio.list_all(pages(*snapshots), key=int, what="x")) == expected


def test_list_all_never_returns_a_list_cut_short_by_a_404():
    """Page 1 says 5 items, page 2 answers 404 (the list shrank): not 2 items but a fresh listing."""
    calls = []

    def fetch(page: int) -> tuple[list[int], int]:
        calls.append(page)
        if len(calls) == 2:  # the first listing's page 2: gone
            return [], -1
        return ([1, 2, 3][(page - 1) * 2 : page * 2], 3) if len(calls) > 2 else ([1, 2], 5)

    assert sorted(labelstudio.list_all(fetch, key=int, what="x")) == [1, 2, 3]
    assert calls == [1, 2, 1, 2]


def test_list_all_fails_when_the_list_keeps_changing():
    growing = iter(range(1, 1000))

    def fetch(page: int) -> tuple[list[int], int]:
        return [next(growing)], 10 + next(growing)  # the total never matches what was gathered

    with pytest.raises(labelstudio.LabelStudioError, match="kept changing while it was paged"):
        labelstudio.list_all(fetch, key=int, what="the projects")


def test_project_record_round_trip_keeps_other_servers_and_titles(tmp_path):
    path = tmp_path / "projects.json"
    assert labelstudio.read_project_record(path, url=URL, title=TITLE) is None
    labelstudio.write_project_record(path, url=URL, title=TITLE, project_id=2, how="created")
    labelstudio.write_project_record(path, url="http://other", title=TITLE, project_id=9, how="created")
    labelstudio.write_project_record(path, url=URL, title="other", project_id=4, how="created")
    labelstudio.write_project_record(path, url=URL, title=TITLE, project_id=3, how="the oldest")
    assert labelstudio.read_project_record(path, url=URL, title=TITLE) == 3
    assert labelstudio.read_project_record(path, url="http://other", title=TITLE) == 9
    assert len(json.loads(path.read_text())["projects"]) == 3


@pytest.mark.parametrize("text", ["", "[]", '{"projects": [{"url": "x"}]}', "{not json"], ids=str)
def test_unreadable_project_record_is_an_error_naming_the_file(tmp_path, text):
    path = tmp_path / "projects.json"
    path.write_text(text)
    with pytest.raises(LabelError, match=r"projects\.json: unreadable project record"):
        labelstudio.read_project_record(path, url=URL, title=TITLE)


def test_creator_creates_once_and_records_at_once(tmp_path):
    server = FakeProjects()
    made = backend(tmp_path, server)
    assert (made.project_id, server.created) == (1, 1)
    assert labelstudio.read_project_record(tmp_path / "projects.json", url=URL, title=TITLE) == 1
    again = backend(tmp_path, server)  # a later run: the recorded project, nothing created
    assert (again.project_id, server.created) == (1, 1)


def test_a_create_that_errors_after_it_landed_is_adopted_not_repeated(tmp_path):
    """Label Studio on SQLite answers 500 ("database is locked") after committing the project: no second create."""
    error = ApiError(status_code=500, headers={}, body={"detail": "database is locked"})
    server = FakeProjects(create_errors=[error], create_lands_anyway=True)
    assert backend(tmp_path, server).project_id == 1
    assert server.created == 1 and len(server.projects) == 1


def test_a_create_that_never_reached_the_server_is_retried(tmp_path):
    server = FakeProjects(create_errors=[httpx.ConnectError("refused")])
    assert backend(tmp_path, server).project_id == 1
    assert server.created == 2 and len(server.projects) == 1


def test_a_refused_create_is_a_clear_error(tmp_path):
    error = ApiError(status_code=400, headers={}, body={"detail": "title: at least 3 characters"})
    with pytest.raises(labelstudio.LabelStudioError, match=r"creating project 'visionloop' failed with HTTP 400"):
        backend(tmp_path, FakeProjects(create_errors=[error]))


@pytest.mark.parametrize(
    ("existing", "recorded", "ledger", "expected", "why"),
    [
        pytest.param([1, 2, 3], None, [], 1, "the oldest", id="duplicates-oldest"),
        pytest.param([1, 2, 3], None, [2], 2, "the project the label ledger's tasks are in", id="ledger-names-it"),
        pytest.param([1, 2, 3], 3, [2], 3, "recorded in", id="record-wins"),
        pytest.param([1, 2], 7, [], 1, "the oldest", id="recorded-one-gone"),
        pytest.param([1, 2], None, [9], 1, "the oldest", id="ledger-names-a-gone-one"),
    ],
)
def test_duplicates_use_the_recorded_then_the_ledgers_then_the_oldest(
    tmp_path, caplog, existing, recorded, ledger, expected, why
):
    server = FakeProjects(projects=[Project(i, TITLE) for i in existing] + [Project(50, "visionloop-other")])
    if recorded is not None:
        labelstudio.write_project_record(tmp_path / "projects.json", url=URL, title=TITLE, project_id=recorded, how="x")
    caplog.set_level("WARNING", logger="tasks.adapters.labelstudio")
    made = backend(tmp_path, server, ledger_project_ids=ledger)
    assert (made.project_id, server.created) == (expected, 0)
    warning = next(r.getMessage() for r in caplog.records if "projects titled" in r.getMessage())
    assert f"using id {expected} ({why}" in warning
    assert labelstudio.read_project_record(tmp_path / "projects.json", url=URL, title=TITLE) == expected


def test_readers_never_create(tmp_path):
    server = FakeProjects()
    with pytest.raises(labelstudio.LabelProjectNotReady, match="the label stage creates and records it"):
        backend(tmp_path, server, create=False)
    assert server.created == 0
    backend(tmp_path, server)  # the label stage
    assert backend(tmp_path, server, create=False).project_id == 1
    server.projects.clear()  # a fresh server data dir behind an old record
    with pytest.raises(labelstudio.LabelProjectNotReady, match=r"id 1\) is gone"):
        backend(tmp_path, server, create=False)
    assert server.created == 1
