"""Who owns which task, kept in Redis beside the streams (same TTL).

A hash per task (``task:{id}:meta``) and a sorted set per owner, newest first by score.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from corral.app.task_runs.schemas import TaskRunRecord, TaskState
from corral.task_schemas import EventType, decode_event, task_events_key

_STATE_OF_EVENT: dict[str, TaskState] = {
    EventType.QUEUED: "queued",
    EventType.STARTED: "running",
    EventType.PROGRESS: "running",
    EventType.DONE: "done",
    EventType.ERROR: "error",
    EventType.CANCELLED: "cancelled",
}


def _meta_key(task_id: str) -> str:
    return f"task:{task_id}:meta"


def _owner_key(owner_id: str) -> str:
    return f"owner:{owner_id}:tasks"


class TaskRunRepository:
    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def add(self, record: TaskRunRecord) -> None:
        score = record.created_at.timestamp()
        pipe = self._redis.pipeline(transaction=True)
        fields: Any = record.model_dump(mode="json", exclude_none=True)
        pipe.hset(_meta_key(record.task_id), mapping=fields)
        pipe.expire(_meta_key(record.task_id), self._ttl_s)
        pipe.zadd(_owner_key(record.owner_id), {record.task_id: score})
        pipe.zremrangebyscore(_owner_key(record.owner_id), "-inf", score - self._ttl_s)
        pipe.expire(_owner_key(record.owner_id), self._ttl_s)
        await pipe.execute()

    async def get(self, task_id: str) -> TaskRunRecord | None:
        raw: Any = await self._redis.hgetall(_meta_key(task_id))
        return TaskRunRecord.model_validate(raw) if raw else None

    async def list_ids(self, owner_id: str, limit: int) -> list[str]:
        ids: Any = await self._redis.zrevrange(_owner_key(owner_id), 0, limit - 1)
        return [str(i) for i in ids]

    async def states(self, task_ids: list[str]) -> list[TaskState]:
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.xrevrange(task_events_key(task_id), count=1)
        out: list[TaskState] = []
        results: list[Any] = await pipe.execute()
        for last in results:
            if not last:
                out.append("unknown")
                continue
            _, fields = last[0]
            out.append(_STATE_OF_EVENT.get(decode_event(fields).type, "unknown"))
        return out

    async def events(self, task_id: str, after: str = "-") -> list[tuple[str, dict[str, str]]]:
        start = after if after == "-" else f"({after}"
        entries: Any = await self._redis.xrange(task_events_key(task_id), min=start, count=10_000)
        return [(entry_id, dict(fields)) for entry_id, fields in entries]


def now_utc() -> datetime:
    return datetime.now(UTC)
