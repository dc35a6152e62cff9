"""Regression: a subscription joining while the hub's XREAD is in flight misses nothing.

Found by the pipeline tests: the task-run tracker follows every task stream, so a long poll (or
a browser's SSE) joining from ``0-0`` while the tracker's read was in flight was handed only the
entries after the tracker's cursor (a step never saw its ``started``; a browser could lose the
first streamed tokens).
"""

from __future__ import annotations

import asyncio
import random
import uuid

import redis.asyncio as aioredis

from corral.app.streams import StreamHub
from corral.task_schemas import ProgressEvent, encode_event
from tests.support.procs import RedisServer

ENTRIES = 20


async def test_late_subscriber_receives_every_entry_from_its_cursor(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url + "/2"
    hub = StreamHub(url, block_ms=1000)
    await hub.start()
    writer = aioredis.Redis.from_url(url)
    rng = random.Random(4)
    try:
        for _ in range(40):
            key = f"test:{uuid.uuid4().hex}:events"

            async def write(key: str = key) -> None:
                for i in range(ENTRIES):
                    await writer.xadd(key, encode_event(ProgressEvent(current=i)))  # type: ignore[arg-type]
                    await asyncio.sleep(0.0005)

            async with hub.subscribe(key) as early:
                writing = asyncio.create_task(write())
                await asyncio.sleep(rng.uniform(0, 0.012))
                async with hub.subscribe(key) as late:
                    got = []
                    for _ in range(ENTRIES):
                        _, event = await asyncio.wait_for(late.get(), 5)
                        got.append(event.current)  # type: ignore[union-attr]
                await writing
                assert got == list(range(ENTRIES))
                seen = [(await asyncio.wait_for(early.get(), 5))[1] for _ in range(ENTRIES)]
                assert [e.current for e in seen] == list(range(ENTRIES))  # type: ignore[union-attr]
    finally:
        await writer.aclose()
        await hub.aclose()
