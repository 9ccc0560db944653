"""Stage ``label``: sampled images → Label Studio (pre-annotated by the champion) → YOLO labels.

Contract:
    inputs: the sample manifest ``<base.paths.samples>/<cycle>/manifest.parquet`` (one row per image:
        ``image_sha256, image_id, image_uri, batch, date, strategy, score, rank, model_name, model_version``);
        the prediction log ``<base.paths.predictions>`` (rows of those images by the manifest's model version,
        used as pre-annotations); the image files themselves; finished annotations in Label Studio (backend
        ``labelstudio``) or Label Studio JSON exports in the inbox folder (backend ``files``);
    params: ``base`` (classes, paths), ``label``;
    outputs: the ledger ``<base.paths.labels>/ledger.parquet`` (one row per image ever queued; :data:`LEDGER_SCHEMA`),
        labeled images ``<base.paths.labels>/<cycle>/images/<image_id>.<ext>`` (hard link, else copy) with
        ``<base.paths.labels>/<cycle>/labels/<image_id>.txt`` (YOLO, classes in ``base.classes`` order; an empty
        file = annotated, no objects), ``<cycle>`` being the cycle that sampled the image;
        ``<base.paths.reports>/label.json``; backend ``files``: task JSON in the outbox folder;
    side effects: backend ``labelstudio`` creates (once) the project titled ``label.project_title`` with a
        labeling config generated from ``base.classes`` and records its id in ``<base.paths.labels>/projects.json``
        (per server URL and title, under a file lock: one project per title whatever runs at once; every later
        run and the annotator simulator read it from there), registers a Local Files import storage per image
        folder (never synced: tasks are imported by this stage) and imports tasks.

Idempotent: an image (by SHA-256) already in the ledger, or already a task of the project, is never imported
again; the ledger records only tasks the server confirmed (re-listed after the import) and is replaced
atomically. Collection is incremental: only tasks updated since the last collection are fetched (a Data
Manager filter on ``updated_at``, with a small overlap), never a full export. The latest non-cancelled
annotation of a task counts; a task whose annotations are all cancelled is ``skipped``.

The run is *waiting* (``LabelResult.waiting``) while fewer than ``label.min_labeled`` images of the cycle are
labeled and some are still queued: the flow ends "waiting for labels" and a later run of the same cycle
continues. Connection: ``label.url`` (``LABEL_STUDIO_URL`` wins), token only from ``LABEL_STUDIO_API_KEY``;
a server that is down is retried ``label.retries`` times, then fails with the command that starts it.
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.config import LabelParams, Params, load_params, stage_argparser
from tasks.contracts import annotations as ls
from tasks.contracts import prediction_log
from tasks.io import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
START_COMMAND = "make labelstudio-up"

MANIFEST_COLUMNS = (
    "image_sha256",
    "image_id",
    "image_uri",
    "batch",
    "date",
    "strategy",
    "score",
    "rank",
    "model_name",
    "model_version",
)
QUEUED, LABELED, SKIPPED = "queued", "labeled", "skipped"

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("batch", pa.string(), nullable=False),
        pa.field("cycle", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # queued | labeled | skipped
        pa.field("backend", pa.string(), nullable=False),  # labelstudio | files
        pa.field("project_id", pa.int64(), nullable=True),
        pa.field("task_id", pa.int64(), nullable=True),
        pa.field("annotation_id", pa.int64(), nullable=True),
        pa.field("annotation_updated_at", pa.timestamp("us", tz="UTC"), nullable=True),
        pa.field("task_updated_at", pa.timestamp("us", tz="UTC"), nullable=True),  # server clock: collect watermark
        pa.field("n_boxes", pa.int32(), nullable=True),
        pa.field("phash", pa.string(), nullable=True),
        pa.field("queued_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
"""Arrow schema of ``<base.paths.labels>/ledger.parquet``; one row per image, keyed by ``image_sha256``."""

# Re-fetch tasks updated this long before the watermark: a transaction that committed late is not missed, and
# re-seen annotations are recognised by (id, updated_at) and not counted again.
_WATERMARK_OVERLAP = dt.timedelta(seconds=30)
_CYCLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")
_PAGE_SIZE = 200
PROJECTS_FILE = "projects.json"
_T = TypeVar("_T")


class LabelError(ValueError):
    """The manifest, an image, an annotation or an inbox file is unusable; the message names it."""


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error this stage cannot work around (the message says what was asked)."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio cannot be reached; the message prints the command that starts it."""


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused the token from ``LABEL_STUDIO_API_KEY`` (or it is not set)."""


@dataclass(frozen=True)
class SampleRow:
    """One row of the sample manifest (see the module contract)."""

    image_sha256: str
    image_id: str
    image_uri: str
    batch: str
    date: dt.date | None
    strategy: str
    score: float | None
    rank: int | None
    model_name: str
    model_version: str
    phash: str | None = None


@dataclass(frozen=True)
class TaskRef:
    """A task the labeling backend confirmed: its id (None in the outbox) and its server ``updated_at``."""

    task_id: int | None
    updated_at: dt.datetime | None


@dataclass(frozen=True)
class LabelResult:
    """What ``reports/label.json`` holds.

    Attributes:
        imported: tasks created by this run.
        already_imported: manifest images already queued earlier (ledger) or already tasks of the project.
        collected: annotations converted to YOLO labels by this run (new or changed since the last run).
        skipped: tasks this run found skipped/cancelled.
        pending: tasks of this cycle still waiting for an annotation.
        labeled: images of this cycle with YOLO labels (all runs).
        waiting: fewer than ``min_labeled`` of this cycle labeled while some are still pending.
        rejected: regions left out of label files, one reason each (zero-size, outside the image, ...).
        without_predictions: imported images the prediction log had no rows for (no pre-annotation).
        missing: manifest images deleted since sampling, one message each (left out; a re-run tries them again).
    """

    cycle: str
    backend: str
    project_id: int | None
    imported: int
    already_imported: int
    collected: int
    skipped: int
    pending: int
    labeled: int
    min_labeled: int
    waiting: bool
    labels_dir: str
    ledger: str
    rejected: list[str] = field(default_factory=list)
    without_predictions: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class LabelBackend(Protocol):
    """Where tasks go and annotations come from: Label Studio's API or a folder exchange (air-gapped)."""

    name: str
    project_id: int | None

    def submit(self, tasks: list[dict[str, Any]], *, folders: set[Path]) -> tuple[dict[str, TaskRef], int]:
        """Queue ``tasks``; return the confirmed ``{image_sha256: TaskRef}`` (incl. ones already there), created."""
        ...

    def fetch(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return task dicts (``id``, ``data``, ``annotations``, ``updated_at``) that may have changed for ``rows``."""
        ...


# --------------------------------------------------------------------------------------------------------------
# Connection and the Label Studio adapter.


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


class LabelProjectNotReady(LabelStudioError):
    """No project is recorded for the title yet (or the recorded one is gone): only the label stage creates it."""


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
                    pager: Any = self.client.tasks.list(
                        project=project_id, fields=cast(Any, fields), query=query, page=page, page_size=_PAGE_SIZE
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
        existing = {
            Path(str(s.path)).resolve()
            for s in self._call(
                lambda: list(self.client.import_storage.local.list(project=project_id)), "list storages"
            )
            if s.path
        }
        for folder in sorted({f.resolve() for f in folders} - existing):
            self._call(
                lambda folder=folder: self.client.import_storage.local.create(  # type: ignore[misc]
                    project=project_id, path=str(folder), title=f"visionloop {folder.name}"[:255], use_blob_urls=True
                ),
                f"register local files storage {folder} (must lie below {DOCUMENT_ROOT_ENV} of the server)",
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

        A failed import is not blindly repeated: the project is re-listed first, so a request that reached
        the server before the connection dropped never creates its tasks twice.
        """
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        self.ensure_storages(folders)
        wanted = [t["data"]["image_sha256"] for t in tasks]
        created = 0
        for attempt in range(self.settings.retries + 1):
            existing = self.existing_tasks()
            todo = [t for t in tasks if t["data"]["image_sha256"] not in existing]
            if not todo:
                break
            try:
                response = self.client.projects.import_tasks(
                    id=cast(int, self.project_id), request=cast(Any, todo), return_task_ids=True, commit_to_project=True
                )
            except (httpx.TransportError, ApiError) as exc:
                status = getattr(exc, "status_code", None)
                if status in (401, 403):
                    raise LabelStudioAuthError(_auth_message(self.url, exc)) from None
                if status is not None and status < 500:
                    raise LabelStudioError(
                        f"Label Studio at {self.url}: importing {len(todo)} tasks into project {self.project_id} "
                        f"failed with HTTP {status}: {_body(exc)}"
                    ) from None
                if attempt == self.settings.retries:
                    raise LabelStudioUnavailable(
                        f"Label Studio at {self.url}: importing {len(todo)} tasks failed ({_body(exc)}); "
                        f"nothing was recorded. Check the server (`{START_COMMAND}`) and re-run."
                    ) from None
                log.warning("Label Studio import failed (%s); re-listing the project before retrying", _body(exc))
                time.sleep(self.settings.retry_delay_s * 2**attempt)
                continue
            created = len(getattr(response, "task_ids", None) or []) or int(response.task_count or 0)
            log.info(
                "Label Studio project %s: imported %d tasks in %.2f s", self.project_id, created, response.duration or 0
            )
            break
        confirmed = self.existing_tasks()
        return {sha: confirmed[sha] for sha in wanted if sha in confirmed}, created

    def fetch(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
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


class FilesBackend:
    """Air-gapped exchange: task JSON (with predictions) to the outbox, Label Studio JSON exports from the inbox."""

    name = "files"
    project_id: int | None = None

    def __init__(self, outbox: Path, inbox: Path, cycle: str) -> None:
        """Use ``outbox`` for new tasks and read every ``*.json`` export found in ``inbox``."""
        self.outbox, self.inbox, self.cycle = Path(outbox), Path(inbox), cycle

    def submit(self, tasks: list[dict[str, Any]], *, folders: set[Path]) -> tuple[dict[str, TaskRef], int]:
        """Write ``tasks`` to ``<outbox>/<cycle>_<UTC time>.json`` (atomically) for a person to import by hand."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = write_json_atomic(self.outbox / f"{self.cycle}_{stamp}.json", tasks)
        log.info(
            "label outbox: wrote %d tasks to %s (import them in Label Studio, export JSON to %s)",
            len(tasks),
            path,
            self.inbox,
        )
        return {t["data"]["image_sha256"]: TaskRef(None, None) for t in tasks}, len(tasks)

    def fetch(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Merge the tasks of every inbox export by ``data.image_sha256`` (annotations de-duplicated by id)."""
        merged: dict[str, dict[str, Any]] = {}
        files = sorted(self.inbox.glob("*.json")) if self.inbox.is_dir() else []
        for path in files:
            for task in read_export(path):
                sha = task["data"]["image_sha256"]
                entry = merged.setdefault(
                    sha, {"id": task.get("id"), "data": task["data"], "annotations": [], "updated_at": None}
                )
                seen = {a.get("id") for a in entry["annotations"] if a.get("id") is not None}
                entry["annotations"] += [
                    a for a in task.get("annotations") or [] if a.get("id") is None or a.get("id") not in seen
                ]
                entry["id"] = task.get("id", entry["id"])
        log.info("label inbox: %d export file(s), %d task(s)", len(files), len(merged))
        return list(merged.values())


def read_export(path: Path) -> list[dict[str, Any]]:
    """Read a Label Studio JSON export (a list of tasks); every task must carry ``data.image_sha256``.

    Raises:
        LabelError: not JSON, not a list of task objects, or a task without ``data.image_sha256`` (names it).
    """
    try:
        tasks = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LabelError(f"{path}: not a readable Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise LabelError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or not task["data"].get("image_sha256"):
            raise LabelError(
                f"{path} task #{i} (id {task.get('id') if isinstance(task, dict) else '?'}): no data.image_sha256; "
                "export with the JSON format from a project whose tasks came from the label outbox"
            )
    return tasks


# --------------------------------------------------------------------------------------------------------------
# Inputs: manifest, predictions, images.


def manifest_path(params: Params, cycle: str) -> Path:
    """``<base.paths.samples>/<cycle>/manifest.parquet``."""
    return params.base.paths.samples / cycle / "manifest.parquet"


def read_manifest(path: Path) -> list[SampleRow]:
    """Read the sample manifest; duplicate images (same SHA-256) are kept once.

    Raises:
        LabelError: missing file (names the stage that writes it), missing columns or null keys.
    """
    if not path.is_file():
        raise LabelError(f"{path}: sample manifest not found; run the sample stage for this cycle first")
    table = pq.read_table(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise LabelError(f"{path}: manifest lacks column(s) {missing} (has {table.column_names})")
    rows: list[SampleRow] = []
    seen: set[str] = set()
    columns = [*MANIFEST_COLUMNS, *(["phash"] if "phash" in table.column_names else [])]
    for i, rec in enumerate(table.select(columns).to_pylist()):
        for key in ("image_sha256", "image_id", "image_uri", "batch", "model_name", "model_version"):
            if rec[key] in (None, ""):
                raise LabelError(f"{path} row {i}: {key} is empty")
        if rec["image_sha256"] in seen:
            continue
        seen.add(rec["image_sha256"])
        date = rec["date"]
        if isinstance(date, str):
            date = dt.date.fromisoformat(date)
        rows.append(
            SampleRow(
                image_sha256=str(rec["image_sha256"]),
                image_id=str(rec["image_id"]),
                image_uri=str(rec["image_uri"]),
                batch=str(rec["batch"]),
                date=date,
                strategy=str(rec["strategy"] or ""),
                score=None if rec["score"] is None else float(rec["score"]),
                rank=None if rec["rank"] is None else int(rec["rank"]),
                model_name=str(rec["model_name"]),
                model_version=str(rec["model_version"]),
                phash=rec.get("phash") or None,
            )
        )
    return rows


def image_path(uri: str) -> Path:
    """The local path of a ``file://`` URI or a plain path."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise LabelError(
            f"image {uri}: only local files (file:// or a path) can be labeled, got scheme {parsed.scheme!r}"
        )
    return Path(uri)


@dataclass(frozen=True)
class Prediction:
    """The champion's boxes for one image (``xyxy`` pixels, ``(N, 4)``) from the prediction log."""

    width: int
    height: int
    boxes_xyxy: np.ndarray
    class_id: np.ndarray
    confidence: np.ndarray


def load_predictions(root: Path, rows: Sequence[SampleRow]) -> dict[str, Prediction]:
    """Return the logged predictions of ``rows`` by the model version each manifest row names.

    Only the partitions of the manifest's dates are read (all when a date is missing).
    """
    if not rows:
        return {}
    dates = None if any(r.date is None for r in rows) else {r.date for r in rows if r.date is not None}
    table = prediction_log.read(root, dates=dates)
    wanted = {(r.image_sha256, r.model_name, r.model_version) for r in rows}
    table = table.filter(pc.is_in(table["image_sha256"], pa.array(sorted({w[0] for w in wanted}), type=pa.string())))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for rec in table.to_pylist():
        if (rec["image_sha256"], rec["model_name"], rec["model_version"]) in wanted:
            grouped.setdefault(rec["image_sha256"], []).append(rec)
    out = {}
    for sha, recs in grouped.items():
        boxes = [r for r in recs if r["class_id"] is not None]
        out[sha] = Prediction(
            width=int(recs[0]["image_width"]),
            height=int(recs[0]["image_height"]),
            boxes_xyxy=np.array([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in boxes], dtype=np.float64).reshape(-1, 4),
            class_id=np.array([r["class_id"] for r in boxes], dtype=np.int64),
            confidence=np.array([r["confidence"] for r in boxes], dtype=np.float64),
        )
    return out


def build_task(
    row: SampleRow, *, cycle: str, url: str, classes: Sequence[str], prediction: Prediction | None
) -> dict[str, Any]:
    """The Label Studio task of one sampled image: data (URL + identity) and the champion's boxes as a prediction.

    Regions carry percent boxes, the per-box ``score`` and the original image size; the prediction carries
    ``model_version`` (``<model_name>-v<version>``) and a task-level ``score`` (mean box confidence, 0 without boxes).
    """
    data: dict[str, Any] = {
        ls.DATA_KEY: url,
        "image_sha256": row.image_sha256,
        "image_id": row.image_id,
        "image_uri": row.image_uri,
        "batch": row.batch,
        "cycle": cycle,
        "strategy": row.strategy,
        "sample_score": row.score,
        "rank": row.rank,
    }
    task: dict[str, Any] = {"data": data}
    if prediction is None:
        return task
    data.update(image_width=prediction.width, image_height=prediction.height)
    boxes = ls.xyxy_to_xywhp(prediction.boxes_xyxy, width=prediction.width, height=prediction.height)
    keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    regions = ls.rectangle_regions(
        boxes[keep],
        [classes[int(c)] for c in prediction.class_id[keep]],
        width=prediction.width,
        height=prediction.height,
        scores=[float(s) for s in prediction.confidence[keep]],
        id_prefix=f"{row.image_sha256[:8]}-",
    )
    score = float(np.mean(prediction.confidence[keep])) if keep.any() else 0.0
    task["predictions"] = [
        {"model_version": f"{row.model_name}-v{row.model_version}", "score": round(score, 6), "result": regions}
    ]
    return task


def perceptual_hash(path: Path) -> str | None:
    """The image's pHash (16 hex digits, as the sample stage writes it); None when imagehash cannot read it."""
    try:
        import imagehash
        from PIL import Image

        with Image.open(path) as img:
            return str(imagehash.phash(img))
    except Exception as exc:  # a bad hash must not stop labeling; validate checks the images
        log.warning("pHash of %s failed: %s", path, exc)
        return None


# --------------------------------------------------------------------------------------------------------------
# The ledger.


def ledger_path(params: Params) -> Path:
    """``<base.paths.labels>/ledger.parquet``."""
    return params.base.paths.labels / "ledger.parquet"


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """Read the ledger into ``{image_sha256: row}`` (empty when the file does not exist yet).

    Raises:
        LabelError: the file's columns do not match :data:`LEDGER_SCHEMA`.
    """
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    missing = [f.name for f in LEDGER_SCHEMA if f.name not in table.column_names]
    if missing:
        raise LabelError(f"{path}: ledger lacks column(s) {missing}; it was not written by this stage")
    rows = table.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA).to_pylist()
    return {r["image_sha256"]: r for r in rows}


def write_ledger(path: Path, rows: Mapping[str, dict[str, Any]]) -> None:
    """Write the ledger atomically (temp file + rename), rows sorted by cycle, queue time and image id."""
    ordered = sorted(rows.values(), key=lambda r: (r["cycle"], r["queued_at"], r["image_id"]))
    table = pa.Table.from_pylist(ordered, schema=LEDGER_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------------------
# Collection: annotations → YOLO files + ledger.


@dataclass
class _Collected:
    collected: int = 0
    skipped: int = 0
    rejected: list[str] = field(default_factory=list)


def collect(
    tasks: Sequence[Mapping[str, Any]], ledger: dict[str, dict[str, Any]], *, classes: Sequence[str], labels_root: Path
) -> _Collected:
    """Convert the annotations of ``tasks`` to YOLO files and update ``ledger`` rows in place.

    Every task is converted before anything is written, so an unknown label aborts the whole collection
    with all offending tasks named. Unchanged annotations (same id and ``updated_at`` as recorded) are not
    written or counted again.

    Raises:
        LabelError: annotations that cannot be converted (each task named), or a labeled image file missing.
    """
    now = dt.datetime.now(dt.UTC)
    plans: list[tuple[dict[str, Any], ls.Decision, ls.YoloLabel | None]] = []
    errors: list[str] = []
    for task in tasks:
        sha = (task.get("data") or {}).get("image_sha256")
        row = ledger.get(sha) if sha else None
        if row is None:
            continue  # not queued by this stage (e.g. a task added by hand)
        if task.get("id") is not None:
            row["task_id"] = int(task["id"])
        if task.get("updated_at") is not None:
            row["task_updated_at"] = ls.parse_time(task["updated_at"])
        decision = ls.choose_annotation(task.get("annotations") or [])
        if decision.status == "pending" or (
            decision.status == row["status"]
            and decision.annotation_id == row["annotation_id"]
            and decision.annotation_updated_at == row["annotation_updated_at"]
        ):
            continue
        label = None
        if decision.status == LABELED:
            where = f"task {row['task_id']} (image {row['image_id']}, sha256 {row['image_sha256'][:12]})"
            try:
                label = ls.annotation_to_yolo(
                    (decision.annotation or {}).get("result") or [], classes=classes, where=where
                )
            except ls.LabelConversionError as exc:
                errors.append(str(exc))
                continue
        plans.append((row, decision, label))
    if errors:
        raise LabelError(
            f"{len(errors)} annotation(s) cannot be converted, nothing collected:\n  " + "\n  ".join(errors)
        )

    done = _Collected()
    for row, decision, label in plans:
        images_dir = labels_root / row["cycle"] / "images"
        label_file = labels_root / row["cycle"] / "labels" / f"{row['image_id']}.txt"
        if label is not None:
            source = image_path(row["image_uri"])
            if not source.is_file():
                raise LabelError(f"{source}: image of task {row['task_id']} not found (image_uri {row['image_uri']})")
            _link_or_copy(source, images_dir / f"{row['image_id']}{source.suffix.lower()}")
            write_bytes_atomic(label_file, label.to_text().encode())
            done.rejected += label.rejected
            row.update(status=LABELED, n_boxes=len(label.class_id))
            done.collected += 1
        else:
            label_file.unlink(missing_ok=True)  # a labeled task re-answered as skipped no longer has labels
            for stale in images_dir.glob(f"{row['image_id']}.*"):
                stale.unlink()
            row.update(status=SKIPPED, n_boxes=None)
            done.skipped += 1
        row.update(
            annotation_id=decision.annotation_id, annotation_updated_at=decision.annotation_updated_at, updated_at=now
        )
    return done


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if target.stat().st_size == source.stat().st_size and (
            target.samefile(source) or target.read_bytes() == source.read_bytes()
        ):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


# --------------------------------------------------------------------------------------------------------------
# The stage.


def make_backend(params: Params, cycle: str, ledger: Mapping[str, dict[str, Any]]) -> LabelBackend:
    """The backend ``label.backend`` names (``labelstudio`` connects and checks the server now).

    ``ledger`` (:func:`read_ledger`) names the Label Studio projects its tasks are in: among duplicate projects
    of one title, the one most of them are in is used.
    """
    settings = params.label
    if settings.backend == "files":
        labels = params.base.paths.labels
        return FilesBackend(settings.outbox or labels / "outbox", settings.inbox or labels / "inbox", cycle)
    counts = collections.Counter(
        int(r["project_id"]) for r in ledger.values() if r["backend"] == "labelstudio" and r["project_id"] is not None
    )
    return LabelStudioBackend(
        settings,
        params.base.classes,
        record=projects_path(params),
        ledger_project_ids=[i for i, _ in counts.most_common()],
    )


def run(params: Params, *, cycle: str, backend: LabelBackend | None = None) -> LabelResult:
    """Queue the cycle's sampled images for labeling and collect finished annotations as YOLO labels.

    Args:
        params: validated params (``base``, ``label``).
        cycle: the labeling cycle (a folder name under ``base.paths.samples``).
        backend: a ready backend (tests); default: the one ``label.backend`` names.

    Returns:
        The :class:`LabelResult` (also written to ``<reports>/label.json``).

    Raises:
        LabelError: bad cycle name, missing manifest, image outside the document root or missing, unconvertible
            annotation.
        LabelStudioUnavailable / LabelStudioAuthError / LabelStudioError: see :func:`call_with_retries`.
    """
    if not _CYCLE.match(cycle):
        raise LabelError(f"cycle {cycle!r}: use letters, digits and . _ = - (it names folders)")
    start = time.perf_counter()
    paths = params.base.paths
    rows = read_manifest(manifest_path(params, cycle))
    ledger_file = ledger_path(params)
    ledger = read_ledger(ledger_file)
    backend = backend if backend is not None else make_backend(params, cycle, ledger)

    new = [r for r in rows if r.image_sha256 not in ledger]
    imported, without_predictions, missing = 0, [], []
    if new:
        _check_unique_ids(new, ledger, cycle)
        root = document_root(params.label)
        predictions = load_predictions(paths.predictions, new)
        tasks, folders, present = [], set(), []
        for row in new:
            path = image_path(row.image_uri)
            if not path.is_file():
                missing.append(f"{path}: image {row.image_id} of the sample manifest is gone; not imported")
                log.warning("%s", missing[-1])
                continue
            present.append(row)
            tasks.append(
                build_task(
                    row,
                    cycle=cycle,
                    url=ls.local_files_url(_relative_to_root(path, root)),
                    classes=params.base.classes,
                    prediction=predictions.get(row.image_sha256),
                )
            )
            folders.add(path.parent)
        new = present
        without_predictions = [r.image_id for r in new if r.image_sha256 not in predictions]
        if without_predictions:
            log.warning(
                "%d sampled image(s) have no logged predictions: imported without pre-annotations",
                len(without_predictions),
            )
        confirmed, imported = backend.submit(tasks, folders=folders) if tasks else ({}, 0)
        now = dt.datetime.now(dt.UTC)
        for row in new:
            ref = confirmed.get(row.image_sha256)
            if ref is None:
                continue
            ledger[row.image_sha256] = {
                "image_sha256": row.image_sha256,
                "image_id": row.image_id,
                "image_uri": row.image_uri,
                "batch": row.batch,
                "cycle": cycle,
                "status": QUEUED,
                "backend": backend.name,
                "project_id": backend.project_id,
                "task_id": ref.task_id,
                "annotation_id": None,
                "annotation_updated_at": None,
                "task_updated_at": ref.updated_at,
                "n_boxes": None,
                "phash": row.phash or perceptual_hash(image_path(row.image_uri)),
                "queued_at": now,
                "updated_at": now,
            }
        write_ledger(ledger_file, ledger)  # before collecting: the import is recorded even if collection fails
        unconfirmed = [r.image_id for r in new if r.image_sha256 not in confirmed]
        if unconfirmed:
            raise LabelStudioError(
                f"{backend.name}: {len(unconfirmed)} task(s) not confirmed after import (e.g. {unconfirmed[:5]}); "
                "the ledger records only confirmed ones: re-run to retry"
            )
    already = len(rows) - imported - len(missing)  # queued earlier (ledger) or adopted from the project

    fetched = backend.fetch(list(ledger.values()))
    done = collect(fetched, ledger, classes=params.base.classes, labels_root=paths.labels)
    write_ledger(ledger_file, ledger)
    for reason in done.rejected:
        log.warning("left out: %s", reason)

    mine = [r for r in ledger.values() if r["cycle"] == cycle]
    labeled = sum(r["status"] == LABELED for r in mine)
    pending = sum(r["status"] == QUEUED for r in mine)
    result = LabelResult(
        cycle=cycle,
        backend=backend.name,
        project_id=backend.project_id,
        imported=imported,
        already_imported=already,
        collected=done.collected,
        skipped=done.skipped,
        pending=pending,
        labeled=labeled,
        min_labeled=params.label.min_labeled,
        waiting=labeled < params.label.min_labeled and pending > 0,
        labels_dir=str(paths.labels / cycle),
        ledger=str(ledger_file),
        rejected=done.rejected,
        without_predictions=without_predictions,
        missing=missing,
    )
    log.info(
        "label %s: imported %d (already %d), collected %d, skipped %d, pending %d, labeled %d/%d%s",
        cycle,
        imported,
        already,
        done.collected,
        done.skipped,
        pending,
        labeled,
        params.label.min_labeled,
        " -> waiting for labels" if result.waiting else "",
    )
    report = asdict(result) | {
        "params": params.label.model_dump(mode="json"),
        "wall_s": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(paths.reports / "label.json", report)
    return result


def _check_unique_ids(new: Sequence[SampleRow], ledger: Mapping[str, dict[str, Any]], cycle: str) -> None:
    """Label files are named by image id: two different images with one id in a cycle would overwrite each other."""
    owner = {r["image_id"]: r["image_sha256"] for r in ledger.values() if r["cycle"] == cycle}
    for row in new:
        other = owner.setdefault(row.image_id, row.image_sha256)
        if other != row.image_sha256:
            raise LabelError(
                f"cycle {cycle}: image id {row.image_id!r} names two different images (sha256 {other[:12]} and "
                f"{row.image_sha256[:12]}); image ids must be unique (they name the label files)"
            )


def _relative_to_root(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise LabelError(
            f"{path}: not below the Label Studio document root {root}; Label Studio serves only files below "
            f"{DOCUMENT_ROOT_ENV}. Start it with {DOCUMENT_ROOT_ENV}=<a common parent> (`{START_COMMAND}` uses the "
            f"project folder) and set label.document_root (or {DOCUMENT_ROOT_ENV}) to the same folder here."
        ) from None


def _aware(value: Any) -> dt.datetime | None:
    return None if value is None else ls.parse_time(value)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.label --params P --cycle C``."""
    from tasks.env import apply_env

    parser = stage_argparser("label", __doc__)
    parser.add_argument("--cycle", required=True, help="labeling cycle (folder under base.paths.samples)")
    args = parser.parse_args(argv)
    apply_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(load_params(args.params), cycle=args.cycle)
    except (LabelError, LabelStudioError) as exc:
        raise SystemExit(f"label: {exc}") from None
    print(json.dumps({k: v for k, v in asdict(result).items() if k not in ("rejected", "without_predictions")}))


if __name__ == "__main__":
    main()
