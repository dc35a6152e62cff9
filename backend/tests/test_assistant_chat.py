"""The assistant end to end: SSE chat turns in which a scripted model calls real worker tools.

Real parts throughout: the app over HTTP, SQLite and PostgreSQL, Redis, Celery workers (the
sandboxed python_q one included), the object store. Only the model provider is a test double
(the OpenAI-protocol server in tests/support/fake_openai.py), scripted per test.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.support.assistant import (
    AssistantApp,
    Sse,
    assistant_app,
    chat,
    follow,
    kinds,
    new_user,
    send,
    text_of,
)
from tests.support.db import PostgresServer, new_sqlite_database
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply, ToolCall
from tests.test_python_tool import PLOT_CODE, png_size

pytestmark = pytest.mark.usefixtures("workers")

AGENT = "fake-primary"  # the provider model behind the default model `primary`
CHAT_ENV = {
    "CORRAL_CHAT__TOOLS": json.dumps(
        ["run_python", "circuit_population_analysis", "llm_generate", "echo", "fail"]
    ),
    "CORRAL_CHAT__MAX_TOOL_ROUNDS": "3",
    "CORRAL_CHAT__TOOL_TIMEOUT_S": "60",
    "CORRAL_RATE_LIMITS__CHAT": "1000/minute",
}
LAYER_SQL = "SELECT layer, count(*) AS neurons FROM neurons GROUP BY layer ORDER BY layer"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest,
    stack_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AssistantApp]:
    if request.param == "sqlite":
        url = new_sqlite_database(tmp_path_factory.mktemp("chat-db"))
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database()
    with assistant_app(stack_env, url, request.param, **CHAT_ENV) as live:
        yield live


def is_agent(req: RecordedRequest) -> bool:
    return "tools" in req.body


def has_tool_answers(req: RecordedRequest) -> bool:
    return any(m.get("role") == "tool" for m in req.messages)


def tool_answers(req: RecordedRequest) -> list[dict[str, Any]]:
    return [m for m in req.messages if m.get("role") == "tool"]


async def new_thread(client: httpx.AsyncClient, **body: Any) -> str:
    resp = await client.post("/api/threads", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def first(events: list[Sse], kind: str) -> Sse:
    return next(e for e in events if e.event == kind)


# -- plain text --------------------------------------------------------------------------------


async def test_text_turn_streams_deltas_and_is_saved(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script(
        AGENT,
        Reply(
            text="Hello there, how can I help?",
            chunk_size=3,
            chunk_delay_s=0.08,  # slower than the 50 ms text batching: one event per chunk
            prompt_tokens=42,
            completion_tokens=7,
        ),
    )
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        events = await chat(client, thread_id, "hi!")
        assert kinds(events)[0] == "turn_started"
        assert kinds(events)[-1] == "done"
        assert kinds(events).count("text") >= 5  # streamed, not one blob
        assert text_of(events) == "Hello there, how can I help?"
        usage = first(events, "usage").data
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (42, 7)
        page = (await client.get(f"/api/threads/{thread_id}/messages")).json()
        assert [(m["role"], m["content"]) for m in page["items"]] == [
            ("user", "hi!"),
            ("assistant", "Hello there, how can I help?"),
        ]
        assert page["items"][1]["id"] == first(events, "done").data["message_id"]
        thread = (await client.get(f"/api/threads/{thread_id}")).json()
        assert thread["title"] == "hi!"  # named after the first message
    sent = fake_llm.requests(AGENT)[0]
    assert sent.messages[0]["role"] == "system" and sent.messages[-1] == {
        "role": "user",
        "content": "hi!",
    }
    assert {t["function"]["name"] for t in sent.body["tools"]} >= {"run_python", "echo"}
    assert sent.body["stream"] is True


# -- tools -------------------------------------------------------------------------------------


async def test_run_python_and_circuit_analysis_run_concurrently(
    app: AssistantApp, fake_llm: FakeOpenAI, live_app: Any
) -> None:
    """Both calls start before either result; the figure URL serves the PNG; all is saved."""
    calls = [
        ToolCall("run_python", {"code": PLOT_CODE}),
        ToolCall(
            "circuit_population_analysis",
            {"dataset_id": "sample-cortical-column", "question": "How many neurons per layer?"},
        ),
    ]

    def respond(req: RecordedRequest) -> Reply:
        if not is_agent(req):  # the circuit worker asking for SQL
            return Reply.json(
                {"sql": LAYER_SQL, "explanation": "counts per layer"},
                prompt_tokens=300,
                completion_tokens=30,
            )
        if not has_tool_answers(req):
            return Reply(
                text="Let me look.", tool_calls=calls, prompt_tokens=100, completion_tokens=20
            )
        return Reply(
            text="Done: a plot and the layer counts.", prompt_tokens=500, completion_tokens=12
        )

    fake_llm.respond_with(respond)
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        events = await chat(client, thread_id, "Plot something and count neurons per layer")
        order = kinds(events)
        assert order[-1] == "done", [(e.event, e.data) for e in events if e.event == "error"]
        started = [i for i, k in enumerate(order) if k == "tool_call_started"]
        results = [i for i, k in enumerate(order) if k == "tool_result"]
        assert len(started) == 2 and len(results) == 2
        assert max(started) < min(results)
        by_name = {e.data["name"]: e.data for e in events if e.event == "tool_result"}
        assert all(r["status"] == "done" for r in by_name.values()), by_name
        figure = by_name["run_python"]["output"]["figures"][0]
        async with httpx.AsyncClient(timeout=10) as browser:  # no auth: the URL is the grant
            got = await browser.get(urljoin(app.url + "/", figure["url"]))
        assert got.status_code == 200 and png_size(got.content) == (400, 300)
        circuit = by_name["circuit_population_analysis"]["output"]
        assert circuit["sql"] == LAYER_SQL and circuit["error"] is None
        assert [row[0] for row in circuit["rows"]] == ["L1", "L2", "L3", "L4", "L5", "L6"]
        assert sum(row[1] for row in circuit["rows"]) == 50_000
        assert text_of(events) == "Let me look.Done: a plot and the layer counts."

        page = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
        assert [m["role"] for m in page] == ["user", "assistant", "tool", "tool", "assistant"]
        saved_calls = page[1]["tool_calls"]
        assert [c["name"] for c in saved_calls] == ["run_python", "circuit_population_analysis"]
        assert all(c["status"] == "done" and c["task_id"] for c in saved_calls)
        tasks = (await client.get("/api/tasks", params={"thread_id": thread_id})).json()
        assert {t["task_id"] for t in tasks} == {c["task_id"] for c in saved_calls}
        assert all(t["state"] == "done" for t in tasks)
        # A card read back from history still names its trace: the one its task events carry.
        for call in saved_calls:
            assert re.fullmatch(r"[0-9a-f]{32}", call["trace_id"] or ""), call
            detail = (await client.get(f"/api/tasks/{call['task_id']}")).json()
            assert detail["trace_id"] == call["trace_id"]
            carried = {e["data"].get("trace_id") for e in detail["events"]} - {None}
            assert carried == {call["trace_id"]}, carried

        async def usage_rows() -> list[dict[str, Any]] | None:
            body = (await client.get("/api/usage", params={"thread_id": thread_id})).json()
            return body["rows"] if body["totals"]["calls"] == 3 else None

        rows = await wait_for(usage_rows, 10, "agent and circuit_q token usage")
        assert rows[0]["model"] == "primary"
        assert rows[0]["prompt_tokens"] == 100 + 500 + 300
        assert rows[0]["completion_tokens"] == 20 + 12 + 30
        artifacts = (await client.get("/api/artifacts", params={"thread_id": thread_id})).json()
        assert [a["key"] for a in artifacts] == [figure["key"]]


async def test_each_result_streams_as_soon_as_it_arrives(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    calls = [
        ToolCall("echo", {"payload": "slow", "sleep_s": 4, "steps": 4, "queue": "llm_q"}),
        ToolCall("echo", {"payload": "fast", "queue": "circuit_q"}),
    ]
    fake_llm.respond_with(
        lambda req: Reply(text="ok") if has_tool_answers(req) else Reply(tool_calls=calls)
    )
    async with app.client(new_user()) as client:
        events = await chat(client, await new_thread(client), "go")
    results = [e for e in events if e.event == "tool_result"]
    assert [r.data["output"]["payload"] for r in results] == ["fast", "slow"]
    assert results[1].at - results[0].at > 2.0  # fast was sent long before slow finished
    progress = [e for e in events if e.event == "tool_progress"]
    assert [p.data["current"] for p in progress] == [1, 2, 3, 4]
    assert all(p.data["call_id"] == calls[0].id for p in progress)


async def test_tool_errors_go_back_to_the_model(app: AssistantApp, fake_llm: FakeOpenAI) -> None:
    calls = [
        ToolCall("fail", {"message": "the sensor is unplugged", "queue": "llm_q"}),
        ToolCall("echo", '{"payload": '),  # not JSON
        ToolCall("run_python", {"code": "x = 1", "bogus": True}),  # fails validation
        ToolCall("rm_rf", {}),  # not offered
        ToolCall("circuit_population_analysis", {"dataset_id": "nope", "question": "?"}),
    ]
    fake_llm.respond_with(
        lambda req: (
            Reply(text="Sorry, that failed.") if has_tool_answers(req) else Reply(tool_calls=calls)
        )
    )
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        events = await chat(client, thread_id, "try things")
        assert kinds(events)[-1] == "done"
        results = {e.data["call_id"]: e.data for e in events if e.event == "tool_result"}
        assert {r["status"] for r in results.values()} == {"error"}
        assert results[calls[0].id]["error"] == {
            "type": "DeliberateFailure",
            "message": "the sensor is unplugged",
        }
        assert results[calls[1].id]["error"]["type"] == "InvalidArguments"
        assert results[calls[1].id]["task_id"] is None  # nothing was queued
        assert "bogus" in results[calls[2].id]["error"]["message"]
        assert results[calls[3].id]["error"]["type"] == "UnknownTool"
        assert results[calls[4].id]["error"]["type"] == "NotFound"  # the tool's own check
        saved = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
        assert [c["status"] for c in saved[1]["tool_calls"]] == ["error"] * 5
    answers = tool_answers(fake_llm.requests(AGENT)[-1])
    assert [a["tool_call_id"] for a in sorted(answers, key=lambda a: a["tool_call_id"])] == sorted(
        c.id for c in calls
    )
    by_id = {a["tool_call_id"]: json.loads(a["content"]) for a in answers}
    assert by_id[calls[0].id]["error"]["message"] == "the sensor is unplugged"
    assert "not valid JSON" in by_id[calls[1].id]["error"]["message"]


async def test_tool_rounds_are_capped_by_the_setting(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(
        lambda req: (
            Reply(text="Enough.")
            if req.body.get("tool_choice") == "none"
            else Reply(tool_calls=[ToolCall("echo", {"payload": "again", "queue": "circuit_q"})])
        )
    )
    async with app.client(new_user()) as client:
        events = await chat(client, await new_thread(client), "loop forever")
    assert kinds(events).count("tool_call_started") == 3  # CORRAL_CHAT__MAX_TOOL_ROUNDS
    assert first(events, "done").data["finish_reason"] == "stop"
    agent_calls = [r for r in fake_llm.requests(AGENT) if is_agent(r)]
    assert len(agent_calls) == 4
    assert [r.body.get("tool_choice") for r in agent_calls] == [None, None, None, "none"]
    assert len(first(events, "done").data["usage"]) and text_of(events) == "Enough."


async def test_stop_cancels_running_tools_and_keeps_the_partial_turn(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    slow = ToolCall("echo", {"payload": 1, "sleep_s": 30, "steps": 30, "queue": "llm_q"})
    fake_llm.script(AGENT, Reply(text="Starting a long job.", tool_calls=[slow]))
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        turn = await send(client, thread_id, "long job")
        events = await follow(
            client, turn["turn_id"], stop_when=lambda ev: ev[-1].event == "tool_progress"
        )
        task_id = first(events, "tool_call_started").data["task_id"]
        stopped = await client.post(f"/api/turns/{turn['turn_id']}/cancel")
        assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
        rest = await follow(client, turn["turn_id"], last_event_id=events[-1].id)
        assert kinds(rest)[-1] == "cancelled"
        again = await client.post(f"/api/turns/{turn['turn_id']}/cancel")
        assert again.status_code == 409
        assert again.json()["type"] == "/errors/turn-finished"

        async def cancelled() -> dict[str, Any] | None:
            body = (await client.get(f"/api/tasks/{task_id}")).json()
            return body if body["state"] == "cancelled" else None

        task = await wait_for(cancelled, 10, "the task to be cancelled")
        assert task["events"][-1]["type"] == "cancelled"
        saved = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
        assert [m["role"] for m in saved] == ["user", "assistant", "tool"]
        assert saved[1]["content"] == "Starting a long job."
        assert saved[1]["tool_calls"][0]["status"] == "cancelled"
        assert json.loads(saved[2]["content"])["error"]["type"] == "Cancelled"
        await asyncio.sleep(1.5)  # revoked: no more progress, never done
        after = (await client.get(f"/api/tasks/{task_id}")).json()
        assert after["state"] == "cancelled"
        assert len(after["events"]) == len(task["events"])
        # The thread is free again and its history stays valid for the model.
        fake_llm.script(AGENT, Reply(text="Fine."))
        again_events = await chat(client, thread_id, "never mind")
        assert text_of(again_events) == "Fine."
    history = fake_llm.requests(AGENT)[-1].messages
    assert [m["role"] for m in history] == ["system", "user", "assistant", "tool", "user"]


async def test_closing_the_stream_does_not_stop_the_turn_and_stop_keeps_partial_text(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    text = "one two three four five six seven eight nine ten " * 4
    fake_llm.script(
        AGENT,
        Reply(text="All of it.", chunk_size=4, chunk_delay_s=0.02),
        Reply(text=text, chunk_size=4, chunk_delay_s=0.05),
    )
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        # The SSE form of POST, closed after the first text: the turn still completes.
        events = await chat(client, thread_id, "say it", stop_when=lambda ev: "text" in kinds(ev))
        turn_id = first(events, "turn_started").data["turn_id"]
        rest = await follow(client, turn_id, last_event_id=events[-1].id)
        assert kinds(rest)[-1] == "done"
        assert text_of(events) + text_of(rest) == "All of it."
        # Stop mid-text: what was said is saved as a cancelled answer.
        turn = await send(client, thread_id, "count")
        seen = await follow(
            client, turn["turn_id"], stop_when=lambda ev: kinds(ev).count("text") >= 5
        )
        stopped = await client.post(f"/api/turns/{turn['turn_id']}/cancel")
        assert stopped.json()["status"] == "cancelled"
        items = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
    saved = items[-1]
    assert saved["status"] == "cancelled" and saved["role"] == "assistant"
    assert saved["content"].startswith(text_of(seen)) and len(saved["content"]) < len(text)


async def test_model_failure_ends_the_turn_with_an_error_event(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script(AGENT, Reply.fail(400, "context too long"))
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        events = await chat(client, thread_id, "hello")
        error = first(events, "error").data
        assert error["type"] == "ModelError" and "context too long" in error["message"]
        assert "done" not in kinds(events)
        saved = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
        assert [m["role"] for m in saved] == ["user"]


async def test_one_turn_at_a_time_per_thread(app: AssistantApp, fake_llm: FakeOpenAI) -> None:
    fake_llm.script(AGENT, Reply(text="slow answer", delay_s=1.5))
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        first_turn = asyncio.create_task(chat(client, thread_id, "one"))
        await asyncio.sleep(0.5)
        busy = await client.post(f"/api/threads/{thread_id}/messages", json={"content": "two"})
        assert busy.status_code == 409 and "already" in busy.json()["detail"]
        assert busy.json()["type"] == "/errors/turn-in-progress"
        running = (await client.get(f"/api/threads/{thread_id}")).json()["running_turn_id"]
        assert running and busy.json()["running_turn_id"] == running
        assert text_of(await first_turn) == "slow answer"
        bad = await client.post(f"/api/threads/{thread_id}/messages", json={"content": ""})
        assert bad.status_code == 422


async def test_llm_tool_tokens_are_accounted_to_the_thread_and_task(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    call = ToolCall("llm_generate", {"prompt": "Summarise: cats sleep a lot.", "model": "backup"})
    fake_llm.script("fake-backup", Reply(text="Cats nap.", prompt_tokens=11, completion_tokens=3))
    fake_llm.script(
        AGENT,
        Reply(tool_calls=[call], prompt_tokens=50, completion_tokens=5),
        Reply(text="They nap.", prompt_tokens=60, completion_tokens=4),
    )
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        events = await chat(client, thread_id, "summarise")
        task_id = first(events, "tool_call_started").data["task_id"]
        assert first(events, "tool_result").data["output"]["response"] == "Cats nap."

        async def both_models() -> list[dict[str, Any]] | None:
            rows = (await client.get("/api/usage", params={"days": 1})).json()["rows"]
            return rows if {r["model"] for r in rows} == {"primary", "backup"} else None

        rows = {r["model"]: r for r in await wait_for(both_models, 10, "usage of both models")}
        assert (rows["primary"]["calls"], rows["primary"]["prompt_tokens"]) == (2, 110)
        assert (rows["backup"]["calls"], rows["backup"]["total_tokens"]) == (1, 14)
        task = (await client.get(f"/api/tasks/{task_id}")).json()
        assert task["thread_id"] == thread_id and task["tool"] == "llm_generate"


async def test_deleting_a_thread_removes_its_artifacts_from_the_store(
    app: AssistantApp, fake_llm: FakeOpenAI, stack_env: dict[str, str]
) -> None:
    fake_llm.respond_with(
        lambda req: (
            Reply(text="Plotted.")
            if has_tool_answers(req)
            else Reply(tool_calls=[ToolCall("run_python", {"code": PLOT_CODE})])
        )
    )
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        events = await chat(client, thread_id, "plot")
        key = first(events, "tool_result").data["output"]["figures"][0]["key"]
        stored = Path(stack_env["CORRAL_STORAGE__LOCAL_DIR"]) / "data" / key

        async def recorded() -> list[dict[str, Any]] | None:
            return (await client.get("/api/artifacts", params={"thread_id": thread_id})).json()

        (artifact,) = await wait_for(recorded, 10, "the artifact row")
        assert artifact["key"] == key and stored.is_file()
        assert (await client.delete(f"/api/threads/{thread_id}")).status_code == 204
        assert not stored.exists()
        assert (await client.get(f"/api/artifacts/{artifact['id']}")).status_code == 404
        assert (await client.get(f"/api/threads/{thread_id}")).status_code == 404
        assert (await client.get(f"/api/storage/{key}")).status_code == 404


async def test_a_tool_past_its_timeout_is_cancelled_and_reported(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI
) -> None:
    url = new_sqlite_database(tmp_path_factory.mktemp("timeout-db"))
    env = CHAT_ENV | {"CORRAL_CHAT__TOOL_TIMEOUT_S": "1.5"}
    slow = ToolCall("echo", {"sleep_s": 20, "steps": 20, "queue": "circuit_q"})
    fake_llm.script(AGENT, Reply(tool_calls=[slow]), Reply(text="It was too slow."))
    with assistant_app(stack_env, url, "sqlite", **env) as app:
        async with app.client(new_user()) as client:
            events = await chat(client, await new_thread(client), "slow please")
            result = first(events, "tool_result").data
            assert result["status"] == "timeout" and "1.5s" in result["error"]["message"]
            task = (await client.get(f"/api/tasks/{result['task_id']}")).json()
            assert task["state"] == "cancelled" and task["error_message"] == "timed out"
            assert text_of(events) == "It was too slow."
    (answer,) = tool_answers(fake_llm.requests(AGENT)[-1])
    assert json.loads(answer["content"])["error"]["type"] == "Timeout"
