"""Durable chat turns: a turn belongs to no HTTP connection and survives its app process.

Real parts throughout: app servers (in-process and as separate OS processes that get
SIGKILLed), Redis, SQLite, Celery workers; only the model is the scripted OpenAI-protocol
server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.app_process import AppProcess, app_process
from tests.support.assistant import (
    AssistantApp,
    Sse,
    assistant_app,
    follow,
    kinds,
    new_user,
    send,
    text_of,
)
from tests.support.db import new_sqlite_database
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply, ToolCall
from tests.support.procs import RedisServer

pytestmark = pytest.mark.usefixtures("workers")

AGENT = "fake-primary"
TURN_ENV = {
    "CORRAL_CHAT__TOOLS": json.dumps(["echo", "fail", "run_python"]),
    "CORRAL_CHAT__TOOL_TIMEOUT_S": "60",
    "CORRAL_RATE_LIMITS__CHAT": "100000/minute",
    # A lost holder is noticed within ~2.5 s instead of ~15 s.
    "CORRAL_CHAT__LEASE_TTL_S": "2",
    "CORRAL_CHAT__LEASE_RENEW_S": "0.4",
    "CORRAL_CHAT__SWEEP_INTERVAL_S": "0.3",
}
TERMINAL = {"done", "error", "cancelled"}


def is_agent(req: RecordedRequest) -> bool:
    return "tools" in req.body


def has_tool_answers(req: RecordedRequest) -> bool:
    return any(m.get("role") == "tool" for m in req.messages)


def first(events: list[Sse], kind: str) -> Sse:
    return next(e for e in events if e.event == kind)


def ended(events: list[Sse]) -> bool:
    return bool(events) and events[-1].event in TERMINAL


async def new_thread(client: httpx.AsyncClient) -> str:
    resp = await client.post("/api/threads", json={})
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


@pytest.fixture(scope="module")
def app(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = new_sqlite_database(tmp_path_factory.mktemp("turns-db"))
    with assistant_app(stack_env, url, "sqlite", **TURN_ENV) as live:
        yield live


def two_tools_then_answer(sleep_s: float) -> Callable[[RecordedRequest], Reply]:
    calls = [
        ToolCall("echo", {"payload": "a", "sleep_s": sleep_s, "steps": 3, "queue": "circuit_q"}),
        ToolCall("echo", {"payload": "b", "sleep_s": sleep_s, "steps": 3, "queue": "llm_q"}),
    ]

    def respond(req: RecordedRequest) -> Reply:
        if has_tool_answers(req):
            return Reply(text="Both tools finished.", chunk_size=5, chunk_delay_s=0.02)
        return Reply(text="Running two tools.", tool_calls=calls, chunk_size=6)

    return respond


# -- the browser connection does not own the turn ----------------------------------------------


async def test_reconnecting_with_last_event_id_loses_and_repeats_nothing(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(two_tools_then_answer(1.5))
    async with app.client(new_user()) as client:
        thread_id = await new_thread(client)
        turn = await send(client, thread_id, "run two tools")
        assert turn["events_url"] == f"/api/turns/{turn['turn_id']}/events"
        pieces: list[Sse] = []
        # Disconnect after every single event; reconnect a little later from its id.
        while not ended(pieces):
            got = await follow(
                client,
                turn["turn_id"],
                last_event_id=pieces[-1].id if pieces else None,
                stop_when=lambda ev: len(ev) >= 1,
            )
            pieces.extend(got)
            await asyncio.sleep(0.15)
        whole = await follow(client, turn["turn_id"])  # a replay from the start
        state = (await client.get(f"/api/turns/{turn['turn_id']}")).json()
    assert [(e.id, e.event, e.data) for e in pieces] == [(e.id, e.event, e.data) for e in whole]
    assert len({e.id for e in pieces}) == len(pieces)
    order = kinds(pieces)
    assert order[0] == "turn_started" and order[-1] == "done"
    assert order.count("tool_call_started") == 2 and order.count("tool_result") == 2
    assert text_of(pieces) == "Running two tools.Both tools finished."
    assert state["status"] == "done" and state["final_message_id"] == pieces[-1].data["message_id"]


async def test_text_is_batched_after_the_first_delta(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    text = "word " * 200  # 1000 characters in 500 chunks, as fast as the server can send
    fake_llm.script(AGENT, Reply(text=text, chunk_size=2))
    async with app.client(new_user()) as client:
        turn = await send(client, await new_thread(client), "talk")
        events = await follow(client, turn["turn_id"])
    texts = [e.data["delta"] for e in events if e.event == "text"]
    assert "".join(texts) == text
    assert len(texts[0]) <= 2  # the first delta is not held back
    assert len(texts) < 100  # batched: not one Redis entry per chunk
    assert all(len(t) <= 128 + 2 for t in texts)


async def test_enqueue_policy_runs_a_second_message_after_the_first(
    stack_env: dict[str, str], tmp_path: Path, fake_llm: FakeOpenAI
) -> None:
    url = new_sqlite_database(tmp_path)
    env = TURN_ENV | {"CORRAL_CHAT__DOUBLE_TEXTING": "enqueue"}
    fake_llm.respond_with(lambda req: Reply(text=f"re: {req.prompt}", delay_s=0.8))
    with assistant_app(stack_env, url, "sqlite", **env) as live:
        async with live.client(new_user()) as client:
            thread_id = await new_thread(client)
            one = await send(client, thread_id, "one")
            two = await send(client, thread_id, "two")
            assert (one["status"], two["status"]) == ("running", "queued")
            events_two = await follow(client, two["turn_id"])
            assert kinds(events_two)[0] == "queued" and kinds(events_two)[-1] == "done"
            assert text_of(events_two) == "re: two"
            items = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
    assert [(m["role"], m["content"]) for m in items] == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "two"),
        ("assistant", "re: two"),
    ]
    assert items[2]["id"] == two["message_id"]


# -- cancel --------------------------------------------------------------------------------------


async def test_cancel_sent_to_another_app_process_stops_tools_and_turn(
    app: AssistantApp, stack_env: dict[str, str], fake_llm: FakeOpenAI
) -> None:
    """The turn runs on one app; Stop arrives at another, which has no local handle on it."""
    slow = ToolCall("echo", {"payload": 1, "sleep_s": 30, "steps": 30, "queue": "llm_q"})
    fake_llm.script(AGENT, Reply(text="Long job.", tool_calls=[slow]))
    with assistant_app(stack_env, app.database_url, "sqlite", **TURN_ENV) as other:
        sub = new_user()
        async with app.client(sub) as client, other.client(sub) as client_b:
            thread_id = await new_thread(client)
            turn = await send(client, thread_id, "long job")
            seen = await follow(
                client_b, turn["turn_id"], stop_when=lambda ev: ev[-1].event == "tool_progress"
            )
            task_id = first(seen, "tool_call_started").data["task_id"]
            started = time.monotonic()
            stopped = (await client_b.post(f"/api/turns/{turn['turn_id']}/cancel")).json()
            assert stopped["status"] == "cancelled" and time.monotonic() - started < 5
            rest = await follow(client_b, turn["turn_id"], last_event_id=seen[-1].id)
            assert kinds(rest)[-2:] == ["tool_result", "cancelled"] or "cancelled" in kinds(rest)
            assert "cancel_requested" in kinds(rest)
            task = (await client.get(f"/api/tasks/{task_id}")).json()
            assert task["state"] == "cancelled"
            thread = (await client.get(f"/api/threads/{thread_id}")).json()
            assert thread["running_turn_id"] is None


# -- an app process dies mid-turn ----------------------------------------------------------------


def _started_events(task: dict[str, Any]) -> int:
    return sum(1 for e in task["events"] if e["type"] == "started")


async def _finish_on(
    app: AppProcess, sub: str, turn_id: str, last_id: str, timeout: float = 60
) -> list[Sse]:
    async with app.client(sub) as client:
        return await follow(client, turn_id, last_event_id=last_id, timeout=timeout)


@pytest.mark.timeout(360)  # app processes start in ~10-30 s each on a loaded 2-core box
async def test_a_killed_app_process_s_turn_is_finished_by_another(
    stack_env: dict[str, str], tmp_path: Path, fake_llm: FakeOpenAI
) -> None:
    database = new_sqlite_database(tmp_path)
    sub = new_user()
    slow_text = "counting: " + " ".join(str(i) for i in range(40))

    def respond(req: RecordedRequest) -> Reply:
        if "count" in req.prompt:  # the second turn: a long, slow answer
            return Reply(text=slow_text, chunk_size=4, chunk_delay_s=0.08)
        return two_tools_then_answer(4)(req)

    fake_llm.respond_with(respond)
    with (
        app_process(stack_env, database, tmp_path, **TURN_ENV) as a,
        app_process(stack_env, database, tmp_path, **TURN_ENV) as b,
    ):
        # 1. Killed while both tool tasks run: B re-awaits them by id, never re-sends them.
        async with a.client(sub) as client:
            thread_id = await new_thread(client)
            turn = await send(client, thread_id, "run two tools")
            before = await follow(
                client,
                turn["turn_id"],
                stop_when=lambda ev: kinds(ev).count("tool_call_started") == 2,
            )
        a.kill()
        after = await _finish_on(b, sub, turn["turn_id"], before[-1].id)
        assert "resumed" in kinds(after) and kinds(after)[-1] == "done", kinds(after)
        assert "tool_call_started" not in kinds(after)
        assert kinds(after).count("tool_result") == 2
        assert text_of(after) == "Both tools finished."
        async with b.client(sub) as client:
            state = (await client.get(f"/api/turns/{turn['turn_id']}")).json()
            assert state["status"] == "done" and state["resumes"] == 1
            items = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
            assert [m["role"] for m in items] == ["user", "assistant", "tool", "tool", "assistant"]
            assert [m["content"] for m in items].count("Both tools finished.") == 1
            tasks = (await client.get("/api/tasks", params={"thread_id": thread_id})).json()
            assert len(tasks) == 2
            for summary in tasks:
                task = (await client.get(f"/api/tasks/{summary['task_id']}")).json()
                assert task["state"] == "done" and _started_events(task) == 1, task
        agent_calls = [r for r in fake_llm.requests(AGENT) if is_agent(r)]
        assert len(agent_calls) == 2  # no model call was in flight: none re-issued

        # 2. Killed mid-answer: B issues the model call again; the answer is saved once.
        with app_process(stack_env, database, tmp_path, **TURN_ENV) as c:
            async with c.client(sub) as client:
                turn2 = await send(client, thread_id, "count for me")
                before2 = await follow(
                    client, turn2["turn_id"], stop_when=lambda ev: kinds(ev).count("text") >= 3
                )
            c.kill()
        after2 = await _finish_on(b, sub, turn2["turn_id"], before2[-1].id)
        assert kinds(after2)[-1] == "done", kinds(after2)
        resumed_at = kinds(after2).index("resumed")
        assert text_of(after2[resumed_at:]) == slow_text  # the whole answer, written again
        async with b.client(sub) as client:
            items = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
        assert [m["role"] for m in items][-2:] == ["user", "assistant"]
        assert [m["content"] for m in items].count(slow_text) == 1
        count_calls = [r for r in fake_llm.requests(AGENT) if "count" in r.prompt]
        assert len(count_calls) == 2


# -- Redis connections do not grow with turns or watchers -----------------------------------------


def _redis_connections(app: AppProcess, redis: RedisServer) -> list[str]:
    """The app process's connections to Redis, by client name (CLIENT LIST, matched on port)."""
    import redis as redis_lib

    conns = psutil.Process(app.proc.pid).net_connections(kind="tcp")
    ports = {
        c.laddr.port
        for c in conns
        if c.raddr and c.raddr.port == redis.port and c.status == psutil.CONN_ESTABLISHED
    }
    with redis_lib.Redis(host=redis.host, port=redis.port, password=redis.password) as admin:
        clients = admin.client_list()
    return sorted(
        c.get("name") or "(unnamed)" for c in clients if int(c["addr"].rsplit(":", 1)[1]) in ports
    )


@pytest.mark.timeout(360)  # app processes start in ~10-30 s each on a loaded 2-core box
async def test_a_hundred_turns_watched_by_a_hundred_clients_use_no_more_redis_connections(
    stack_env: dict[str, str], tmp_path: Path, fake_llm: FakeOpenAI, redis_server: RedisServer
) -> None:
    hold = threading.Event()
    fake_llm.respond_with(
        lambda req: Reply(
            text="a short streamed answer", chunk_size=4, chunk_delay_s=0.05, hold=hold
        )
    )
    database = new_sqlite_database(tmp_path)
    with app_process(stack_env, database, tmp_path, **TURN_ENV) as live:
        sub = new_user()
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(
            base_url=live.url, headers=live.headers(sub), timeout=90, limits=limits
        ) as client:

            async def watched(count: int) -> tuple[list[str], list[str]]:
                threads = [await new_thread(client) for _ in range(count)]
                turns = [await send(client, t, "hello") for t in threads]
                attached = [asyncio.Event() for _ in turns]

                async def watch(turn: dict[str, Any], ready: asyncio.Event) -> list[Sse]:
                    def seen(ev: list[Sse]) -> bool:
                        ready.set()
                        return False

                    return await follow(client, turn["turn_id"], stop_when=seen)

                watchers = [
                    asyncio.create_task(watch(t, r)) for t, r in zip(turns, attached, strict=True)
                ]
                await asyncio.wait_for(asyncio.gather(*(r.wait() for r in attached)), 30)
                await asyncio.sleep(0.5)
                held = _redis_connections(live, redis_server)
                hold.set()  # the model answers: every turn streams to its watcher
                await asyncio.sleep(0.3)
                streaming = _redis_connections(live, redis_server)
                results = await asyncio.wait_for(asyncio.gather(*watchers), 60)
                hold.clear()
                assert all(kinds(r)[-1] == "done" for r in results)
                assert all(text_of(r) == "a short streamed answer" for r in results)
                return held, streaming

            one = await watched(1)
            hundred = await watched(100)
    print(f"redis connections of the app: 1 turn/1 client {one}, 100 turns/100 clients {hundred}")
    most_for_one = max(len(one[0]), len(one[1]))
    assert len(hundred[0]) <= most_for_one and len(hundred[1]) <= most_for_one, (one, hundred)


# -- no model configured --------------------------------------------------------------------------


async def test_no_model_configured_is_a_state_the_page_can_show(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    url = new_sqlite_database(tmp_path)
    with assistant_app(stack_env, url, "sqlite", no_model=True, **TURN_ENV) as bare:
        async with bare.client(new_user()) as client:
            models = (await client.get("/api/llm/models")).json()
            assert models["configured"] is False and models["models"] == []
            setup = models["setup"]
            assert {e["provider"] for e in setup["examples"]} == {
                "OpenAI",
                "Ollama",
                "vLLM",
                "llama.cpp",
            }
            assert all("CORRAL_LLM__MODELS=" in e["env"] for e in setup["examples"])
            refused = await client.post(
                f"/api/threads/{await new_thread(client)}/messages", json={"content": "hi"}
            )
            assert refused.status_code == 503
            problem = refused.json()
            assert problem["type"] == "/errors/no-model-configured"
            assert "CORRAL_LLM__MODELS" in problem["detail"] and "retry_after_s" not in problem


async def test_configured_models_are_listed_without_secrets(app: AssistantApp) -> None:
    async with app.client(new_user()) as client:
        body = (await client.get("/api/llm/models")).json()
    assert body["configured"] is True and body["setup"] is None
    assert body["chat_model"] == "primary" and "primary" in {m["name"] for m in body["models"]}
    assert "api_key" not in json.dumps(body) and "base_url" not in json.dumps(body)


async def test_a_finished_turn_whose_stream_expired_still_ends_from_its_record(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    import redis as redis_lib

    fake_llm.script(AGENT, Reply(text="short"))
    async with app.client(new_user()) as client:
        turn = await send(client, await new_thread(client), "hi")
        assert kinds(await follow(client, turn["turn_id"]))[-1] == "done"
        with redis_lib.Redis.from_url(app.services.settings.redis.streams_url) as admin:
            assert admin.delete(f"turn:{turn['turn_id']}:events") == 1  # as if its TTL passed
        again = await follow(client, turn["turn_id"], timeout=10)
    assert [e.event for e in again] == ["done"] and again[0].data["expired"] is True


async def test_a_graceful_shutdown_hands_the_turn_over_at_once(
    stack_env: dict[str, str], tmp_path: Path, fake_llm: FakeOpenAI
) -> None:
    """SIGTERM (a deploy): the leaving process releases the lease; another resumes the turn
    within a sweep, long before the lease would have expired."""
    database = new_sqlite_database(tmp_path)
    env = TURN_ENV | {"CORRAL_CHAT__LEASE_TTL_S": "30", "CORRAL_CHAT__LEASE_RENEW_S": "5"}
    fake_llm.respond_with(two_tools_then_answer(3))
    sub = new_user()
    with assistant_app(stack_env, database, "sqlite", **env) as b:
        with assistant_app(stack_env, database, "sqlite", **env) as a:
            async with a.client(sub) as client:
                thread_id = await new_thread(client)
                turn = await send(client, thread_id, "run two tools")
                before = await follow(
                    client,
                    turn["turn_id"],
                    stop_when=lambda ev: kinds(ev).count("tool_call_started") == 2,
                )
            stopped_at = time.monotonic()
        async with b.client(sub) as client:
            after = await follow(client, turn["turn_id"], last_event_id=before[-1].id)
            resumed = first(after, "resumed")
            state = (await client.get(f"/api/turns/{turn['turn_id']}")).json()
            tasks = (await client.get("/api/tasks", params={"thread_id": thread_id})).json()
    assert resumed.at - stopped_at < 10  # released, not waited out (TTL 30 s)
    assert kinds(after)[-1] == "done" and "tool_call_started" not in kinds(after)
    assert state["status"] == "done" and state["resumes"] == 1
    assert len(tasks) == 2 and all(t["state"] == "done" for t in tasks)
