"""One-time, idempotent import of the records earlier versions kept only in Redis.

Before SQL was the system of record, datasets lived in ``dataset:{id}`` (JSON, no TTL) with an
index ``owner:{owner}:datasets``, and pipeline runs in ``pipeline:{id}:run`` (JSON, 24 h TTL)
with ``owner:{owner}:pipelines``. At start-up every such key is read, inserted unless a row with
that id exists, and deleted once the insert committed, so running it again (or in several app
processes at once) adds nothing twice. An imported dataset has no Parquet copy yet: it comes in
``processing`` and is sent to ``circuit.ingest`` like a new upload (its file is still in the
object store), keeping its id, name and owner.
"""

from __future__ import annotations

from typing import Any

import structlog
from pydantic import ValidationError

from corral.app.datasets.repository import DatasetRepository
from corral.app.datasets.schemas import DatasetRecord
from corral.app.pipelines.repository import PipelineRunRepository
from corral.app.pipelines.schemas import PipelineRun
from corral.app.services import Services

log = structlog.get_logger(__name__)

_BATCH = 200


async def _scan(services: Services, pattern: str) -> list[str]:
    keys: list[str] = []
    async for key in services.redis.scan_iter(match=pattern, count=1000):
        keys.append(key.decode() if isinstance(key, bytes) else str(key))
    return keys


async def _values(services: Services, keys: list[str]) -> list[tuple[str, Any]]:
    if not keys:
        return []
    values: list[Any] = await services.redis.mget(keys)
    return [(k, v) for k, v in zip(keys, values, strict=True) if v]


def _legacy_dataset(raw: Any) -> DatasetRecord | None:
    try:
        record = DatasetRecord.model_validate_json(raw)
    except ValidationError:
        return None
    return record.model_copy(
        update={
            "status": "processing",
            "declared_format": record.format,
            "parquet_key": f"{record.owner_id}/datasets/{record.id}.parquet",
            "task_id": None,
        }
    )


async def import_datasets(services: Services) -> int:
    keys = [k for k in await _scan(services, "dataset:*") if k.count(":") == 1]
    repo = DatasetRepository(services.db)
    imported = 0
    for start in range(0, len(keys), _BATCH):
        batch = await _values(services, keys[start : start + _BATCH])
        records = [r for _, raw in batch if (r := _legacy_dataset(raw)) is not None]
        imported += await repo.add_missing(records)
        if batch:
            await services.redis.delete(*[k for k, _ in batch])
    owners = await _scan(services, "owner:*:datasets")
    if owners:
        await services.redis.delete(*owners)
    return imported


async def import_pipeline_runs(services: Services) -> int:
    keys = await _scan(services, "pipeline:*:run")
    repo = PipelineRunRepository(services.db, services.redis, services.settings.streams)
    imported = 0
    for start in range(0, len(keys), _BATCH):
        batch = await _values(services, keys[start : start + _BATCH])
        runs: list[PipelineRun] = []
        for _, raw in batch:
            try:
                runs.append(PipelineRun.model_validate_json(raw))
            except ValidationError as exc:
                log.warning("legacy pipeline run unreadable; skipped", error=str(exc)[:200])
        imported += await repo.add_missing(runs)
        for run in runs:
            cancel_key = f"pipeline:{run.run_id}:cancel"
            if await services.redis.exists(cancel_key):
                await repo.request_cancel(run.run_id)
                await services.redis.delete(cancel_key)
        if batch:
            await services.redis.delete(*[k for k, _ in batch])
    owners = await _scan(services, "owner:*:pipelines")
    if owners:
        await services.redis.delete(*owners)
    return imported


async def import_from_redis(services: Services) -> dict[str, int]:
    """Import every legacy record; safe to run at every start-up."""
    found = {
        "datasets": await import_datasets(services),
        "pipeline_runs": await import_pipeline_runs(services),
    }
    if any(found.values()):
        log.info("imported legacy records from redis", **found)
    return found
