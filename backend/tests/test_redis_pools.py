"""App Redis pools reconnect after a Redis restart instead of failing the first command.

The system-of-record test found it: after Redis came back, a pipeline run's first event write
used a pooled connection the old server had closed, and the run failed."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from corral.app.redis_pools import async_pool, sync_pool
from tests.support.procs import start_redis


async def test_pooled_connections_survive_a_redis_restart() -> None:
    server = start_redis()
    try:
        async_client = aioredis.Redis.from_pool(async_pool(server.url, max_connections=2))
        sync_client = redis.Redis.from_pool(sync_pool(server.url, max_connections=2))
        assert await async_client.ping()
        assert sync_client.ping()
        # A plain pool (no retry) fails the first command after the restart: the test can fail.
        plain = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(server.url))
        assert await plain.ping()

        server.stop()
        server = start_redis(port=server.port)

        pipe = async_client.pipeline(transaction=False)
        pipe.xadd("s", {"a": "1"})
        pipe.expire("s", 60)
        entry_id, _ = await pipe.execute()
        assert entry_id
        assert await async_client.xlen("s") == 1
        assert sync_client.xadd("s", {"b": "2"})
        assert await async_client.xlen("s") == 2
        try:
            await plain.ping()
        except redis.exceptions.ConnectionError:
            pass
        else:
            raise AssertionError("a pool without retry should have seen the stale connection")
        await async_client.aclose()
        await plain.aclose()
        sync_client.close()
    finally:
        server.stop()
