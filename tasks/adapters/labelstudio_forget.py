"""Label Studio, the forget side: delete one image's tasks (the forget stage's only Label Studio call).

Beside :mod:`tasks.adapters.labelstudio` (connection, retries), which is at its size limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from tasks.adapters.labelstudio import call_with_retries, connect, label_studio_url
from tasks.config import LabelParams

log = logging.getLogger(__name__)


def delete_image_tasks(
    settings: LabelParams, *, task_ids: Sequence[int], project_ids: Sequence[int], sha256: str
) -> list[int]:
    """Delete the tasks of one image (annotations and predictions go with them): the forget stage's call.

    Deletes ``task_ids`` (the ledger's) and any other task of ``project_ids`` whose data names ``sha256`` (an import
    the ledger never recorded). A task that is already gone (404) counts as deleted, so a repeat is harmless.

    Returns:
        The ids of the tasks deleted (or already gone), sorted.

    Raises:
        LabelStudioUnavailable: the server does not answer (after the retries).
    """
    from label_studio_sdk.core.api_error import ApiError

    client = connect(settings)
    url = label_studio_url(settings)
    doomed = set(task_ids)
    for project_id in project_ids:

        def matching(project: int = project_id) -> list[int]:
            try:
                tasks: Any = client.tasks.list(project=project, fields="task_only")
                return [int(cast(int, t.id)) for t in tasks if (t.data or {}).get("image_sha256") == sha256]
            except ApiError as exc:
                if exc.status_code == 404:
                    return []
                raise

        doomed |= set(
            call_with_retries(matching, what=f"list tasks of project {project_id}", settings=settings, url=url)
        )
    for task_id in sorted(doomed):

        def delete(task: int = task_id) -> None:
            try:
                client.tasks.delete(id=str(task))
            except ApiError as exc:
                if exc.status_code != 404:
                    raise

        call_with_retries(delete, what=f"delete task {task_id}", settings=settings, url=url)
        log.info("Label Studio: task %s deleted", task_id)
    return sorted(doomed)
