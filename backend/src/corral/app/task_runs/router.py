"""``/api/tasks``: the caller's tasks, their events (also as SSE) and cancellation."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from corral.app.deps import CurrentUser, ServicesDep
from corral.app.task_runs import service
from corral.app.task_runs.schemas import TaskRunDetail, TaskRunOut, TaskState
from corral.task_schemas import is_terminal, task_events_key

router = APIRouter(prefix="/tasks", tags=["tasks"])

_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@router.get("", response_model=list[TaskRunOut])
async def list_tasks(
    user: CurrentUser,
    services: ServicesDep,
    state: TaskState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    thread_id: Annotated[str | None, Query(description="Only this thread's tasks.")] = None,
) -> list[TaskRunOut]:
    return await service.list_runs(services, user.id, state=state, limit=limit, thread_id=thread_id)


@router.get("/{task_id}", response_model=TaskRunDetail)
async def get_task(task_id: str, user: CurrentUser, services: ServicesDep) -> TaskRunDetail:
    try:
        return await service.detail(services, task_id, user.id)
    except service.TaskNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.delete("/{task_id}")
async def cancel_task(task_id: str, user: CurrentUser, services: ServicesDep) -> dict[str, str]:
    try:
        state = await service.cancel(services, task_id, user.id)
    except service.TaskNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except service.TaskAlreadyFinished as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return {"task_id": task_id, "state": state}


@router.get("/{task_id}/events")
async def task_events(
    task_id: str,
    user: CurrentUser,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[str | None, Query(description="Resume after this event id.")] = None,
) -> EventSourceResponse:
    """Server-sent events of one task; event ids are stream ids, so reconnects resume exactly."""
    try:
        await service.get_owned(services, task_id, user.id)
    except service.TaskNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    cursor = last_event_id or after or "0-0"
    if not _ENTRY_ID.match(cursor):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"Last-Event-ID {cursor!r} is not a stream id like 1700000000000-0",
        )
    max_s = services.settings.max_invoke_timeout_s + 3600

    async def stream() -> AsyncIterator[ServerSentEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        async with services.hub.subscribe(task_events_key(task_id), cursor) as sub:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    entry_id, event = await asyncio.wait_for(sub.get(), remaining)
                except TimeoutError:
                    return
                yield ServerSentEvent(
                    id=entry_id,
                    event=event.type,
                    data=json.dumps(event.model_dump(mode="json", exclude_none=True)),
                )
                if is_terminal(event):
                    return

    return EventSourceResponse(stream(), ping=int(services.settings.sse_ping_s))
