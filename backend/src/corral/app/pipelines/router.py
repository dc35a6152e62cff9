"""``/api/pipelines/runs``: start a DAG of LLM steps, read it, follow it (SSE), cancel it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from corral.app.background import ShuttingDown
from corral.app.celery_client import BrokerUnavailable
from corral.app.deps import CurrentUser, ServicesDep, ToolsLimit
from corral.app.params import EventCursor, ResourceId
from corral.app.pipelines import service
from corral.app.pipelines.dag import PipelineInvalid
from corral.app.pipelines.repository import events_key
from corral.app.pipelines.schemas import (
    CancelOut,
    PipelineRun,
    PipelineRunRequest,
    PipelineRunSummary,
)
from corral.app.problems import ProblemError, problem_responses
from corral.app.streams.sse import SSE_RESPONSES, LastEventId, resume_cursor, stream_response
from corral.task_schemas import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    ProgressEvent,
    TaskEvent,
)

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


@router.post(
    "/runs",
    response_model=PipelineRun,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(503),
)
async def start_run(
    body: PipelineRunRequest, user: CurrentUser, services: ServicesDep, _limit: ToolsLimit
) -> PipelineRun:
    """Validated whole before any step is sent: 422 lists every problem found.

    A run counts once against the caller's `tools` rate limit."""
    try:
        return await service.start_run(services, user.id, body)
    except PipelineInvalid as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except (BrokerUnavailable, ShuttingDown) as exc:
        raise ProblemError(503, "broker-unavailable", str(exc), retry_after_s=5) from exc


@router.get("/runs", response_model=list[PipelineRunSummary])
async def list_runs(
    user: CurrentUser, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[PipelineRunSummary]:
    """Your pipeline runs, newest first, with their status and usage."""
    return await service.list_runs(services, user.id, limit)


@router.get("/runs/{run_id}", response_model=PipelineRun, responses=problem_responses(410))
async def get_run(run_id: ResourceId, user: CurrentUser, services: ServicesDep) -> PipelineRun:
    """One pipeline run: every step's status, output (or reference), usage and error."""
    try:
        return await service.get_owned(services, run_id, user.id)
    except service.RunNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.post(
    "/runs/{run_id}/cancel", response_model=CancelOut, responses=problem_responses(409, 410)
)
async def cancel_run(run_id: ResourceId, user: CurrentUser, services: ServicesDep) -> CancelOut:
    """Stop a running pipeline: running steps are cancelled, pending ones never start. 409
    when the run has already finished."""
    try:
        return await service.cancel_run(services, run_id, user.id)
    except service.RunNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except service.RunAlreadyFinished as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def _sse(entry_id: str, event: TaskEvent) -> ServerSentEvent:
    """``step`` events carry one step's transition; ``run`` events the run's start and end."""
    data: dict[str, Any]
    if isinstance(event, ProgressEvent):
        data = json.loads(event.data) if event.data else {}
        return ServerSentEvent(
            id=entry_id, event="step" if "step" in data else "run", data=json.dumps(data)
        )
    if isinstance(event, DoneEvent):
        data = json.loads(event.result) if event.result else {"status": "succeeded"}
    elif isinstance(event, ErrorEvent):
        data = {"status": "failed", "message": event.message}
    elif isinstance(event, CancelledEvent):
        data = {"status": "cancelled", "message": event.reason}
    else:
        data = event.model_dump(mode="json")
    return ServerSentEvent(id=entry_id, event="run", data=json.dumps(data))


async def _ended(run: PipelineRun) -> AsyncIterator[ServerSentEvent]:
    data: dict[str, Any] = {"status": run.status, "usage": run.usage.model_dump()}
    if run.error:
        data["message"] = run.error
    yield ServerSentEvent(id="0-1", event="run", data=json.dumps(data))


@router.get(
    "/runs/{run_id}/events",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSES, **problem_responses(410)},
)
async def run_events(
    run_id: ResourceId,
    user: CurrentUser,
    services: ServicesDep,
    last_event_id: LastEventId = None,
    after: EventCursor = None,
) -> EventSourceResponse:
    """Step transitions as server-sent events; ids are stream ids, so reconnects resume."""
    try:
        run = await service.get_owned(services, run_id, user.id)
    except service.RunNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if run.status != "running" and not await services.redis.exists(events_key(run_id)):
        # The live feed expired (or Redis was emptied); the record says how it ended.
        return EventSourceResponse(_ended(run))
    return stream_response(
        services.hub,
        events_key(run_id),
        resume_cursor(last_event_id, after),
        max_s=services.settings.max_invoke_timeout_s + 3600,
        ping_s=services.settings.sse_ping_s,
        render=_sse,
    )
