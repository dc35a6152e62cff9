"""Redis connection pools that survive a Redis restart.

A pooled connection goes stale when Redis restarts or a proxy drops it: its next command fails
with ``ConnectionError`` although a fresh connection would work. redis-py retries nothing unless
told, so every app pool is built here with a short reconnect-and-retry on connection errors
only. Timeouts are not retried (a blocking read that times out is the caller's deadline)."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

RECONNECT_ATTEMPTS = 3


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.5, base=0.05)


def async_pool(url: str, **kwargs: Any) -> aioredis.BlockingConnectionPool:
    """A blocking pool (bursts wait for a connection); its commands reconnect once Redis is back."""
    retry = AsyncRetry(_backoff(), RECONNECT_ATTEMPTS, supported_errors=(RedisConnectionError,))
    return aioredis.BlockingConnectionPool.from_url(url, retry=retry, **kwargs)


def sync_pool(url: str, **kwargs: Any) -> redis.BlockingConnectionPool:
    """The same for the synchronous client the send thread uses."""
    retry = Retry(_backoff(), RECONNECT_ATTEMPTS, supported_errors=(RedisConnectionError,))
    return redis.BlockingConnectionPool.from_url(url, retry=retry, **kwargs)
