"""``urgent`` maps to broker message priority: an urgent call overtakes normal ones queued first.

Its own Redis, app and a single-slot llm_q worker, so the queue order is the test's alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from corral.app.main import create_app
from corral.app.settings import AppSettings
from corral.task_schemas import PRIORITY_STEPS
from tests.conftest import LiveApp
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply
from tests.support.procs import (
    RedisServer,
    UvicornThread,
    env_vars,
    start_redis,
    start_worker,
    wait_until,
    wait_workers_ready,
)


@pytest.fixture
def single_slot_stack(
    stack_env: dict[str, str], live_app: LiveApp, tmp_path: Any
) -> Iterator[tuple[str, RedisServer]]:
    server = start_redis()
    env = {**stack_env, "TASKS_REDIS__URL": server.url, "CORRAL_REDIS__URL": server.url}
    worker = start_worker(("llm_q",), env, concurrency=1, log_dir=tmp_path)
    try:
        wait_workers_ready(server.url + "/0", [worker])
        with env_vars(env):
            settings = AppSettings()
        with UvicornThread(create_app(settings)) as app:
            yield app.url, server
    finally:
        worker.stop()
        server.stop()


def queued_messages(server: RedisServer) -> int:
    """Messages waiting in llm_q over all its priority lists (kombu's key per step)."""
    client = redis.Redis.from_url(server.url + "/0")
    try:
        keys = ["llm_q" if p == 0 else f"llm_q\x06\x16{p}" for p in PRIORITY_STEPS]
        return sum(int(client.llen(k)) for k in keys)
    finally:
        client.close()


async def test_urgent_call_overtakes_queued_normal_ones(
    single_slot_stack: tuple[str, RedisServer], live_app: LiveApp, fake_llm: FakeOpenAI
) -> None:
    url, server = single_slot_stack
    release = threading.Event()

    def provider(req: RecordedRequest) -> Reply:
        return Reply(text=req.prompt, hold=release if req.prompt == "blocker" else None)

    fake_llm.respond_with(provider)
    async with httpx.AsyncClient(base_url=url, headers=live_app.headers, timeout=40) as api:

        def call(prompt: str, urgent: bool = False) -> asyncio.Task[httpx.Response]:
            body = {"prompt": prompt, "urgent": urgent, "timeout_s": 30}
            return asyncio.create_task(api.post("/api/llm/generate", json=body))

        calls = [call("blocker")]
        await asyncio.to_thread(fake_llm.wait_for_requests, 1)  # the only slot is busy

        def queued(n: int) -> None:
            wait_until(lambda: queued_messages(server) == n, 10, f"{n} queued messages")

        for i in range(3):
            calls.append(call(f"normal-{i}"))
            await asyncio.to_thread(queued, i + 1)
        calls.append(call("urgent", urgent=True))
        await asyncio.to_thread(queued, 4)
        release.set()
        responses = await asyncio.gather(*calls)

    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    order = [r.prompt for r in fake_llm.requests()]
    assert order == ["blocker", "urgent", "normal-0", "normal-1", "normal-2"]
