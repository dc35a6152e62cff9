"""A turn's lease in Redis: ``turn:{id}:lease`` holds the id of the app process running it.

Taken with ``SET NX PX``, renewed and released only by its holder (compare-and-set scripts),
so a process that stalled past the TTL can neither renew nor release a lease another process
has taken meanwhile: it learns it lost the lease at its next renewal and stops its loop.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from corral.app.redis_pools import async_pool

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def lease_key(turn_id: str) -> str:
    return f"turn:{turn_id}:lease"


class Leases:
    """All lease traffic of a process on ONE connection (``client_name``): taking, renewing
    (every held lease in one pipeline) and releasing never grow a pool, however many turns."""

    def __init__(self, redis_url: str, holder: str, ttl_s: float, *, client_name: str) -> None:
        redis = aioredis.Redis.from_pool(
            async_pool(
                redis_url,
                max_connections=1,
                timeout=10,
                socket_timeout=10,
                socket_connect_timeout=5,
                client_name=client_name,
                decode_responses=True,
            )
        )
        self._redis = redis
        self.holder = holder
        self._ttl_ms = int(ttl_s * 1000)
        self._renew: Any = redis.register_script(_RENEW)
        self._release: Any = redis.register_script(_RELEASE)

    async def acquire(self, turn_id: str) -> bool:
        return bool(
            await self._redis.set(lease_key(turn_id), self.holder, nx=True, px=self._ttl_ms)
        )

    async def renew(self, turn_id: str) -> bool:
        return bool(await self._renew(keys=[lease_key(turn_id)], args=[self.holder, self._ttl_ms]))

    async def release(self, turn_id: str) -> None:
        await self._release(keys=[lease_key(turn_id)], args=[self.holder])

    async def renew_many(self, turn_ids: list[str]) -> set[str]:
        """Renew several leases in one round trip; returns those still ours."""
        pipe = self._redis.pipeline(transaction=False)
        for turn_id in turn_ids:
            await self._renew(
                keys=[lease_key(turn_id)], args=[self.holder, self._ttl_ms], client=pipe
            )
        results = await pipe.execute()
        return {t for t, ok in zip(turn_ids, results, strict=True) if ok}

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def held(self, turn_ids: list[str]) -> set[str]:
        """Which of these turns have a live lease (by anyone)."""
        if not turn_ids:
            return set()
        values = await self._redis.mget([lease_key(t) for t in turn_ids])
        return {t for t, v in zip(turn_ids, values, strict=True) if v is not None}
