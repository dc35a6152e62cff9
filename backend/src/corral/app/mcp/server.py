"""Corral's tools as an MCP server (official ``mcp`` SDK, streamable HTTP) at ``/mcp``.

``CorralMcp`` owns the low-level ``mcp.server.Server`` (tools, resources) and its
``StreamableHTTPSessionManager``. The app mounts ``endpoint`` as a plain ASGI route (not in
``/openapi.json``) and enters ``run()`` in its lifespan, after ``Services`` started and before
they close. Sessions live in this process (stateful streamable HTTP, ``Mcp-Session-Id``);
behind several app processes, route a session's requests to the same process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from corral.app.mcp import content
from corral.app.mcp.auth import authenticate, caller_of
from corral.app.mcp.sessions import McpResearchSessions
from corral.app.mcp.tools import ToolCalls, list_tools

INSTRUCTIONS = """Corral runs heavy tools on its workers, not in your process: sandboxed Python
with numpy, pandas, scipy, matplotlib (figures come back as PNG images), analyses of neuron
datasets, and language-model calls. run_python keeps its variables between calls of this MCP
session. Long calls report progress; cancelling a call stops its task. Large outputs are
resources (corral://tasks/{task_id}/...)."""


class CorralMcp:
    def __init__(self, *, session_idle_timeout_s: float = 30 * 60) -> None:
        self.closing = anyio.Event()
        self.research = McpResearchSessions()
        self.calls = ToolCalls(self.research, self.closing)
        self.server: Server[Any] = Server(
            "corral",
            version="0.1.0",
            title="Corral",
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self.calls.call,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
        )
        # Bearer auth guards every request, so no Host/Origin allow-list (deployments differ).
        self.manager = StreamableHTTPSessionManager(
            app=self.server, session_idle_timeout=session_idle_timeout_s
        )

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The session manager's task group; enter in the app's lifespan."""
        async with self.manager.run():
            try:
                yield
            finally:
                self.closing.set()  # handlers cancelled from here on leave their tasks running

    def route(self, path: str) -> Route:
        """The route to the endpoint: ASGI, outside the OpenAPI schema."""
        return Route(path, endpoint=_Endpoint(self.manager), include_in_schema=False)

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller_of(ctx.request)
        return list_tools()

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        caller = caller_of(ctx.request)
        return types.ListResourcesResult(
            resources=await content.recent_results(caller.services, caller.user)
        )

    async def _list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=content.TEMPLATES)

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        caller = caller_of(ctx.request)
        return await content.read_resource(caller.services, caller.user, str(params.uri))


class _Endpoint:
    """The ASGI app at ``/mcp`` (an object, so Starlette routes to it as ASGI, not as a
    request handler): authenticate, then the SDK's transport."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authed = await authenticate(scope, receive, send)
        if authed is not None:
            await self.manager.handle_request(authed, receive, send)
