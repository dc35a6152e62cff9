"""The chat's ``run_python`` runs in the thread's research session: state persists from one
turn to the next, the session is made on first use and recorded (cells) in SQL, and another
thread gets its own. Real app, Redis, SQLite and python_q worker; the model is scripted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.assistant import AssistantApp, Sse, assistant_app, follow, new_user, send
from tests.support.db import new_sqlite_database
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply, ToolCall

pytestmark = [pytest.mark.usefixtures("workers"), pytest.mark.timeout(300)]

TURN_ENV = {
    "CORRAL_CHAT__TOOLS": json.dumps(["run_python"]),
    "CORRAL_CHAT__TOOL_TIMEOUT_S": "120",
    "CORRAL_RATE_LIMITS__CHAT": "100000/minute",
}


@pytest.fixture(scope="module")
def app(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = new_sqlite_database(tmp_path_factory.mktemp("chat-sessions-db"))
    with assistant_app(stack_env, url, "sqlite", **TURN_ENV) as live:
        yield live


def python_then_answer(code: str) -> Callable[[RecordedRequest], Reply]:
    def respond(req: RecordedRequest) -> Reply:
        if req.messages and req.messages[-1].get("role") == "tool":
            return Reply(text="Done.")
        return Reply(text="Running.", tool_calls=[ToolCall("run_python", {"code": code})])

    return respond


async def turn(client: httpx.AsyncClient, thread_id: str, fake: FakeOpenAI, code: str) -> Sse:
    fake.respond_with(python_then_answer(code))
    started = await send(client, thread_id, f"run {code}")
    events = await follow(client, started["turn_id"], timeout=150)
    assert events[-1].event == "done", [(e.event, e.data) for e in events]
    return next(e for e in events if e.event == "tool_result")


async def test_run_python_in_a_thread_keeps_state_between_turns(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    async with app.client(new_user()) as client:
        thread_id = (await client.post("/api/threads", json={})).json()["id"]
        first = await turn(client, thread_id, fake_llm, "x = 41")
        assert first.data["status"] == "done", first.data
        sid = first.data["output"]["session_id"]
        second = await turn(client, thread_id, fake_llm, "x + 1")
        assert second.data["status"] == "done", second.data
        assert second.data["output"]["last_expr"] == "42"
        assert second.data["output"]["session_id"] == sid
        info = (await client.get(f"/api/sessions/{sid}")).json()
        assert info["thread_id"] == thread_id and info["calls"] == 2
        assert info["cells"] == 2  # the chat path records its cells too
        assert [v["name"] for v in info["variables"]] == ["x"]
        other = (await client.post("/api/threads", json={})).json()["id"]
        fresh = await turn(client, other, fake_llm, "'x' in globals()")
        assert fresh.data["output"]["last_expr"] == "False"
        assert fresh.data["output"]["session_id"] != sid
    # The model is told that state persists.
    tools = next(r for r in fake_llm.requests() if "tools" in r.body).body["tools"]
    described = next(t for t in tools if t["function"]["name"] == "run_python")
    assert "state persists" in described["function"]["description"]
