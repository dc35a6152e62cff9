"""Per-user limits by route group with ``limits`` on Redis (its Lua scripts are atomic)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from corral.app.observability.counters import rate_limit_refused
from corral.app.ratelimit.settings import RateLimitSettings

T = TypeVar("T")
Group = Literal["chat", "tools"]
GROUPS: tuple[Group, ...] = ("chat", "tools")

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


@dataclass(frozen=True)
class LimitState:
    group: str
    limit: str
    amount: int
    window_s: int
    remaining: int
    reset_at: float
    allowed: bool = True

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.amount),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


async def _reconnecting(call: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """Pooled connections go stale when Redis restarts: the first use of each fails once.
    Retrying on a fresh connection keeps a Redis restart from turning into 500s."""
    for attempt in range(attempts):
        try:
            return await call()
        except (RedisConnectionError, RedisTimeoutError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class RateLimits:
    def __init__(self, settings: RateLimitSettings, redis_url: str) -> None:
        self.settings = settings
        self._pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=8, timeout=10, socket_timeout=5, socket_connect_timeout=5
        )
        self._storage = RedisStorage(
            "async+" + redis_url,
            implementation="redispy",
            key_prefix=settings.key_prefix,
            connection_pool=cast(Any, self._pool),
        )
        self._limiter = _STRATEGIES[settings.strategy](self._storage)
        self._items: dict[str, RateLimitItem] = {
            "chat": parse(settings.chat),
            "tools": parse(settings.tools),
        }

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def item(self, group: Group) -> RateLimitItem:
        return self._items[group]

    async def hit(self, group: Group, user_id: str) -> LimitState:
        """Count one request; ``allowed`` is False (and nothing is counted) past the limit."""
        item = self._items[group]
        allowed = await _reconnecting(lambda: self._limiter.hit(item, group, user_id))
        if not allowed:
            rate_limit_refused(group)
        return await _reconnecting(lambda: self._state(group, user_id, allowed))

    async def peek(self, group: Group, user_id: str) -> LimitState:
        return await _reconnecting(lambda: self._state(group, user_id, True))

    async def _state(self, group: Group, user_id: str, allowed: bool) -> LimitState:
        item = self._items[group]
        stats = await self._limiter.get_window_stats(item, group, user_id)
        return LimitState(
            group=group,
            limit=str(item),
            amount=item.amount,
            window_s=item.get_expiry(),
            remaining=stats.remaining,
            reset_at=stats.reset_time,
            allowed=allowed,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
