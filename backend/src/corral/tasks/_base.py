"""Turning a plain function into a registered Corral task.

``corral_task(spec)`` registers ``fn(ctx, input) -> output`` under the registry name with the
registry's limits and retry policy. The wrapper first counts the delivery (``delivery.py``:
past ``max_deliveries`` the task fails ``WorkerLost``; a task that already has an outcome is not
run), then validates the input with the spec's model,
publishes ``started``/``progress`` through ``task_stream_notifier`` and returns the output as
JSON. ``done``/``error`` are written by ``corral.tasks.lifecycle`` after Celery stores the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from celery import Task
from celery.exceptions import Ignore
from pydantic import BaseModel

from corral.task_schemas import WORKER_LOST, IgnoredEvent, TaskSpec
from corral.tasks.celery_app import app, settings
from corral.tasks.delivery import begin_delivery
from corral.tasks.stream_notifier import StreamNotifier, task_stream_notifier

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)

log = structlog.get_logger(__name__)


class TaskUserError(Exception):
    """An expected, typed failure whose message is meant for the user (not a crash)."""

    error_type: str = "TaskUserError"

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        if error_type is not None:
            self.error_type = error_type


class TransientTaskError(Exception):
    """Infrastructure hiccup worth retrying under the spec's retry policy."""


@dataclass
class TaskContext:
    """What a task body may know about its run."""

    task_id: str
    owner_id: str
    queue: str
    attempt: int
    notifier: StreamNotifier

    def progress(
        self,
        current: float | None = None,
        total: float | None = None,
        message: str = "",
        data: Any = None,
    ) -> None:
        self.notifier.progress(current=current, total=total, message=message, data=data)


def corral_task(
    spec: TaskSpec[InputT, OutputT],
) -> Callable[[Callable[[TaskContext, InputT], OutputT]], Task]:
    retry = spec.retry
    options: dict[str, Any] = {
        "name": spec.name,
        "bind": True,
        "soft_time_limit": spec.soft_time_limit_s,
        "time_limit": spec.time_limit_s,
        "max_retries": retry.max_retries,
        # Expected, user-facing failures: logged as one line, not as a crash with a traceback.
        "throws": (TaskUserError,),
    }
    if retry.max_retries:
        options |= {
            "autoretry_for": (TransientTaskError,),
            "retry_backoff": retry.backoff_s,
            "retry_backoff_max": retry.backoff_max_s,
            "retry_jitter": retry.jitter,
        }

    def decorator(fn: Callable[[TaskContext, InputT], OutputT]) -> Task:
        def run(self: Task, input: dict[str, Any], owner_id: str) -> dict[str, Any]:
            request = self.request
            attempt = int(request.retries or 0) + 1
            delivery = begin_delivery(
                request.id,
                attempt,
                str(request.hostname or ""),
                redis_url=settings.redis.streams_url,
                settings=settings.streams,
            )
            if delivery.outcome:
                # Already ended (lost, cancelled, a duplicate message): record it, run nothing.
                StreamNotifier(
                    request.id, redis_url=settings.redis.streams_url, settings=settings.streams
                ).publish(
                    IgnoredEvent(
                        outcome="started",
                        first=delivery.outcome,
                        detail="delivered again after the task ended; not run",
                    )
                )
                log.warning("redelivery after outcome ignored", outcome=delivery.outcome)
                raise Ignore()
            if delivery.over_limit(spec):
                raise TaskUserError(delivery.lost_message(), error_type=WORKER_LOST)
            parsed = spec.input_model.model_validate(input)
            with task_stream_notifier(
                request.id,
                redis_url=settings.redis.streams_url,
                settings=settings.streams,
                attempt=attempt,
                delivery=delivery.number,
            ) as notifier:
                ctx = TaskContext(
                    task_id=request.id,
                    owner_id=owner_id,
                    queue=(request.delivery_info or {}).get("routing_key") or "",
                    attempt=attempt,
                    notifier=notifier,
                )
                log.info("task body started", attempt=attempt)
                output = fn(ctx, parsed)
                log.info("task body finished")
            return spec.output_model.model_validate(output).model_dump(mode="json")

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        run.__module__ = fn.__module__
        task: Task = app.task(**options)(run)
        return task

    return decorator
