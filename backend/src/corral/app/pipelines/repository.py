"""Pipeline runs in Redis (until the database issue): a small interface meant to be swapped.

Keys (all with the stream TTL): ``pipeline:{id}:run`` the run as JSON, ``pipeline:{id}:cancel``
the cancel request flag, ``pipeline:{id}:events`` the transitions stream (same entry format as
a task's, so ``StreamHub`` follows it), ``owner:{owner}:pipelines`` a sorted set for listing.
Only the run's scheduler writes the record while it runs; DELETE only raises the flag.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from corral.app.pipelines.schemas import PipelineRun
from corral.config import StreamSettings
from corral.task_schemas import _Event, encode_event


def events_key(run_id: str) -> str:
    return f"pipeline:{run_id}:events"


def _run_key(run_id: str) -> str:
    return f"pipeline:{run_id}:run"


def _cancel_key(run_id: str) -> str:
    return f"pipeline:{run_id}:cancel"


def _owner_key(owner_id: str) -> str:
    return f"owner:{owner_id}:pipelines"


class PipelineRunRepository:
    def __init__(self, redis: aioredis.Redis, streams: StreamSettings) -> None:
        self._redis = redis
        self._ttl_s = streams.ttl_s
        self._maxlen = streams.maxlen

    async def create(self, run: PipelineRun) -> None:
        score = run.created_at.timestamp()
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(_run_key(run.run_id), run.model_dump_json(), ex=self._ttl_s)
        pipe.zadd(_owner_key(run.owner_id), {run.run_id: score})
        pipe.zremrangebyscore(_owner_key(run.owner_id), "-inf", score - self._ttl_s)
        pipe.expire(_owner_key(run.owner_id), self._ttl_s)
        await pipe.execute()

    async def save(self, run: PipelineRun) -> None:
        await self._redis.set(_run_key(run.run_id), run.model_dump_json(), ex=self._ttl_s)

    async def get(self, run_id: str) -> PipelineRun | None:
        raw = await self._redis.get(_run_key(run_id))
        return None if raw is None else PipelineRun.model_validate_json(raw)

    async def list_ids(self, owner_id: str, limit: int) -> list[str]:
        ids = await self._redis.zrevrange(_owner_key(owner_id), 0, limit - 1)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def request_cancel(self, run_id: str) -> None:
        await self._redis.set(_cancel_key(run_id), "1", ex=self._ttl_s)

    async def cancel_requested(self, run_id: str) -> bool:
        return bool(await self._redis.exists(_cancel_key(run_id)))

    async def publish(self, run_id: str, event: _Event) -> str:
        key = events_key(run_id)
        fields: Any = encode_event(event)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
        pipe.expire(key, self._ttl_s)
        entry_id, _ = await pipe.execute()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
