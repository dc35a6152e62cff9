"""The MCP server at /mcp, driven by the official ``mcp`` client over streamable HTTP against the
real app and workers: tools, a PNG from run_python, progress, cancellation, state per MCP
session, ownership between users, and refused tokens."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from corral.app.auth.service import issue_dev_token
from corral.app.settings import AuthSettings
from tests.conftest import DEV_SECRET, LiveApp
from tests.support.assistant import assistant_app, dev_token, new_user
from tests.support.circuit import uploaded_id
from tests.support.db import new_sqlite_database

PLOT = """
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([1, 3, 2])
total = 40 + 2
print("plotted")
"""


@asynccontextmanager
async def mcp_client(live_app: LiveApp, token: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token or live_app.token}"}
    timeout = httpx2.Timeout(30, read=120)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(f"{live_app.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def other_user_token() -> str:
    user = "mcp-other-" + uuid.uuid4().hex[:8]
    return issue_dev_token(AuthSettings(mode="dev", dev_secret=DEV_SECRET, dev_user_id=user))


async def test_every_api_tool_is_an_mcp_tool_with_its_schema(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    http_tools = {t["name"]: t for t in (await api.get("/api/tools")).json()}
    async with mcp_client(live_app) as session:
        listed = (await session.list_tools()).tools
    assert {t.name for t in listed} == set(http_tools)
    for tool in listed:
        assert tool.input_schema == http_tools[tool.name]["parameters"], tool.name
        assert tool.description
    assert "/mcp" not in (await api.get("/openapi.json")).json()["paths"]


async def test_run_python_returns_the_png_and_a_resource_link(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    async with mcp_client(live_app) as session:
        result = await session.call_tool("run_python", {"code": PLOT})
        assert not result.is_error, text_of(result)
        images = [c for c in result.content if isinstance(c, types.ImageContent)]
        links = [c for c in result.content if isinstance(c, types.ResourceLink)]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        png = base64.b64decode(images[0].data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert "plotted" in text_of(result)
        assert len(links) == 1 and links[0].mime_type == "image/png"
        # The link reads back as the same PNG.
        read = await session.read_resource(str(links[0].uri))
        blob = read.contents[0]
        assert isinstance(blob, types.BlobResourceContents)
        assert base64.b64decode(blob.blob) == png
        # State persists within the MCP session (its research session) ...
        again = await session.call_tool("run_python", {"code": "total + 1"})
        assert not again.is_error, text_of(again)
        output = (again.structured_content or {})["output"]
        assert output["last_expr"] == "43"
        session_id = output["session_id"]
        assert (await api.get(f"/api/sessions/{session_id}")).json()["state"] != "closed"
    # Ending the MCP session closes its research session ...
    with anyio.fail_after(5):
        while (await api.get(f"/api/sessions/{session_id}")).json()["state"] != "closed":
            await anyio.sleep(0.05)
    # ... and state does not leak into another MCP session.
    async with mcp_client(live_app) as session:
        fresh = await session.call_tool("run_python", {"code": "total"})
        assert "NameError" in text_of(fresh)


async def test_slow_echo_sends_progress_notifications(live_app: LiveApp) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with mcp_client(live_app) as session:
        result = await session.call_tool(
            "echo",
            {"payload": {"hi": 1}, "sleep_s": 0.8, "steps": 4},
            progress_callback=on_progress,
        )
    assert not result.is_error, text_of(result)
    assert (result.structured_content or {})["output"]["payload"] == {"hi": 1}
    assert [p for p, _, _ in seen] == [1, 2, 3, 4]
    assert all(total == 4 for _, total, _ in seen)
    assert seen[-1][2] == "step 4 of 4"


async def test_cancelling_a_call_cancels_its_task(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with mcp_client(live_app) as session:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await session.call_tool(
                    "echo", {"sleep_s": 30, "steps": 60}, progress_callback=on_progress
                )

            tg.start_soon(call)
            with anyio.fail_after(15):
                await started.wait()
            runs = (await api.get("/api/tasks", params={"state": "running"})).json()
            task_id = next(r["task_id"] for r in runs if r["tool"] == "echo")
            cancelled_at = time.monotonic()
            tg.cancel_scope.cancel()  # the client sends notifications/cancelled
        state = None
        while time.monotonic() - cancelled_at < 1.0:
            detail = (await api.get(f"/api/tasks/{task_id}")).json()
            state = detail["state"]
            if state == "cancelled":
                break
            await anyio.sleep(0.05)
        assert state == "cancelled", detail
        assert detail["error_message"] == "cancelled by the MCP client"
        assert "cancelled" in [e["type"] for e in detail["events"]]
        # The session is still usable afterwards.
        ok = await session.call_tool("echo", {"payload": "after"})
        assert (ok.structured_content or {})["output"]["payload"] == "after"


async def test_another_user_cannot_read_the_first_users_results(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    async with mcp_client(live_app) as session:
        result = await session.call_tool("run_python", {"code": PLOT})
        summary = result.structured_content or {}
        task_id = summary["task_id"]
        link = next(c for c in result.content if isinstance(c, types.ResourceLink))
        mine = await session.read_resource(f"corral://tasks/{task_id}/result")
        assert "plotted" in mine.contents[0].text  # type: ignore[union-attr]
        own_resources = {str(r.uri) for r in (await session.list_resources()).resources}
        assert f"corral://tasks/{task_id}/result" in own_resources
    other = other_user_token()
    async with httpx.AsyncClient(base_url=live_app.url, timeout=10) as http:
        created = await http.post(
            "/api/api-keys", json={"name": "mcp"}, headers={"Authorization": f"Bearer {other}"}
        )
        assert created.status_code == 201, created.text
    other_key = created.json()["key"]  # the other user signs in to MCP with an API key
    async with mcp_client(live_app, other_key) as session:
        for uri in (f"corral://tasks/{task_id}/result", str(link.uri)):
            with pytest.raises(MCPError, match="not found"):
                await session.read_resource(uri)
        listed = {str(r.uri) for r in (await session.list_resources()).resources}
        assert not any(task_id in uri for uri in listed)
    async with httpx.AsyncClient(base_url=live_app.url, timeout=10) as http:
        resp = await http.get(
            f"/api/tools/results/{task_id}", headers={"Authorization": f"Bearer {other}"}
        )
        assert resp.status_code == 404


async def test_another_user_cannot_use_the_first_users_mcp_session(live_app: LiveApp) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=live_app.url, timeout=10) as http:
        resp = await http.post("/mcp", json=init, headers={**live_app.headers, **accept})
        assert resp.status_code == 200, resp.text
        sid = resp.headers["mcp-session-id"]
        hijack = await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers={
                "Authorization": f"Bearer {other_user_token()}",
                "mcp-session-id": sid,
                "mcp-protocol-version": "2025-11-25",
                **accept,
            },
        )
        assert hijack.status_code == 404


async def test_invalid_token_is_refused(live_app: LiveApp) -> None:
    async with httpx.AsyncClient(base_url=live_app.url, timeout=10) as http:
        for headers in ({"Authorization": "Bearer not-a-token"}, {}):
            resp = await http.post(
                "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers
            )
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert resp.json()["type"] == "/errors/unauthorized"
    # The official client cannot even initialize (the SDK reports the 401 as an error reply).
    with pytest.raises(BaseException) as caught:
        async with mcp_client(live_app, "not-a-token"):
            pass
    assert caught.group_contains(MCPError) or isinstance(caught.value, MCPError)


async def test_bad_arguments_are_a_tool_error_and_unknown_tools_a_protocol_error(
    live_app: LiveApp,
) -> None:
    async with mcp_client(live_app) as session:
        bad = await session.call_tool("echo", {"steps": 0})
        assert bad.is_error and "invalid-arguments" in text_of(bad)
        with pytest.raises(MCPError, match="unknown tool"):
            await session.call_tool("no_such_tool", {})


async def test_a_large_table_comes_back_as_a_csv_resource(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    csv_rows = "\n".join(f"{i},{'L5' if i % 2 else 'L6'},{i * 0.5}" for i in range(50))
    dataset_id = await uploaded_id(api, f"id,layer,x\n{csv_rows}\n".encode(), "cells.csv")
    async with mcp_client(live_app) as session:
        result = await session.call_tool(
            "circuit_population_analysis",
            {"dataset_id": dataset_id, "question": "all", "sql": "SELECT id, layer FROM neurons"},
        )
        assert not result.is_error, text_of(result)
        output = (result.structured_content or {})["output"]
        assert output["row_count"] == 50 and len(output["rows"]) == 20
        link = next(c for c in result.content if isinstance(c, types.ResourceLink))
        assert link.mime_type == "text/csv"
        table = (await session.read_resource(str(link.uri))).contents[0]
        assert isinstance(table, types.TextResourceContents)
        lines = table.text.strip().splitlines()
        assert lines[0] == "id,layer" and len(lines) == 51


async def test_mcp_calls_count_against_the_same_rate_limit_as_http_invokes(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    database = new_sqlite_database(tmp_path_factory.mktemp("mcp-limits-db"))
    limits = {"CORRAL_RATE_LIMITS__TOOLS": "3/minute"}
    with assistant_app(stack_env, database, "sqlite", **limits) as app:
        user = new_user()
        live = LiveApp(app.url, dev_token(user, app.secret), app.server)
        async with mcp_client(live) as session:
            for i in range(2):
                ok = await session.call_tool("echo", {"payload": i})
                assert not ok.is_error, text_of(ok)
            async with app.client(user) as http:  # the third of 3: over HTTP
                resp = await http.post("/api/tools/echo/invoke", json={"arguments": {}})
                assert resp.status_code == 200
                assert resp.headers["X-RateLimit-Remaining"] == "0"
            refused = await session.call_tool("echo", {"payload": "one too many"})
            assert refused.is_error and "rate-limited" in text_of(refused)
            assert 1 <= (refused.structured_content or {})["retry_after_s"] <= 60


async def test_a_client_on_the_stateless_2026_wire_gets_the_same_tools(live_app: LiveApp) -> None:
    from mcp import Client

    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    headers = {"Authorization": f"Bearer {live_app.token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(f"{live_app.url}/mcp", http_client=http)) as client,
    ):
        assert client.session.protocol_version not in (None, "2025-11-25")
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "run_python"} <= names
        echo = await client.call_tool(
            "echo", {"payload": "modern", "sleep_s": 0.3, "steps": 3}, progress_callback=on_progress
        )
        assert (echo.structured_content or {})["output"]["payload"] == "modern"
        assert seen == [1, 2, 3]
        plot = await client.call_tool("run_python", {"code": PLOT})
        assert any(isinstance(c, types.ImageContent) for c in plot.content), text_of(plot)
