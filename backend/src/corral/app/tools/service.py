"""Invoking a tool: validate arguments, send its task, wait for the typed outcome."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import ValidationError

from corral.app import idempotency
from corral.app.auth.service import User
from corral.app.db.models import TaskRun
from corral.app.services import Services
from corral.app.sessions import service as sessions
from corral.app.streams import (
    Subscription,
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskTimedOut,
    long_poll_celery_result,
)
from corral.app.streams.long_poll import OnEvent
from corral.app.task_runs import service as task_runs
from corral.app.task_runs.waited import WaitedRun
from corral.app.tools.registry import TOOLS, Dispatch, Tool, ToolCall
from corral.app.tools.schemas import InvokeError, InvokeResponse
from corral.task_schemas import task_events_key


class UnknownTool(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown tool {name!r}; available: {', '.join(sorted(TOOLS))}")


class IdempotencyKeyReused(ValueError):
    def __init__(self, key: str, used_for: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for {used_for} in the last 24 h; "
            "use a new key for a different request"
        )


class BadArguments(ValueError):
    def __init__(self, tool: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"invalid arguments for {tool}")
        self.errors = errors


def get_tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        raise UnknownTool(name) from None


async def start(
    services: Services,
    user: User,
    name: str,
    arguments: dict[str, Any],
    *,
    task_id: str | None = None,
    thread_id: str | None = None,
    idempotency_key: str | None = None,
    watch: bool = True,
) -> tuple[Tool, str, str | None]:
    """Validate and send; returns the tool, the task id and the one worker the task was routed
    to (``None``: a shared queue, or a task an earlier request sent). With
    ``idempotency_key``, a task this user started with the same key within 24 h is returned
    instead (nothing is sent). ``watch=False``: the caller records the run (``WaitedRun``);
    once the task is sent that holds even if this raises."""
    tool = get_tool(name)
    try:
        args = tool.arguments.model_validate(arguments)
    except ValidationError as exc:
        raise BadArguments(
            name, [dict(e) for e in exc.errors(include_url=False, include_context=False)]
        ) from exc
    if idempotency_key is not None:
        async with services.db.session() as session:
            earlier = await idempotency.find_recent(session, TaskRun, user.id, idempotency_key)
        if earlier is not None:
            if earlier.tool != tool.name:
                raise IdempotencyKeyReused(idempotency_key, earlier.tool or earlier.task_name)
            return tool, earlier.id, None
    call = ToolCall(user=user, services=services, thread_id=thread_id)
    built, queue = await tool.build_input(args, call)
    if isinstance(built, Dispatch):
        spec, task_input, route = built.spec, built.input, built.route
    else:
        spec, task_input, route = tool.task, built, None
    task_id = await task_runs.submit(
        services,
        spec,
        task_input,
        owner_id=user.id,
        queue=queue,
        tool=tool.name,
        task_id=task_id,
        thread_id=thread_id,
        idempotency_key=idempotency_key,
        route=route,
        watch=watch,
    )
    try:
        await sessions.remember_route(services, task_id, route)
    except BaseException:
        if not watch:  # sent, and its caller will not wait for it: the tracker records it
            services.tracker.watch(task_id, timeout_s=task_runs.watch_timeout_s(services, spec))
        raise
    return tool, task_id, sessions.route_worker(route)


async def wait(
    services: Services,
    user: User,
    tool: Tool,
    task_id: str,
    timeout_s: float,
    on_event: OnEvent | None = None,
    subscription: Subscription | None = None,
    holder: str | Literal["ask"] | None = "ask",
) -> InvokeResponse:
    """``holder``: the worker the task was routed to, if the caller sent it (else looked up)."""
    # A task on one worker's own queue (a session's holder) fails at once if that worker dies.
    if holder == "ask":
        holder = await sessions.routed_worker(services, task_id)
    poll = long_poll_celery_result(
        task_id,
        timeout_s=timeout_s,
        hub=services.hub,
        backend=services.results,
        on_event=on_event,
        subscription=subscription,
    )
    outcome = await sessions.watch_holder(services, task_id, holder, poll)
    match outcome:
        case None:
            return InvokeResponse(
                task_id=task_id,
                status="error",
                error=InvokeError(
                    type="SessionWorkerLost", message=sessions.worker_lost_message(holder)
                ),
            )
        case TaskDone(output=output):
            presented = await tool.present(output, ToolCall(user=user, services=services))
            return InvokeResponse(task_id=task_id, status="done", output=presented)
        case TaskFailed(error_type=error_type, message=message):
            return InvokeResponse(
                task_id=task_id, status="error", error=InvokeError(type=error_type, message=message)
            )
        case TaskCancelled(reason=reason):
            return InvokeResponse(
                task_id=task_id,
                status="cancelled",
                error=InvokeError(type="Cancelled", message=reason),
            )
        case TaskTimedOut(state=state):
            return InvokeResponse(
                task_id=task_id,
                status="timeout",
                error=InvokeError(
                    type="Timeout",
                    message=f"no result within {timeout_s:g}s (task is {state.lower()}); "
                    f"follow it at /api/tasks/{task_id}",
                ),
            )
    raise AssertionError(f"unhandled outcome {outcome!r}")


async def invoke(
    services: Services,
    user: User,
    name: str,
    arguments: dict[str, Any],
    timeout_s: float,
    idempotency_key: str | None = None,
) -> InvokeResponse:
    """Send and wait. The stream is subscribed before sending, and the hub's wake for it rides
    in the send's round trip. A repeated ``idempotency_key`` waits on the first request's task
    instead of sending."""
    task_id = str(uuid.uuid4())
    key = task_events_key(task_id)
    carried = services.sender.carries_wakes
    async with services.hub.subscribe(key, wake_with_send=carried) as subscription:
        tool, sent, holder = await start(
            services, user, name, arguments,
            task_id=task_id, idempotency_key=idempotency_key, watch=False,
        )  # fmt: skip
        if sent == task_id:  # this request sent it: it records the run too (no tracker)
            run = WaitedRun(task_id, owner_id=user.id)
            try:
                return await wait(
                    services, user, tool, task_id, timeout_s,
                    on_event=run.note, subscription=subscription, holder=holder,
                )  # fmt: skip
            finally:
                run.settle(services, task_runs.watch_timeout_s(services, tool.task))
    return await wait(services, user, tool, sent, timeout_s)
