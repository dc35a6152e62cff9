"""``/api/tools``: list tools with their argument schemas and invoke them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from corral.app.celery_client import BrokerUnavailable, QueueNotAllowed
from corral.app.deps import CurrentUser, ServicesDep, ToolsLimit
from corral.app.health.sandbox import sandbox_layers
from corral.app.idempotency import IdempotencyKey
from corral.app.params import ResourceId, ToolName
from corral.app.problems import ProblemError, problem_responses
from corral.app.task_runs import service as task_runs
from corral.app.tools import (
    catalog,  # noqa: F401  (registers every tool)
    service,
)
from corral.app.tools.registry import TOOLS
from corral.app.tools.schemas import InvokeRequest, InvokeResponse, ToolOut
from corral.task_schemas import Queue

router = APIRouter(prefix="/tools", tags=["tools"])


@router.get("", response_model=list[ToolOut])
async def list_tools(user: CurrentUser, services: ServicesDep) -> list[ToolOut]:
    """The tools you can invoke, each with its description and the JSON schema of its arguments;
    python_q tools also say what the workers' sandboxes enforce (seccomp, cgroups)."""
    layers = await sandbox_layers(services.redis)
    return [
        ToolOut(
            name=t.name,
            description=t.description,
            parameters=t.parameters_schema(),
            sandbox=layers if tuple(t.task.queues) == (Queue.PYTHON,) else None,
        )
        for t in TOOLS.values()
    ]


@router.post(
    "/{name}/invoke", response_model=InvokeResponse, responses=problem_responses(409, 410, 503)
)
async def invoke_tool(
    name: ToolName,
    body: InvokeRequest,
    user: CurrentUser,
    services: ServicesDep,
    _limit: ToolsLimit,
    idempotency_key: IdempotencyKey = None,
) -> InvokeResponse:
    """Send the tool's task to its queue and wait up to `timeout_s` for the outcome. The
    answer is the outcome (`done` with the output, `error`, `cancelled`) or `timeout` with the
    task id to re-attach (`GET /api/tools/results/{task_id}`). Counts against `tools` limits.

    With an `Idempotency-Key` header, repeating the request (same user, same key, within
    24 h) answers with the first request's task instead of sending another (409 if the key
    was used for another tool).

    Example: `POST /api/tools/echo/invoke {"arguments": {"payload": "hi", "steps": 3}}`"""
    limit = services.settings.max_invoke_timeout_s
    if body.timeout_s > limit:
        msg = (
            f"timeout_s must be at most {limit:g}; follow longer tasks at /api/tasks/{{id}}/events"
        )
        raise ProblemError(
            422,
            "validation-error",
            msg,
            errors=[{"loc": ["body", "timeout_s"], "msg": msg, "type": "less_than_equal"}],
        )
    try:
        return await service.invoke(
            services, user, name, body.arguments, body.timeout_s, idempotency_key
        )
    except service.IdempotencyKeyReused as exc:
        raise ProblemError(409, "idempotency-key-reused", str(exc)) from exc
    except service.UnknownTool as exc:
        raise ProblemError(404, "unknown-tool", str(exc)) from exc
    except service.BadArguments as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors[:3]
        )
        raise ProblemError(422, "invalid-arguments", f"{exc}: {where}", errors=exc.errors) from exc
    except QueueNotAllowed as exc:
        raise ProblemError(422, "queue-not-allowed", str(exc)) from exc
    except BrokerUnavailable as exc:
        raise ProblemError(503, "broker-unavailable", str(exc), retry_after_s=5) from exc


@router.get("/results/{task_id}", response_model=InvokeResponse)
async def tool_result(
    task_id: ResourceId,
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
