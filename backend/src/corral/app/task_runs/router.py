"""``/api/tasks``: the caller's tasks, their events (also as SSE) and cancellation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sse_starlette import EventSourceResponse

from corral.app.deps import CurrentUser, ServicesDep
from corral.app.params import ID_PATTERN, EventCursor, ResourceId
from corral.app.problems import problem_responses
from corral.app.records import retention
from corral.app.streams.sse import SSE_RESPONSES, LastEventId, resume_cursor, stream_response
from corral.app.task_runs import service
from corral.app.task_runs.schemas import TERMINAL_STATES, TaskRunDetail, TaskRunOut, TaskState
from corral.task_schemas import task_events_key

router = APIRouter(prefix="/tasks", tags=["tasks"])


@router.get("", response_model=list[TaskRunOut])
async def list_tasks(
    user: CurrentUser,
    services: ServicesDep,
    state: TaskState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    thread_id: Annotated[
        str | None,
        Query(max_length=128, pattern=ID_PATTERN, description="Only this thread's tasks."),
    ] = None,
) -> list[TaskRunOut]:
    """Your tasks, newest first: tool invokes, pipeline steps, chat tool calls. Filter by `state`
    or `thread_id`; `limit` caps the page."""
    return await service.list_runs(services, user.id, state=state, limit=limit, thread_id=thread_id)


@router.get("/{task_id}", response_model=TaskRunDetail, responses=problem_responses(410))
async def get_task(task_id: ResourceId, user: CurrentUser, services: ServicesDep) -> TaskRunDetail:
    """One task with its state, timings, outcome and every event of its stream so far. 410
    when the retention policy deleted it."""
    try:
        return await service.detail(services, task_id, user.id)
    except service.TaskNotFound as exc:
        await retention.raise_if_purged(services, "task_run", task_id, user.id, f"task {task_id}")
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.post("/{task_id}/cancel", responses=problem_responses(409))
async def cancel_task(
    task_id: ResourceId, user: CurrentUser, services: ServicesDep
) -> dict[str, str]:
    """Stop a queued or running task: it is revoked, its sandboxed process killed, and a
    `cancelled` event ends its stream (waiting invokes answer within a second). 409 when it
    has already finished."""
    try:
        state = await service.cancel(services, task_id, user.id)
    except service.TaskNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except service.TaskAlreadyFinished as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return {"task_id": task_id, "state": state}


@router.get("/{task_id}/events", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def task_events(
    task_id: ResourceId,
    user: CurrentUser,
    services: ServicesDep,
    last_event_id: LastEventId = None,
    after: EventCursor = None,
) -> EventSourceResponse:
    """Server-sent events of one task; event ids are stream ids, so reconnects resume exactly."""
    try:
        run = await service.get_owned(services, task_id, user.id)
    except service.TaskNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return stream_response(
        services.hub,
        task_events_key(task_id),
        resume_cursor(last_event_id, after),
        max_s=services.settings.max_invoke_timeout_s + 3600,
        ping_s=services.settings.sse_ping_s,
        ended=run.state in TERMINAL_STATES,
    )
