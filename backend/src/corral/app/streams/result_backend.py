"""Reading a task's stored outcome from Celery's Redis result backend without blocking.

Celery's own ``AsyncResult.get`` is synchronous. We read the same key with redis asyncio and
decode it with the backend's own serializer; exceptions stay plain dicts (no import of the
worker's exception classes into the app).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from celery import Celery


class ResultBackendReader:
    def __init__(
        self, celery_app: Celery, redis_url: str, client_name: str = "corral-waiter-backend"
    ) -> None:
        self._backend = celery_app.backend
        self._redis = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=1,
                timeout=10,
                socket_timeout=10,
                socket_connect_timeout=5,
                client_name=client_name,
            )
        )

    async def meta(self, task_id: str) -> dict[str, Any]:
        """The stored meta (``status``, ``result``, ``traceback``); ``PENDING`` if none yet."""
        raw = await self._redis.get(self._backend.get_key_for_task(task_id))
        if raw is None:
            return {"status": "PENDING", "result": None, "task_id": task_id}
        meta: dict[str, Any] = self._backend.decode(raw)
        return meta

    async def aclose(self) -> None:
        await self._redis.aclose()


def failure_details(meta: dict[str, Any]) -> tuple[str, str]:
    """(error_type, message) from a FAILURE meta's serialized exception."""
    result = meta.get("result")
    if isinstance(result, dict):
        exc_type = str(result.get("exc_type") or "Error")
        message = result.get("exc_message")
        if isinstance(message, list | tuple):
            message = " ".join(str(m) for m in message)
        return exc_type, str(message or exc_type)
    return "Error", str(result)
