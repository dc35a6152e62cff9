"""``system.purge``: retention of user records, scheduled by ``celery beat``.

Each kind in ``RETENTION_KINDS`` is kept forever unless ``TASKS_RETENTION__<KIND>_DAYS`` is set;
then records older than that (finished ones only; never the shared sample) are deleted with
their objects, and a tombstone lets the API answer 410 ``purged`` instead of 404. Nothing
expires anywhere else: Redis keeps no record (docs/architecture.md, "System of record").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import structlog
from sqlalchemy.ext.asyncio import create_async_engine

from corral.task_schemas import (
    PRIORITY_NORMAL,
    RETENTION_KINDS,
    SYSTEM_PURGE,
    PurgeInput,
    PurgeKindResult,
    PurgeOutput,
    message_kwargs,
)
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.celery_app import app, settings
from corral.tasks.object_store import ObjectNotFound, get_object_store
from corral.tasks.retention.records import purge_kind

log = structlog.get_logger(__name__)

BEAT_ENTRY = "corral.purge"
BUDGET_S = 200.0  # below the soft limit; the next scheduled run continues


async def purge(params: PurgeInput, budget_s: float = BUDGET_S) -> PurgeOutput:
    retention = settings.retention
    if retention.database_url is None:
        return PurgeOutput(
            kinds=[], skipped="TASKS_RETENTION__DATABASE_URL is not set; nothing purged"
        )
    store = get_object_store(settings.storage)

    def delete_object(key: str) -> None:
        with contextlib.suppress(ObjectNotFound):
            store.delete(key)

    now = params.now or datetime.now(UTC)
    stop_at = time.monotonic() + budget_s
    engine = create_async_engine(retention.database_url)
    results: list[PurgeKindResult] = []
    complete = True
    try:
        for kind in RETENTION_KINDS:
            keep = getattr(retention, f"{kind}_days")
            if not complete:
                results.append(PurgeKindResult(kind=kind, keep_days=keep))
                continue
            result, finished = await purge_kind(
                engine,
                kind,
                keep,
                now,
                delete_object=delete_object,
                batch=retention.batch,
                stop_at=stop_at,
                dry_run=params.dry_run,
            )
            results.append(result)
            complete = complete and finished
    finally:
        await engine.dispose()
    return PurgeOutput(kinds=results, complete=complete)


@corral_task(SYSTEM_PURGE)
def purge_records(ctx: TaskContext, params: PurgeInput) -> PurgeOutput:
    """Delete records past retention, with their objects; tombstones for 410."""
    result = asyncio.run(purge(params))
    log.info("purged records", **result.model_dump(mode="json"))
    return result


app.conf.beat_schedule = {
    **(app.conf.beat_schedule or {}),
    BEAT_ENTRY: {
        "task": SYSTEM_PURGE.name,
        "schedule": settings.retention.interval_s,
        "kwargs": message_kwargs(PurgeInput(), owner_id="system"),
        "options": {
            "queue": SYSTEM_PURGE.default_queue.value,
            "expires": min(SYSTEM_PURGE.expires_s, settings.retention.interval_s),
            "priority": PRIORITY_NORMAL,
        },
    },
}
