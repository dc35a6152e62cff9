"""``/api/tools``: list tools with their argument schemas and invoke them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from corral.app.celery_client import BrokerUnavailable, QueueNotAllowed
from corral.app.deps import CurrentUser, ServicesDep, ToolsLimit
from corral.app.task_runs import service as task_runs
from corral.app.tools import (
    catalog,  # noqa: F401  (registers every tool)
    service,
)
from corral.app.tools.registry import TOOLS
from corral.app.tools.schemas import InvokeRequest, InvokeResponse, ToolOut

router = APIRouter(prefix="/tools", tags=["tools"])


@router.get("", response_model=list[ToolOut])
async def list_tools(user: CurrentUser) -> list[ToolOut]:
    return [
        ToolOut(name=t.name, description=t.description, parameters=t.parameters_schema())
        for t in TOOLS.values()
    ]


@router.post("/{name}/invoke", response_model=InvokeResponse)
async def invoke_tool(
    name: str, body: InvokeRequest, user: CurrentUser, services: ServicesDep, _limit: ToolsLimit
) -> InvokeResponse:
    limit = services.settings.max_invoke_timeout_s
    if body.timeout_s > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"timeout_s must be at most {limit:g}; follow longer tasks at /api/tasks/{{id}}/events",
        )
    try:
        return await service.invoke(services, user, name, body.arguments, body.timeout_s)
    except service.UnknownTool as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except service.BadArguments as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.errors) from exc
    except QueueNotAllowed as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except BrokerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc


@router.get("/results/{task_id}", response_model=InvokeResponse)
async def tool_result(
    task_id: str,
    user: CurrentUser,
    services: ServicesDep,
    timeout_s: Annotated[
        float, Query(ge=0, le=60, description="Wait this long for a task still running.")
    ] = 0.0,
) -> InvokeResponse:
    """Re-attach to a tool task (e.g. after an invoke answered `timeout`): its outcome shaped
    exactly like invoke's, figures and downloads as fresh URLs; `timeout` while still running."""
    try:
        run = await task_runs.get_owned(services, task_id, user.id)
    except task_runs.TaskNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if run.tool is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id} was not started by a tool")
    try:
        tool = service.get_tool(run.tool)
    except service.UnknownTool as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return await service.wait(services, user, tool, task_id, max(timeout_s, 0.05))
