"""``long_poll_celery_result``: wait for a task's outcome on its event stream.

Reads from ``0-0`` through the process's ``StreamHub`` (so a task that finished before the
caller started waiting is still seen), returns as soon as a terminal event arrives, and at the
deadline consults the Celery backend once before answering ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from corral.app.streams._hub import StreamHub, Subscription
from corral.app.streams.outcomes import (
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskOutcome,
    TaskTimedOut,
)
from corral.app.streams.result_backend import ResultBackendReader, failure_details
from corral.task_schemas import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    TaskEvent,
    task_events_key,
)

OnEvent = Callable[[str, TaskEvent], Awaitable[None]]


async def outcome_from_backend(reader: ResultBackendReader, task_id: str) -> TaskOutcome:
    meta = await reader.meta(task_id)
    status = meta.get("status", "PENDING")
    if status == "SUCCESS":
        return TaskDone(task_id=task_id, output=meta.get("result"))
    if status == "FAILURE":
        error_type, message = failure_details(meta)
        return TaskFailed(task_id=task_id, error_type=error_type, message=message)
    if status == "REVOKED":
        return TaskCancelled(task_id=task_id, reason="revoked")
    return TaskTimedOut(task_id=task_id, state=status)


async def long_poll_celery_result(
    task_id: str,
    *,
    timeout_s: float,
    hub: StreamHub,
    backend: ResultBackendReader,
    on_event: OnEvent | None = None,
    subscription: Subscription | None = None,
) -> TaskOutcome:
    """Wait up to ``timeout_s`` for ``task_id``; ``on_event`` sees every event on the way.

    Pass a ``subscription`` opened before sending (``hub.subscribe(task_events_key(id))``) to
    save the reader's wake-up round trip: the fastest way to send and wait.
    """
    if subscription is not None:
        return await _wait(subscription, task_id, timeout_s, backend, on_event)
    async with hub.subscribe(task_events_key(task_id)) as sub:
        return await _wait(sub, task_id, timeout_s, backend, on_event)


async def _wait(
    sub: Subscription,
    task_id: str,
    timeout_s: float,
    backend: ResultBackendReader,
    on_event: OnEvent | None,
) -> TaskOutcome:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (remaining := deadline - loop.time()) > 0:
        try:
            entry_id, event = await asyncio.wait_for(sub.get(), remaining)
        except TimeoutError:
            break
        if on_event is not None:
            await on_event(entry_id, event)
        if isinstance(event, DoneEvent):
            if event.result is not None:
                return TaskDone(task_id=task_id, output=json.loads(event.result))
            return await outcome_from_backend(backend, task_id)
        if isinstance(event, ErrorEvent):
            return TaskFailed(
                task_id=task_id,
                error_type=event.error_type,
                message=event.message,
                traceback=event.traceback,
            )
        if isinstance(event, CancelledEvent):
            return TaskCancelled(task_id=task_id, reason=event.reason)
    return await outcome_from_backend(backend, task_id)
