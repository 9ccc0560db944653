"""The Label Studio adapter: the only code that talks to a Label Studio server (through ``label_studio_sdk``).

Connection: ``label.url`` (``LABEL_STUDIO_URL`` wins), token only from ``LABEL_STUDIO_API_KEY``. Every request goes
through :func:`call_with_retries`: connection failures, timeouts and 5xx/429 answers are retried ``label.retries``
times with a doubling delay, then fail with the command that starts the server; a request that is not idempotent
(a create) passes a ``landed`` check that looks on the server before sending it again. Retries live here and
nowhere else: callers (the label stage, the annotator simulator) never wrap these calls in another retry loop.

:class:`LabelStudioBackend` implements :class:`tasks.contracts.label_tasks.LabelBackend`: the project of
``label.project_title`` (resolved once and recorded in ``<base.paths.labels>/projects.json`` under a file lock: one
project per title whatever runs at once; readers never create), Local Files storages (S3 import storages for
``s3://`` images: :mod:`tasks.adapters.labelstudio_s3`), one import call per run
(re-listed first, never imported twice) and incremental collection (a Data Manager filter on ``updated_at``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tasks.adapters.labelstudio_s3 import ensure_s3_storages
from tasks.config import LabelParams, Params, VisionloopError
from tasks.contracts import annotations as ls
from tasks.contracts.label_tasks import LabelError, TaskRef
from tasks.contracts.ledger import LedgerRow
from tasks.io import write_json_atomic

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
START_COMMAND = "make labelstudio-up"
PROJECTS_FILE = "projects.json"

# Re-fetch tasks updated this long before the watermark: a transaction that committed late is not missed, and
# re-seen annotations are recognised by (id, updated_at) and not counted again.
_WATERMARK_OVERLAP = dt.timedelta(seconds=30)
_PAGE_SIZE = 200
_T = TypeVar("_T")


class LabelStudioError(VisionloopError, RuntimeError):
    """Label Studio answered with an error the caller cannot work around (the message says what was asked)."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio cannot be reached; the message prints the command that starts it."""


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused the token from ``LABEL_STUDIO_API_KEY`` (or it is not set)."""


class LabelProjectNotReady(LabelStudioError):
    """No project is recorded for the title yet (or the recorded one is gone): only the label stage creates it."""


# --------------------------------------------------------------------------------------------------------------
# Connection and retries.


def label_studio_url(settings: LabelParams) -> str:
    """The server URL: ``LABEL_STUDIO_URL`` from the environment, else ``label.url``."""
    return (os.environ.get(URL_ENV) or settings.url).rstrip("/")


def document_root(settings: LabelParams) -> Path:
    """The folder Label Studio serves local files from (``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` wins)."""
    return Path(os.environ.get(DOCUMENT_ROOT_ENV) or settings.document_root).resolve()


def call_with_retries(
    fn: Callable[[], _T],
    *,
    what: str,
    settings: LabelParams,
    url: str,
    landed: Callable[[], _T | None] | None = None,
) -> _T:
    """Call ``fn`` (one Label Studio request), retrying connection failures, timeouts and 5xx/429 answers.

    A request that is not idempotent (a create) passes ``landed``: after a failure it looks on the server for what
    the request would have made, and returns that instead of sending the request again. Label Studio on SQLite
    answers 500 ("database is locked") to a project create it has already committed; a blind retry made a second
    project.

    Args:
        fn: the request.
        what: what is asked, for messages (``"list projects"``).
        settings: ``label`` params (``retries``, ``retry_delay_s``; the delay doubles each try).
        url: the server, for messages.
        landed: for a non-idempotent ``fn``: what it made if it reached the server after all, else None.

    Raises:
        LabelStudioUnavailable: still failing after ``settings.retries`` retries (message: how to start it).
        LabelStudioAuthError: HTTP 401/403.
        LabelStudioError: any other HTTP error (not retried: the request itself is wrong).
    """
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    last = ""
    for attempt in range(settings.retries + 1):
        try:
            return fn()
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        except ApiError as exc:
            if exc.status_code in (401, 403):
                raise LabelStudioAuthError(_auth_message(url, exc)) from None
            if exc.status_code is not None and exc.status_code < 500 and exc.status_code != 429:
                raise LabelStudioError(
                    f"Label Studio at {url}: {what} failed with HTTP {exc.status_code}: {_body(exc)}"
                ) from None
            last = f"HTTP {exc.status_code}: {_body(exc)}"
        made = landed() if landed is not None else None
        if made is not None:
            log.warning("Label Studio at %s: %s answered %s, but it was done: %s", url, what, last, made)
            return made
        if attempt < settings.retries:
            delay = settings.retry_delay_s * 2**attempt
            log.warning("Label Studio at %s: %s failed (%s); retry %d in %.1f s", url, what, last, attempt + 1, delay)
            time.sleep(delay)
    raise LabelStudioUnavailable(
        f"Label Studio is not reachable at {url} ({what}: {last}; {settings.retries + 1} tries). "
        f"Start it with `{START_COMMAND}` (or point {URL_ENV} / label.url at a running server)."
    )


def connect(settings: LabelParams) -> LabelStudio:
    """Return an SDK client for a reachable server that accepts our token (the precondition check).

    Raises:
        LabelStudioAuthError: ``LABEL_STUDIO_API_KEY`` unset, or refused by the server.
        LabelStudioUnavailable: the server does not answer (message prints ``make labelstudio-up``).
    """
    from label_studio_sdk import LabelStudio

    url = label_studio_url(settings)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise LabelStudioAuthError(
            f"{TOKEN_ENV} is not set: the label stage reads the Label Studio token only from the environment. "
            f"For the local server started by `{START_COMMAND}` export {TOKEN_ENV} with the token it was seeded with "
            "(the Makefile's local dev default is visionloop-local-dev-token); for another server copy the token "
            "from Account & Settings."
        )
    client = LabelStudio(base_url=url, api_key=token, timeout=settings.timeout_s, max_retries=0)
    call_with_retries(lambda: client.projects.list(page_size=1), what="list projects", settings=settings, url=url)
    return client


def _auth_message(url: str, exc: Exception) -> str:
    return (
        f"Label Studio at {url} refused the token in {TOKEN_ENV} ({_body(exc)}). Export the token of a user of "
        f"that server (legacy API tokens enabled). `{START_COMMAND}` seeds {TOKEN_ENV} only on the first start of a "
        "fresh data dir: use that token, or stop the server and delete its data dir (.cache/labelstudio)."
    )


def _body(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:500]
    return str(body if body is not None else exc)[:500]


def _aware(value: Any) -> dt.datetime | None:
    return None if value is None else ls.parse_time(value)


# --------------------------------------------------------------------------------------------------------------
# The project record and paging.


def projects_path(params: Params) -> Path:
    """``<base.paths.labels>/projects.json``: the Label Studio project id per server and title, recorded once."""
    return params.base.paths.labels / PROJECTS_FILE


def read_project_record(path: Path, *, url: str, title: str) -> int | None:
    """The project id recorded for ``title`` on the server at ``url``; None when none is recorded.

    Raises:
        LabelError: the record file is not what :func:`write_project_record` writes (names the file).
    """
    if not path.is_file():
        return None
    try:
        entries = [(e["url"], e["title"], int(e["project_id"])) for e in json.loads(path.read_text())["projects"]]
        ids = [i for u, t, i in entries if (u, t) == (url, title)]
    except (ValueError, KeyError, TypeError) as exc:
        raise LabelError(
            f"{path}: unreadable project record ({type(exc).__name__}: {exc}); it was not written by the label "
            "stage. Move it aside and re-run the label stage: it records the project again."
        ) from None
    return ids[-1] if ids else None


def write_project_record(path: Path, *, url: str, title: str, project_id: int, how: str) -> None:
    """Record ``project_id`` for ``title`` at ``url`` (atomically; other servers' and titles' entries are kept)."""
    entries = json.loads(path.read_text())["projects"] if path.is_file() else []
    entries = [e for e in entries if not (e["url"] == url and e["title"] == title)]
    entries.append(
        {
            "url": url,
            "title": title,
            "project_id": project_id,
            "how": how,
            "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
    )
    write_json_atomic(path, {"projects": sorted(entries, key=lambda e: (e["url"], e["title"]))})


def list_all(fetch_page: Callable[[int], tuple[list[_T], int]], *, key: Callable[[_T], int], what: str) -> list[_T]:
    """Every item of a paginated Label Studio list, or an error: never a list cut short.

    The SDK's own iteration asks for page N+1 after every non-empty page and takes a 404 as the end of the list,
    so a 404 from a later page (the list shrank while it was paged, e.g. a project deleted) silently drops the rest.
    Here each page's total is compared with what was gathered; a list that changed while it was paged is listed
    again from the first page (up to 3 times).

    Args:
        fetch_page: ``page (1-based) -> (items, total count of the list)``; returns ``([], total)`` for a page the
            server answers 404 (past the end).
        key: the item's id (duplicates across pages, from a list that grew while paged, count once).
        what: what is listed, for messages.

    Raises:
        LabelStudioError: the list kept changing while it was paged.
    """
    seen = 0
    for _ in range(3):
        items: dict[int, _T] = {}
        page, totals, last_page = 1, set(), 1
        while True:
            batch, total = fetch_page(page)
            totals.add(total)
            items.update((key(item), item) for item in batch)
            if page == 1:
                last_page = -(-total // max(1, len(batch)))  # the pages the first one announces
            if not batch or len(items) >= total or page >= last_page + 1:
                break
            page += 1
        seen = len(items)
        if len(totals) == 1 and seen == totals.pop():
            return list(items.values())
        log.warning("Label Studio: %s changed while it was paged (%d items seen); listing it again", what, seen)
    raise LabelStudioError(f"Label Studio: {what} kept changing while it was paged ({seen} items seen); re-run")


def _page(pager: Any, total_field: str) -> tuple[list[Any], int]:
    return list(pager.items or []), int(getattr(pager.response, total_field))


# --------------------------------------------------------------------------------------------------------------
# The backend.


class LabelStudioBackend:
    """The Label Studio adapter: project, storages, one import call, incremental collection.

    The project of ``label.project_title`` is resolved once and its id recorded in ``record``
    (``<base.paths.labels>/projects.json``). Only a backend made with ``create=True`` (the label stage) looks for
    it on the server, adopts or creates it, and records it, all under an exclusive file lock beside the record, so
    two processes that start at the same instant make one project. Every other user (``create=False``: the
    annotator simulator, tools) reads the recorded id and never creates one.
    """

    name = "labelstudio"

    def __init__(
        self,
        settings: LabelParams,
        classes: Sequence[str],
        *,
        record: Path,
        create: bool = True,
        ledger_project_ids: Sequence[int] = (),
        client: LabelStudio | None = None,
    ) -> None:
        """Connect (precondition check) and resolve the project titled ``settings.project_title``.

        Args:
            settings: ``label`` params.
            classes: ``base.classes`` (the labeling config).
            record: the project record file (:func:`projects_path`).
            create: True for the label stage (adopts or creates the project and records it); False for readers.
            ledger_project_ids: project ids the ledger's Label Studio rows name (most rows first): among duplicate
                projects of one title, the one the ledger names is used.
            client: an SDK client (default: :func:`connect`).

        Raises:
            LabelProjectNotReady: ``create=False`` and no project is recorded yet (or the recorded one is gone).
        """
        self.settings = settings
        self.classes = list(classes)
        self.url = label_studio_url(settings)
        self.record = Path(record)
        self.client = client if client is not None else connect(settings)
        if create:
            self.project_id: int | None = self.ensure_project(ledger_project_ids)
        else:
            self.project_id = self.recorded_project()

    def _call(self, fn: Callable[[], _T], what: str, landed: Callable[[], _T | None] | None = None) -> _T:
        return call_with_retries(fn, what=what, settings=self.settings, url=self.url, landed=landed)

    def _get_project(self, project_id: int) -> Any | None:
        """The project with this id, None when the server has none (404)."""
        from label_studio_sdk.core.api_error import ApiError

        def get() -> Any | None:
            try:
                return self.client.projects.get(id=project_id)
            except ApiError as exc:
                if exc.status_code == 404:
                    return None
                raise

        return self._call(get, f"read project {project_id}")

    def list_projects(self, title: str) -> list[Any]:
        """Every project titled exactly ``title`` (the server's ``title`` filter is a case-insensitive substring)."""
        from label_studio_sdk.core.api_error import ApiError

        def fetch(page: int) -> tuple[list[Any], int]:
            def one() -> tuple[list[Any], int]:
                try:
                    return _page(self.client.projects.list(title=title, page=page, page_size=100), "count")
                except ApiError as exc:
                    if exc.status_code == 404 and page > 1:
                        return [], -1  # past the end: the list shrank while paged
                    raise

            return self._call(one, f"list projects titled {title!r} (page {page})")

        found = list_all(fetch, key=lambda p: int(p.id), what=f"the projects titled {title!r}")
        return sorted((p for p in found if p.title == title), key=lambda p: int(p.id))

    def list_tasks(self, project_id: int, *, fields: str, query: str | None = None) -> list[Any]:
        """Every task of the project (``fields``: ``task_only`` or ``all``; ``query``: a Data Manager filter)."""
        from label_studio_sdk.core.api_error import ApiError

        def fetch(page: int) -> tuple[list[Any], int]:
            def one() -> tuple[list[Any], int]:
                try:
                    pager: Any = self.client.tasks.list(  # resolve_uri off: data as imported (s3:// stays s3://)
                        project=project_id,
                        fields=cast(Any, fields),
                        query=query,
                        page=page,
                        page_size=_PAGE_SIZE,
                        resolve_uri=False,
                    )
                    return _page(pager, "total")
                except ApiError as exc:
                    if exc.status_code == 404 and page > 1:
                        return [], -1
                    raise

            return self._call(one, f"list tasks of project {project_id} (page {page})")

        return list_all(fetch, key=lambda t: int(t.id), what=f"the tasks of project {project_id}")

    def recorded_project(self) -> int:
        """The recorded project id, checked on the server (readers: never create).

        Raises:
            LabelProjectNotReady: nothing recorded yet, or the recorded project is gone or renamed.
        """
        title = self.settings.project_title
        project_id = read_project_record(self.record, url=self.url, title=title)
        if project_id is None:
            raise LabelProjectNotReady(
                f"no Label Studio project titled {title!r} is recorded for {self.url} in {self.record} yet: "
                "the label stage creates and records it"
            )
        project = self._get_project(project_id)
        if project is None or project.title != title:
            raise LabelProjectNotReady(
                f"the project recorded in {self.record} for {title!r} (id {project_id}) is "
                f"{'gone from' if project is None else 'renamed on'} {self.url}: the next label stage run resolves it"
            )
        return project_id

    def ensure_project(self, ledger_project_ids: Sequence[int] = ()) -> int:
        """Return the id of the project titled ``label.project_title``: recorded, adopted or created; labels updated.

        Under an exclusive lock beside the record: the recorded id when the server still has it; else, among the
        server's projects of that title, the one the ledger names, else the oldest; else a new project. The id is
        recorded the moment it is known. Duplicates (left by older versions) are named in a warning with the id
        used and why.
        """
        from filelock import FileLock

        title = self.settings.project_title
        self.record.parent.mkdir(parents=True, exist_ok=True)
        lock = self.record.with_name(f".{self.record.name}.lock")
        wait = self.settings.timeout_s * (self.settings.retries + 2)
        with FileLock(str(lock), timeout=wait):
            recorded = read_project_record(self.record, url=self.url, title=title)
            found = self.list_projects(title)
            ids = [int(p.id) for p in found]
            by_id = {int(p.id): p for p in found}
            if recorded is not None and recorded not in by_id:
                log.warning(
                    "Label Studio at %s has no project %s titled %r any more (recorded in %s; a new server data "
                    "dir?): resolving it again",
                    self.url,
                    recorded,
                    title,
                    self.record,
                )
            named = [i for i in ledger_project_ids if i in by_id]
            if recorded in by_id:
                project_id, why = cast(int, recorded), f"recorded in {self.record}"
            elif named:
                project_id, why = named[0], "the project the label ledger's tasks are in"
            elif found:
                project_id, why = ids[0], "the oldest"
            else:
                project_id, why = self._create_project(title), "created"
                found, ids = [], [project_id]
            if len(ids) > 1:
                log.warning(
                    "Label Studio: %d projects titled %r (ids %s); using id %s (%s). The others are not used by "
                    "visionloop: delete them in the Label Studio UI once you have checked they hold nothing you need",
                    len(ids),
                    title,
                    ids,
                    project_id,
                    why,
                )
            if recorded != project_id:
                write_project_record(self.record, url=self.url, title=title, project_id=project_id, how=why)
                log.info("Label Studio: project %r is id %s (%s), recorded in %s", title, project_id, why, self.record)
        if project_id in by_id:
            self._update_labels(by_id[project_id])
        return project_id

    def _create_project(self, title: str) -> int:
        """Create the project; a failed request is not blindly repeated (it may have reached the server)."""
        before = {int(p.id) for p in self.list_projects(title)}

        def create() -> int:
            created = self.client.projects.create(
                title=title,
                label_config=ls.labeling_config(self.classes),
                description="visionloop: production images sampled for labeling, pre-annotated by the champion",
                show_collab_predictions=True,
            )
            return int(cast(int, created.id))

        def landed() -> int | None:
            new = sorted({int(p.id) for p in self.list_projects(title)} - before)
            return new[0] if new else None

        project_id = self._call(create, f"creating project {title!r}", landed=landed)
        log.info("Label Studio: created project %r (id %s)", title, project_id)
        return project_id

    def _update_labels(self, project: Any) -> None:
        """Make the project's labeling config list ``base.classes`` (the params changed since it was made)."""
        project_id = int(project.id)
        config_xml = project.label_config or self._call(
            lambda: self.client.projects.get(id=project_id).label_config, "read labeling config"
        )
        current = ls.config_classes(config_xml or "<View/>")
        if current != self.classes:
            log.warning(
                "Label Studio project %s: classes %s -> %s, updating its labeling config",
                project_id,
                current,
                self.classes,
            )
            config = ls.labeling_config(self.classes)
            self._call(
                lambda: self.client.projects.update(id=project_id, label_config=config), "update labeling config"
            )

    def ensure_storages(self, folders: Iterable[Path]) -> None:
        """Register a Local Files import storage for each image folder (without syncing: we import tasks)."""
        project_id = cast(int, self.project_id)

        def existing() -> dict[Path, Any]:
            found = self._call(lambda: list(self.client.import_storage.local.list(project=project_id)), "list storages")
            return {Path(str(s.path)).resolve(): s for s in found if s.path}

        for folder in sorted({f.resolve() for f in folders} - set(existing())):
            # a create is not idempotent: after a lost answer, look for the storage before sending it again
            self._call(
                lambda folder=folder: self.client.import_storage.local.create(  # type: ignore[misc]
                    project=project_id, path=str(folder), title=f"visionloop {folder.name}"[:255], use_blob_urls=True
                ),
                f"register local files storage {folder} (must lie below {DOCUMENT_ROOT_ENV} of the server)",
                landed=lambda folder=folder: existing().get(folder),  # type: ignore[misc]
            )
            log.info("Label Studio project %s: registered local files storage %s", project_id, folder)

    def existing_tasks(self) -> dict[str, TaskRef]:
        """Return ``{image_sha256: TaskRef}`` of the project's tasks (ids and data only, no annotations)."""
        project_id = cast(int, self.project_id)
        tasks = self.list_tasks(project_id, fields="task_only")
        refs: dict[str, TaskRef] = {}
        for task in tasks:
            sha = (task.data or {}).get("image_sha256")
            if sha and sha not in refs:
                refs[sha] = TaskRef(int(cast(int, task.id)), _aware(task.updated_at))
        return refs

    def submit(self, tasks: list[dict[str, Any]], *, folders: set[Path]) -> tuple[dict[str, TaskRef], int]:
        """Import ``tasks`` (with predictions) in one call, skipping images that already are tasks.

        Every try re-lists the project first and imports only what is not there yet, so a request that reached
        the server before the connection dropped never creates its tasks twice.
        """
        self.ensure_storages(folders)
        urls = [str(t["data"][ls.DATA_KEY]) for t in tasks]
        ensure_s3_storages(self.client, project_id=cast(int, self.project_id), urls=urls, call=self._call)
        project_id = cast(int, self.project_id)
        wanted = [t["data"]["image_sha256"] for t in tasks]

        def import_missing() -> int:
            existing = self.existing_tasks()
            todo = [t for t in tasks if t["data"]["image_sha256"] not in existing]
            if not todo:
                return 0
            response = self.client.projects.import_tasks(
                id=project_id, request=cast(Any, todo), return_task_ids=True, commit_to_project=True
            )
            created = len(getattr(response, "task_ids", None) or []) or int(response.task_count or 0)
            log.info(
                "Label Studio project %s: imported %d tasks in %.2f s", project_id, created, response.duration or 0
            )
            return created

        created = self._call(import_missing, f"importing {len(tasks)} task(s) into project {project_id}")
        confirmed = self.existing_tasks()
        return {sha: confirmed[sha] for sha in wanted if sha in confirmed}, created

    def annotate(self, task_id: int, *, result: list[dict[str, Any]], cancelled: bool) -> None:
        """Create one annotation of a task, as a person's *Submit* (or *Skip*: ``cancelled``) in the UI does.

        A create is not idempotent: after a failure the task's annotations are listed, and one that was not there
        before the request means it landed (a blind retry made a second annotation).
        """

        def ids() -> set[int]:
            found = self._call(lambda: list(self.client.annotations.list(id=task_id)), f"list annotations of {task_id}")
            return {int(cast(int, a.id)) for a in found}

        before = ids()
        self._call(
            lambda: self.client.annotations.create(
                id=task_id, result=result, was_cancelled=cancelled, ground_truth=False
            ),
            f"annotate task {task_id}",
            landed=lambda: min(ids() - before, default=None),
        )

    def fetch(self, rows: Sequence[LedgerRow]) -> list[dict[str, Any]]:
        """Tasks of the project updated since the last collection (all tasks on the first one), with annotations."""
        mine = [r for r in rows if r["backend"] == self.name and r["project_id"] == self.project_id]
        if not mine:
            return []
        stamps = [r["task_updated_at"] for r in mine if r["task_updated_at"] is not None]
        query = None
        if stamps and len(stamps) == len(mine):
            since = max(stamps) - _WATERMARK_OVERLAP
            stamp = since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            item = {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": stamp}
            query = json.dumps({"filters": {"conjunction": "and", "items": [item]}})
        project_id = cast(int, self.project_id)
        tasks = self.list_tasks(project_id, fields="all", query=query)
        log.info("Label Studio project %s: %d task(s) updated since the last collection", project_id, len(tasks))
        return [
            {
                "id": int(cast(int, t.id)),
                "data": dict(t.data or {}),
                "annotations": [a.model_dump() if hasattr(a, "model_dump") else dict(a) for a in t.annotations or []],
                "updated_at": _aware(t.updated_at),
            }
            for t in tasks
        ]
