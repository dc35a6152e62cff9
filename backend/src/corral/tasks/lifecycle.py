"""Terminal stream events and per-task log context, driven by Celery's signals.

``task_success`` and ``task_failure`` fire after the backend stored the outcome, in the child for
a normal finish and in the worker's main process for a hard time limit or a lost child, so a
reader that sees ``done``/``error`` can always fetch the outcome. A child lost with
``reject_on_worker_lost`` is requeued instead and no signal fires: the next attempt writes
``started`` again.
"""

from __future__ import annotations

import traceback as tb
from typing import Any

import structlog
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery import Task
from celery.signals import task_failure, task_postrun, task_prerun, task_revoked, task_success

from corral.task_schemas import REGISTRY
from corral.tasks._base import TaskUserError
from corral.tasks.celery_app import done_rides_with_result, settings
from corral.tasks.run_clock import cpu_since_start
from corral.tasks.stream_notifier import StreamNotifier

log = structlog.get_logger(__name__)


def _notifier(task_id: str) -> StreamNotifier:
    return StreamNotifier(task_id, redis_url=settings.redis.streams_url, settings=settings.streams)


def _is_ours(sender: Any) -> bool:
    return getattr(sender, "name", None) in REGISTRY


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """A user-facing (error_type, message) for any exception a task can end with."""
    if isinstance(exc, TaskUserError):
        return exc.error_type, str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return "TimeLimitExceeded", "the task ran past its time limit and was stopped"
    if isinstance(exc, TimeLimitExceeded):
        return "TimeLimitExceeded", f"the task ran past its hard time limit ({exc}s) and was killed"
    if isinstance(exc, WorkerLostError):
        return "WorkerLost", "the worker process running the task died"
    return type(exc).__name__, str(exc) or type(exc).__name__


@task_prerun.connect
def _bind_log_context(task_id: str, task: Task, **_: Any) -> None:
    queue = (task.request.delivery_info or {}).get("routing_key")
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=task.name, queue=queue)


@task_postrun.connect
def _clear_log_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


@task_success.connect
def _publish_done(sender: Task, result: Any, **_: Any) -> None:
    # Usually already written in the transaction that stored the result (result_backend.py).
    if _is_ours(sender) and not done_rides_with_result(settings):
        _notifier(sender.request.id).done(result, cpu_s=cpu_since_start(sender.request.id))


@task_failure.connect
def _publish_error(
    sender: Task, task_id: str, exception: BaseException, einfo: Any = None, **_: Any
) -> None:
    if not _is_ours(sender):
        return
    error_type, message = describe_failure(exception)
    trace = None
    if settings.expose_tracebacks and einfo is not None:
        trace = str(einfo.traceback) if getattr(einfo, "traceback", None) else tb.format_exc()
    log.warning("task failed", task_id=task_id, error_type=error_type, error=message)
    _notifier(task_id).error(error_type, message, trace, cpu_s=cpu_since_start(task_id))


@task_revoked.connect
def _publish_expired(sender: Any, request: Any, expired: bool = False, **_: Any) -> None:
    # A user's cancel is written by the app that revoked; only expiry is news to the stream.
    if expired and getattr(request, "task", None) in REGISTRY:
        _notifier(request.id).cancelled("expired: nobody could still want this result")
