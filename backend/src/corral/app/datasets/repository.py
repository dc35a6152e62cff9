"""Where dataset records live. Redis for now (no TTL); the interface is what a SQL store will keep.

A JSON string per dataset (``dataset:{id}``) and a sorted set per owner (``owner:{id}:datasets``,
newest first by upload time). Callers check ownership; the repository only stores.
"""

from __future__ import annotations

from typing import Any, Protocol

import redis.asyncio as aioredis

from corral.app.datasets.schemas import DatasetRecord


class DatasetRepository(Protocol):
    async def add(self, record: DatasetRecord) -> None: ...

    async def get(self, dataset_id: str) -> DatasetRecord | None: ...

    async def list_for_owner(self, owner_id: str, limit: int) -> list[DatasetRecord]: ...

    async def delete(self, record: DatasetRecord) -> None: ...


def _record_key(dataset_id: str) -> str:
    return f"dataset:{dataset_id}"


def _owner_key(owner_id: str) -> str:
    return f"owner:{owner_id}:datasets"


class RedisDatasetRepository:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def add(self, record: DatasetRecord) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(_record_key(record.id), record.model_dump_json())
        pipe.zadd(_owner_key(record.owner_id), {record.id: record.created_at.timestamp()})
        await pipe.execute()

    async def get(self, dataset_id: str) -> DatasetRecord | None:
        raw: Any = await self._redis.get(_record_key(dataset_id))
        return DatasetRecord.model_validate_json(raw) if raw else None

    async def list_for_owner(self, owner_id: str, limit: int) -> list[DatasetRecord]:
        ids: Any = await self._redis.zrevrange(_owner_key(owner_id), 0, limit - 1)
        if not ids:
            return []
        raws: Any = await self._redis.mget([_record_key(str(i)) for i in ids])
        return [DatasetRecord.model_validate_json(raw) for raw in raws if raw]

    async def delete(self, record: DatasetRecord) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(_record_key(record.id))
        pipe.zrem(_owner_key(record.owner_id), record.id)
        await pipe.execute()
