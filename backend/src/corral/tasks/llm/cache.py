"""The response cache: Redis ``SET key json EX ttl``; the key hashes model + messages + options.

A cache problem never fails a generation: a read error is a miss, a write error is logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

import redis
import structlog

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_clients: dict[tuple[int, str], redis.Redis] = {}

CACHE_PREFIX = "llm:cache:"


def _client(url: str) -> redis.Redis:
    key = (os.getpid(), url)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            _clients[key] = client
        return client


def cache_key(material: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of everything that shapes an answer."""
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CACHE_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    def __init__(self, redis_url: str, ttl_s: int) -> None:
        self._url = redis_url
        self._ttl_s = ttl_s

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = _client(self._url).get(key)
        except redis.RedisError as exc:
            log.warning("llm cache read failed; treating as a miss", error=str(exc))
            return None
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            _client(self._url).set(key, json.dumps(value), ex=self._ttl_s)
        except redis.RedisError as exc:
            log.warning("llm cache write failed", error=str(exc))
