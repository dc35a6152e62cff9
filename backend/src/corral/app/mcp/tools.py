"""``tools/list`` and ``tools/call``: every tool of ``GET /api/tools``, sent and awaited through
the same service as ``POST /api/tools/{name}/invoke``.

A call counts against the caller's ``tools`` rate limit, validates and sends through
``corral.app.tools.service.start`` (same checks, ``task_runs`` row, routing), waits with
``long_poll_celery_result`` (``service.wait``) and turns the task's ``progress`` events into
``notifications/progress`` when the client sent a progress token. If the client cancels the
request (``notifications/cancelled``, or it closes the MCP session) the task is cancelled like
``POST /api/tasks/{id}/cancel``: a ``cancelled`` event, then revoke. An app shutting down
leaves tasks running (their results stay readable at ``corral://tasks/{id}/result``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import anyio
import mcp_types as types
from fastapi import HTTPException
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from corral.app.celery_client import BrokerUnavailable, QueueNotAllowed
from corral.app.mcp.auth import Caller, caller_of
from corral.app.mcp.content import tool_result
from corral.app.mcp.sessions import McpResearchSessions, wants_session
from corral.app.problems import ProblemError
from corral.app.task_runs import service as task_runs
from corral.app.tools import catalog  # noqa: F401  (registers every tool)
from corral.app.tools import service as tools_service
from corral.app.tools.registry import TOOLS, ToolCall
from corral.app.tools.schemas import InvokeResponse
from corral.task_schemas import SESSION_RUN, ProgressEvent, TaskEvent, task_events_key

log = logging.getLogger(__name__)

CANCEL_REASON = "cancelled by the MCP client"
SESSION_HEADER = "mcp-session-id"


def list_tools() -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[
            types.Tool(name=t.name, description=t.description, input_schema=t.parameters_schema())
            for t in TOOLS.values()
        ]
    )


def _error(kind: str, message: str, **extra: Any) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=f"{kind}: {message}")],
        structured_content={"status": "error", "error": {"type": kind, "message": message}} | extra,
        is_error=True,
    )


class _Progress:
    """Forwards a task's progress events as strictly increasing MCP progress notifications."""

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self.ctx = ctx
        self.last: float | None = None

    async def __call__(self, entry_id: str, event: TaskEvent) -> None:
        if not isinstance(event, ProgressEvent):
            return
        value = event.current if event.current is not None else (self.last or 0.0) + 1
        if self.last is not None and value <= self.last:
            return
        self.last = value
        with contextlib.suppress(Exception):  # a client that went away must not fail the call
            await self.ctx.session.report_progress(value, event.total, event.message or None)


class ToolCalls:
    def __init__(self, research: McpResearchSessions, closing: anyio.Event) -> None:
        self.research = research
        self.closing = closing

    async def call(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = caller_of(ctx.request)
        services, user = caller.services, caller.user
        if params.name not in TOOLS:
            raise MCPError(
                types.INVALID_PARAMS,
                f"unknown tool {params.name!r}; available: {', '.join(sorted(TOOLS))}",
            )
        limits = services.rate_limits
        if limits.enabled:
            state = await limits.hit("tools", user.id)
            if not state.allowed:
                return _error(
                    "rate-limited",
                    f"rate limit for tools reached ({state.limit}); retry in "
                    f"{state.retry_after_s}s",
                    retry_after_s=state.retry_after_s,
                )
        arguments = dict(params.arguments or {})
        mcp_session = _mcp_session_id(ctx)
        try:
            if params.name == "run_python" and mcp_session and wants_session(params.meta):
                return await self._in_session(ctx, caller, mcp_session, arguments)
            task_id = str(uuid.uuid4())
            async with services.hub.subscribe(task_events_key(task_id)) as subscription:
                tool, sent, _ = await tools_service.start(
                    services, user, params.name, arguments, task_id=task_id
                )
                response = await self._wait(ctx, caller, tool, sent, subscription)
        except tools_service.BadArguments as exc:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                for e in exc.errors[:5]
            )
            return _error("invalid-arguments", f"{exc}: {where}", errors=_jsonable(exc.errors))
        except ProblemError as exc:
            return _error(exc.kind, exc.detail)
        except HTTPException as exc:
            return _error(f"http-{exc.status_code}", str(exc.detail))
        except QueueNotAllowed as exc:
            return _error("queue-not-allowed", str(exc))
        except BrokerUnavailable as exc:
            return _error("broker-unavailable", str(exc), retry_after_s=5)
        return await tool_result(services, response)

    async def _in_session(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Caller,
        mcp_session: str,
        arguments: dict[str, Any],
    ) -> types.CallToolResult:
        """``run_python`` in the MCP session's research session: the tool's own checks build
        the input (files), then ``session.run`` goes to the session's holder."""
        from corral.app.sessions import service as sessions
        from corral.task_schemas import PythonRunInput

        services, user = caller.services, caller.user
        tool = tools_service.get_tool("run_python")
        try:
            args = tool.arguments.model_validate(arguments)
        except ValidationError as exc:
            raise tools_service.BadArguments(
                tool.name, _jsonable(exc.errors(include_url=False, include_context=False))
            ) from exc
        built, _ = await tool.build_input(args, ToolCall(user=user, services=services))
        assert isinstance(built, PythonRunInput)
        connection = getattr(ctx.session, "_connection", None)  # per-connection cleanup
        async with self.research.hold(services, user, mcp_session, connection) as row:
            task_input, route = await sessions.prepare_call(
                services,
                user,
                row,
                str(arguments["code"]),
                formats=built.figure_formats,
                extra_files=built.input_files,
            )
            task_id = str(uuid.uuid4())
            async with services.hub.subscribe(task_events_key(task_id)) as subscription:
                await task_runs.submit(
                    services,
                    SESSION_RUN,
                    task_input,
                    owner_id=user.id,
                    tool=tool.name,
                    task_id=task_id,
                    route=route,
                )
                response = await self._wait(ctx, caller, tool, task_id, subscription)
        return await tool_result(services, response)

    async def _wait(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Caller,
        tool: Any,
        task_id: str,
        subscription: Any,
    ) -> InvokeResponse:
        services, user = caller.services, caller.user
        try:
            return await tools_service.wait(
                services,
                user,
                tool,
                task_id,
                services.settings.max_invoke_timeout_s,
                on_event=_Progress(ctx),
                subscription=subscription,
            )
        except anyio.get_cancelled_exc_class():
            if not self.closing.is_set():
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await _cancel(services, user.id, task_id)
            raise


async def _cancel(services: Any, user_id: str, task_id: str) -> None:
    try:
        await task_runs.cancel(services, task_id, user_id, reason=CANCEL_REASON)
    except task_runs.TaskAlreadyFinished:
        pass
    except Exception:
        log.warning("cancelling task %s for the MCP client failed", task_id, exc_info=True)


def _mcp_session_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    value = headers.get(SESSION_HEADER) if headers is not None else None
    return str(value) if value else None


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors or []:
        item = dict(e)
        out.append(
            {
                "loc": [p if isinstance(p, int) else str(p) for p in item.get("loc", ())],
                "msg": str(item.get("msg", "")),
                "type": str(item.get("type", "")),
            }
        )
    return out
