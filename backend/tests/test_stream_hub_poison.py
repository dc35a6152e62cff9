"""Regressions found by 10-minute fuzz runs against `make up`.

- One request with a cursor Redis rejects (``?after=99999999999999999999-0``: past 2^64) killed
  the process's stream hub, and every wait and event stream of that app process then hung until
  its deadline. Cursors are checked where they enter (422 at the API, ``ValueError`` in
  ``subscribe``), and the hub's reader survives any error a read raises.
- A cursor from the future, or one at a finished task's terminal event (what a browser's
  EventSource sends when it reconnects after the end), held the response open until its
  deadline (an hour). The first is a 422; the second ends at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from corral.app.streams import StreamHub
from corral.task_schemas import ProgressEvent, encode_event
from tests.conftest import LiveApp
from tests.support.procs import RedisServer

TOO_BIG = "99999999999999999999-0"  # 20 digits, > 2^64 - 1


async def _one_event_arrives(hub: StreamHub, writer: aioredis.Redis) -> None:
    key = f"test:{uuid.uuid4().hex}:events"
    async with hub.subscribe(key) as sub:
        await writer.xadd(key, encode_event(ProgressEvent(current=7)))  # type: ignore[arg-type]
        _, event = await asyncio.wait_for(sub.get(), 5)
    assert event.current == 7  # type: ignore[union-attr]


async def test_a_cursor_redis_rejects_is_refused_and_the_hub_lives_on(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url + "/2"
    hub = StreamHub(url, block_ms=500)
    await hub.start()
    writer = aioredis.Redis.from_url(url)
    try:
        for cursor in (TOO_BIG, "\u0be7-0", "1-\u0968"):  # Unicode digits are not Redis's
            with pytest.raises(ValueError, match="stream id"):
                hub.subscribe("test:poison:events", cursor)
        await _one_event_arrives(hub, writer)
        # Even a read Redis refuses for a reason we did not foresee leaves the reader alive.
        bad = hub.subscribe("test:wrongtype:events")
        await writer.set("test:wrongtype:events", "not a stream")
        await asyncio.sleep(0.3)
        bad.close()
        await _one_event_arrives(hub, writer)
    finally:
        await writer.aclose()
        await hub.aclose()


async def test_http_cursors_past_64_bits_are_422_and_streams_keep_working(
    live_app: LiveApp,
) -> None:
    async with httpx.AsyncClient(
        base_url=live_app.url, headers={"Authorization": f"Bearer {live_app.token}"}, timeout=30
    ) as client:
        resp = await client.post(
            "/api/tools/echo/invoke", json={"arguments": {"payload": 1}, "timeout_s": 20}
        )
        task_id = resp.json()["task_id"]
        for query in ({"after": TOO_BIG}, {}):
            headers = {} if query else {"Last-Event-ID": TOO_BIG}
            bad = await client.get(f"/api/tasks/{task_id}/events", params=query, headers=headers)
            assert bad.status_code == 422, bad.text
            assert bad.headers["content-type"].startswith("application/problem+json")
        # The process's hub still serves waits: a fresh invoke returns as soon as it is done.
        started = asyncio.get_running_loop().time()
        resp = await client.post(
            "/api/tools/echo/invoke", json={"arguments": {"payload": 2}, "timeout_s": 20}
        )
        assert resp.json()["status"] == "done", resp.text
        assert asyncio.get_running_loop().time() - started < 10
        future = f"{int(time.time() * 1000) + 3_600_000}-0"
        bad = await client.get(f"/api/tasks/{task_id}/events", params={"after": future})
        assert bad.status_code == 422 and "future" in bad.json()["detail"], bad.text

        # Reconnecting after the end: the stream ends at once (all of it, or nothing more).
        whole = await client.get(f"/api/tasks/{task_id}/events", timeout=5)
        ids = [line[4:] for line in whole.text.splitlines() if line.startswith("id: ")]
        assert "event: done" in whole.text and ids, whole.text
        again = await client.get(
            f"/api/tasks/{task_id}/events", headers={"Last-Event-ID": ids[-1]}, timeout=5
        )
        assert again.status_code == 200 and "event:" not in again.text, again.text
        middle = await client.get(
            f"/api/tasks/{task_id}/events", params={"after": ids[0]}, timeout=5
        )
        assert "event: done" in middle.text and ids[0] not in middle.text, middle.text
