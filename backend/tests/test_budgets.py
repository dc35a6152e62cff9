"""Daily budgets per user (issue 13): model tokens, sandbox CPU-seconds, analysis rows scanned.

Real workers, a real app server on its own SQLite database, the scripted OpenAI-protocol model.
One app; each test's user gets a small limit through the admin overrides, so the others (and
every other user) keep the generous defaults.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.assistant import AssistantApp, assistant_app, follow, new_user, send
from tests.support.db import new_sqlite_database
from tests.support.fake_openai import FakeOpenAI, Reply

pytestmark = pytest.mark.usefixtures("workers")

CPU_USER, TOKEN_USER, ROWS_USER = new_user(), new_user(), new_user()
SESSION_USER = new_user()
OVERRIDES = {
    CPU_USER: {"cpu_seconds": 1.0},
    SESSION_USER: {"cpu_seconds": 1.0},
    TOKEN_USER: {"tokens": 100},
    ROWS_USER: {"rows": 50_000},  # the sample dataset: 50,000 neurons, one query's worth
}
BURN_CPU = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.3:\n    pass\n"
SAMPLE = "sample-cortical-column"


@pytest.fixture(scope="module")
def app(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = new_sqlite_database(tmp_path_factory.mktemp("budget-db"))
    overrides = json.dumps(OVERRIDES)
    with assistant_app(stack_env, url, "sqlite", CORRAL_BUDGETS__OVERRIDES=overrides) as live:
        yield live


async def _budget(client: httpx.AsyncClient, kind: str) -> dict[str, Any]:
    body = (await client.get("/api/usage", params={"days": 1})).json()
    return next(b for b in body["budgets"] if b["kind"] == kind)


def _refused(resp: httpx.Response, kind: str) -> dict[str, Any]:
    """A 429 problem naming the budget, its limit, today's spend and the reset (next 00:00 UTC)."""
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = resp.json()
    assert problem["type"] == "/errors/budget-exceeded", problem
    assert problem["budget"] == kind and problem["spent"] >= problem["limit"], problem
    resets = datetime.fromisoformat(problem["resets_at"])
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert resets.date() == tomorrow and (resets.hour, resets.minute) == (0, 0), resets
    assert 0 < problem["retry_after_s"] <= 86_400 and int(resp.headers["Retry-After"]) >= 1
    assert "resets at" in problem["detail"], problem["detail"]
    return problem


async def test_cpu_seconds_are_measured_per_run_and_refuse_the_next_python_run(
    app: AssistantApp,
) -> None:
    async with app.client(CPU_USER) as client:
        before = await _budget(client, "cpu_seconds")
        assert before == {**before, "limit": 1.0, "spent": 0.0, "exhausted": False}
        resp = await client.post(
            "/api/tools/run_python/invoke", json={"arguments": {"code": BURN_CPU}, "timeout_s": 60}
        )
        assert resp.json()["status"] == "done", resp.text
        spent = await _budget(client, "cpu_seconds")
        # The sandbox's CPU (rusage of the child), not the wall time of the call.
        assert 1.2 <= spent["spent"] < 5, spent
        assert spent["exhausted"] and spent["remaining"] == 0
        problem = _refused(
            await client.post(
                "/api/tools/run_python/invoke", json={"arguments": {"code": "print(1)"}}
            ),
            "cpu_seconds",
        )
        assert "CPU-seconds" in problem["detail"]
        # Tasks that spend no CPU budget still run; other users are not affected.
        echo = await client.post("/api/tools/echo/invoke", json={"arguments": {"payload": 1}})
        assert echo.json()["status"] == "done", echo.text
    async with app.client(new_user()) as other:
        resp = await other.post(
            "/api/tools/run_python/invoke", json={"arguments": {"code": "print(2)"}}
        )
        assert resp.json()["status"] == "done", resp.text


async def test_a_research_sessions_kernel_cpu_is_charged_per_call(app: AssistantApp) -> None:
    """A session's kernel is a long-lived process in its own sandbox, not a child the pool
    process reaps: each call's CPU is counted by the session host and charged to that call."""
    async with app.client(SESSION_USER) as client:
        session = (await client.post("/api/sessions", json={})).json()
        run = f"/api/sessions/{session['id']}/run"
        first = await client.post(run, json={"code": "x = 1"})
        assert first.json()["status"] == "done", first.text
        light = (await _budget(client, "cpu_seconds"))["spent"]
        assert light < 0.5, light  # a trivial call is not charged the session's start-up
        burn = await client.post(run, json={"code": BURN_CPU, "timeout_s": 60})
        assert burn.json()["status"] == "done", burn.text
        spent = await _budget(client, "cpu_seconds")
        assert 1.2 <= spent["spent"] - light < 5, spent
        problem = _refused(await client.post(run, json={"code": "x + 1"}), "cpu_seconds")
        assert problem["budget"] == "cpu_seconds"
        await client.delete(f"/api/sessions/{session['id']}")


async def test_a_token_budget_refuses_the_next_turn_and_the_next_generation(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(lambda req: Reply(text="ok", prompt_tokens=90, completion_tokens=20))
    async with app.client(TOKEN_USER) as client:
        thread = (await client.post("/api/threads", json={})).json()["id"]
        turn = await send(client, thread, "hello")
        events = await follow(client, turn["turn_id"])
        assert events[-1].event == "done", [(e.event, e.data) for e in events]
        tokens = await _budget(client, "tokens")
        assert tokens["spent"] == 110 and tokens["exhausted"], tokens
        refused = await client.post(f"/api/threads/{thread}/messages", json={"content": "more"})
        _refused(refused, "tokens")
        generate = await client.post("/api/llm/generate", json={"prompt": "hi"})
        _refused(generate, "tokens")
        # The refused message was not kept: the thread still holds the first exchange only.
        items = (await client.get(f"/api/threads/{thread}/messages")).json()["items"]
        assert [m["content"] for m in items if m["role"] == "user"] == ["hello"]


async def test_rows_scanned_by_analyses_refuse_the_next_one_and_chat_says_why(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    sql = "SELECT layer, count(*) AS n FROM neurons GROUP BY layer"
    args = {"dataset_id": SAMPLE, "question": "per layer", "sql": sql}
    async with app.client(ROWS_USER) as client:
        first = await client.post(
            "/api/tools/circuit_population_analysis/invoke",
            json={"arguments": args, "timeout_s": 120},
        )
        assert first.json()["status"] == "done", first.text
        rows = await _budget(client, "rows")
        assert rows["spent"] == 50_000 and rows["exhausted"], rows
        _refused(
            await client.post(
                "/api/tools/circuit_population_analysis/invoke", json={"arguments": args}
            ),
            "rows",
        )
        # In a chat the refusal is the tool call's typed error, which the model gets back.
        from tests.support.fake_openai import ToolCall

        call = ToolCall("circuit_population_analysis", args)
        fake_llm.respond_with(
            lambda req: (
                Reply(text="Out of budget today.")
                if any(m.get("role") == "tool" for m in req.messages)
                else Reply(tool_calls=[call])
            )
        )
        thread = (await client.post("/api/threads", json={})).json()["id"]
        turn = await send(client, thread, "count per layer")
        events = await follow(client, turn["turn_id"])
        result = next(e for e in events if e.event == "tool_result")
        assert result.data["status"] == "error", result.data
        assert result.data["error"]["type"] == "BudgetExceeded", result.data
        assert "rows budget" in result.data["error"]["message"], result.data
        assert events[-1].event == "done"


def test_budgets_are_documented_where_they_are_set() -> None:
    root = Path(__file__).resolve().parents[2]
    example = (root / ".env.app.example").read_text()
    for name in ("TOKENS", "CPU_SECONDS", "ROWS", "OVERRIDES"):
        assert f"CORRAL_BUDGETS__{name}" in example, name
