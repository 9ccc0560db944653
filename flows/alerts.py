"""Alerts: a person hears about drift, labels waiting past a deadline, a pending approval, a rollback or a failed run
without opening a UI.

Each alert goes through a Prefect notification block,
:class:`prefect.blocks.notifications.CustomWebhookNotificationBlock`, built in memory and never saved: its URL is
a secret and comes only from the environment variable named by ``monitor.alerts.webhook_env``
(``VISIONLOOP_ALERT_WEBHOOK`` by default; unset: alerts are logged, not sent). The block POSTs one JSON object::

    {"event": "failed_run", "title": "...", "body": "...", "project": "visionloop", "flow_run": "crimson-fox"}

Only events listed in ``monitor.alerts.events`` are sent. Sending never fails the caller: a receiver that is down or
answers an error is a warning in the log and :func:`alert` returns ``False``.

The block allows private URLs (a receiver on 127.0.0.1 or on the plant's network is the normal case), and its sync
``notify`` is called explicitly (``_sync=True``): Prefect dispatches to the async variant whenever it sees an event
loop or an async run context, which would hand back an un-awaited coroutine here.

:func:`on_failed_run` is the ``on_failure`` / ``on_crashed`` hook of the flows (``failed_run``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

from prefect.runtime import flow_run as runtime_flow_run

from tasks.config import DEFAULT_PARAMS, AlertParams, Params, load_params

log = logging.getLogger(__name__)

_warned_unset: set[str] = set()  # webhook variables already reported unset in this process (log once)


def alert(params: Params, event: str, title: str, body: str, *, flow_run_name: str | None = None) -> bool:
    """Send one alert through the webhook notification block; ``True`` when the receiver accepted it.

    Args:
        params: ``monitor.alerts`` (events, webhook variable, timeout) and ``base.project``.
        event: ``drift``, ``labels_waiting``, ``approval_pending``, ``rollback`` or ``failed_run``; an event not in
            ``monitor.alerts.events`` is not sent.
        title: one line (the notification's subject).
        body: the details.
        flow_run_name: the flow run the alert is about (default: the current flow run, if any).

    Returns:
        ``False`` when the event is switched off, no webhook is configured, or sending failed (logged); never raises.
    """
    return send_alert(
        params.monitor.alerts,
        event=event,
        title=title,
        body=body,
        project=params.base.project,
        flow_run_name=flow_run_name,
    )


def send_alert(
    alerts: AlertParams, *, event: str, title: str, body: str, project: str, flow_run_name: str | None = None
) -> bool:
    """:func:`alert` from the ``monitor.alerts`` section alone (hooks use it when the params file does not load)."""
    if event not in alerts.events:
        log.debug("alerts: event %r is not in monitor.alerts.events %s; not sent", event, alerts.events)
        return False
    url = os.environ.get(alerts.webhook_env, "").strip()
    if not url:
        if alerts.webhook_env not in _warned_unset:
            _warned_unset.add(alerts.webhook_env)
            log.warning("alerts: no webhook configured (set $%s)", alerts.webhook_env)
        log.info("alerts: %s: %s (not sent)", event, title)
        return False
    run_name = flow_run_name if flow_run_name is not None else _current_flow_run_name()
    try:
        block = _webhook_block(url, alerts, event=event, project=project, flow_run=run_name)
        block.notify(body, subject=title, _sync=True)  # _sync: async_dispatch's own keyword
    except Exception as exc:  # a down or failing receiver must never fail the run that raised the alert
        log.warning(
            "alerts: %s alert %r not delivered to the webhook in $%s: %s: %s",
            event,
            title,
            alerts.webhook_env,
            type(exc).__name__,
            exc,
        )
        return False
    log.info("alerts: %s sent: %s", event, title)
    return True


def _webhook_block(url: str, alerts: AlertParams, *, event: str, project: str, flow_run: str | None) -> Any:
    """The notification block, in memory only. Values go in as template secrets so that braces in a title or body
    are never read as placeholders (each JSON field is a single placeholder, replaced by the value as is)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.types import SecretDict

    return CustomWebhookNotificationBlock(
        name=f"{project}-alerts",
        url=url,
        method="POST",
        json_data={
            "event": "{{event}}",
            "title": "{{subject}}",
            "body": "{{body}}",
            "project": "{{project}}",
            "flow_run": "{{flow_run}}",
        },
        secrets=SecretDict({"event": event, "project": project, "flow_run": flow_run}),
        headers=None,
        cookies=None,
        timeout=alerts.timeout_s,
        allow_private_urls=True,
    )


def _current_flow_run_name() -> str | None:
    try:
        name = runtime_flow_run.name
    except Exception:  # no run context, or the API cannot be asked: the alert goes out without it
        return None
    return str(name) if name else None


def labels_overdue(started_at: str, *, deadline_hours: float, now: dt.datetime | None = None) -> float | None:
    """Hours a cycle has been open when that is more than ``deadline_hours``, else ``None``.

    Args:
        started_at: the cycle's ISO start time (``CycleState.started_at``; naive times are read as UTC).
        deadline_hours: ``monitor.alerts.labels_deadline_hours``.
        now: the current time (default: now, UTC).
    """
    started = dt.datetime.fromisoformat(started_at)
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.UTC)
    hours = ((now or dt.datetime.now(dt.UTC)) - started).total_seconds() / 3600
    return hours if hours > deadline_hours else None


def on_failed_run(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_failure`` / ``on_crashed`` hook: a ``failed_run`` alert naming the flow, the run and its error.

    The run's own params file says where to send it; when that file is what failed to load, the defaults of
    ``monitor.alerts`` are used (still only the environment's webhook).
    """
    params_path = (getattr(flow_run, "parameters", None) or {}).get("params_path") or DEFAULT_PARAMS
    try:
        params = load_params(params_path)
        alerts, project = params.monitor.alerts, params.base.project
    except Exception as exc:  # the params file may be the very reason the run failed
        log.warning(
            "alerts: params %s not loaded for the failed-run alert (%s); default alert settings", params_path, exc
        )
        alerts, project = AlertParams(), "visionloop"
    state_name = getattr(state, "name", None) or "Failed"
    send_alert(
        alerts,
        event="failed_run",
        title=f"{flow.name} run {flow_run.name} {state_name.lower()}",
        body=getattr(state, "message", None) or f"flow run {flow_run.id} ended {state_name}",
        project=project,
        flow_run_name=flow_run.name,
    )
