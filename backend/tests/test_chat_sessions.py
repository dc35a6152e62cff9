"""The chat's ``run_python`` runs in the thread's research session: state persists from one
turn to the next, the session is made on first use and recorded (cells) in SQL, and another
thread gets its own. Real app, Redis, SQLite and python_q worker; the model is scripted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from corral.task_schemas.sessions import live_sessions_key
from tests.support.assistant import AssistantApp, Sse, assistant_app, follow, new_user, send
from tests.support.db import new_sqlite_database
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply, ToolCall
from tests.support.procs import wait_until

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


async def test_deleting_the_thread_closes_its_session_and_deletes_its_snapshot(
    app: AssistantApp, fake_llm: FakeOpenAI, stack_env: dict[str, str]
) -> None:
    """Before, the thread's rows cascaded away with the session's: its id answered 404 (as if
    it never existed), its kernel lived on in the worker and its snapshot stayed in the store."""
    async with app.client(new_user()) as client:
        thread_id = (await client.post("/api/threads", json={})).json()["id"]
        result = await turn(client, thread_id, fake_llm, "kept = list(range(10))")
        sid = result.data["output"]["session_id"]
        info = (await client.get(f"/api/sessions/{sid}")).json()
        assert info["state"] == "live" and info["has_snapshot"], info
        db_path = app.database_url.split(":///", 1)[1]
        with sqlite3.connect(db_path) as db:
            (key,) = db.execute("SELECT snapshot_key FROM research_sessions WHERE id = ?", (sid,))
        snapshot = Path(stack_env["CORRAL_STORAGE__LOCAL_DIR"]) / "data" / key[0]
        assert snapshot.exists()
        live = redis.Redis.from_url(stack_env["CORRAL_REDIS__URL"] + "/1")
        assert live.sismember(live_sessions_key(info["worker"]), sid)

        assert (await client.delete(f"/api/threads/{thread_id}")).status_code == 204

        gone = await client.get(f"/api/sessions/{sid}")
        assert gone.status_code == 410, gone.text
        assert gone.json()["type"].endswith("session-closed")
        assert (await client.delete(f"/api/sessions/{sid}")).status_code == 204
        ran = await client.post(f"/api/sessions/{sid}/run", json={"code": "kept"})
        assert ran.status_code == 409 and ran.json()["type"].endswith("session-closed"), ran.text
        assert not snapshot.exists()
        wait_until(lambda: not live.sismember(live_sessions_key(info["worker"]), sid), 30, "close")
        with sqlite3.connect(db_path) as db:
            row = db.execute(
                "SELECT thread_id, state, cells FROM research_sessions WHERE id = ?", (sid,)
            ).fetchone()
        assert row == (None, "closed", "[]")  # the thread's code is not kept
