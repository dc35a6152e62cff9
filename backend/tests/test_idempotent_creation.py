"""Idempotency-Key on turn and research-session creation (issue 12 §4): a retried POST returns
what the first one created; the key is stored on the SQL row, so a Redis flush cannot turn a
retry into a duplicate."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.support.fake_openai import FakeOpenAI
from tests.support.frontend_stack import scripted_assistant


async def test_a_retried_message_starts_one_turn(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(scripted_assistant)
    thread = (await api.post("/api/threads", json={})).json()
    key = {"Idempotency-Key": f"msg-{uuid.uuid4()}"}
    url = f"/api/threads/{thread['id']}/messages"
    first, second = await asyncio.gather(
        api.post(url, json={"content": "hello there"}, headers=key),
        api.post(url, json={"content": "hello there"}, headers=key),
    )
    assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
    assert first.json()["turn_id"] == second.json()["turn_id"]
    turn_id = first.json()["turn_id"]
    async with asyncio.timeout(60):
        while (await api.get(f"/api/turns/{turn_id}")).json()["status"] in ("running", "queued"):
            await asyncio.sleep(0.2)
    again = await api.post(url, json={"content": "hello there"}, headers=key)
    assert again.status_code == 202 and again.json()["turn_id"] == turn_id
    assert again.json()["status"] == "done"
    page = (await api.get(f"{url}")).json()
    users = [m for m in page["items"] if m["role"] == "user"]
    assert len(users) == 1, page

    other = (await api.post("/api/threads", json={})).json()
    reused = await api.post(
        f"/api/threads/{other['id']}/messages", json={"content": "hi"}, headers=key
    )
    assert reused.status_code == 409
    assert reused.json()["type"] == "/errors/idempotency-key-reused"


async def test_a_retried_session_create_returns_the_same_session(api: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": f"sess-{uuid.uuid4()}"}
    first, second = await asyncio.gather(
        api.post("/api/sessions", json={}, headers=key),
        api.post("/api/sessions", json={}, headers=key),
    )
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    fresh = await api.post("/api/sessions", json={}, headers={"Idempotency-Key": "another"})
    assert fresh.json()["id"] != first.json()["id"]
    for session_id in {first.json()["id"], fresh.json()["id"]}:
        await api.delete(f"/api/sessions/{session_id}")
    bad = await api.post("/api/sessions", json={}, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422
