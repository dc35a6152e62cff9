"""Task runs in SQL (the record) and their event streams in Redis (the live detail)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.models import TaskRun
from corral.app.task_runs.schemas import ACTIVE_STATES, TaskRunOut, TaskState
from corral.task_schemas import TaskEvent, decode_event, task_events_key


async def get(session: AsyncSession, task_id: str) -> TaskRun | None:
    return await session.get(TaskRun, task_id)


async def get_owned(session: AsyncSession, task_id: str, owner_id: str) -> TaskRun | None:
    row = await session.get(TaskRun, task_id)
    return row if row is not None and row.owner_id == owner_id else None


async def list_for(
    session: AsyncSession,
    owner_id: str,
    *,
    state: TaskState | None = None,
    thread_id: str | None = None,
    limit: int = 50,
) -> Sequence[TaskRun]:
    query = select(TaskRun).where(TaskRun.owner_id == owner_id)
    if state is not None:
        query = query.where(TaskRun.state == state)
    if thread_id is not None:
        query = query.where(TaskRun.thread_id == thread_id)
    query = query.order_by(TaskRun.created_at.desc(), TaskRun.id).limit(limit)
    return (await session.scalars(query)).all()


async def active_ids(session: AsyncSession, owner_id: str, limit: int = 500) -> list[str]:
    rows = await session.scalars(
        select(TaskRun.id)
        .where(TaskRun.owner_id == owner_id, TaskRun.state.in_(ACTIVE_STATES))
        .limit(limit)
    )
    return list(rows)


def to_out(row: TaskRun) -> TaskRunOut:
    return TaskRunOut(
        task_id=row.id,
        task_name=row.task_name,
        queue=row.queue,
        tool=row.tool,
        thread_id=row.thread_id,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        state=row.state,
        attempts=row.attempts,
        error_type=row.error_type,
        error_message=row.error_message,
        output_refs=row.output_refs or [],
        trace_id=row.trace_id,
    )


async def last_events(
    redis: aioredis.Redis, task_ids: Sequence[str]
) -> dict[str, tuple[str, TaskEvent] | None]:
    """The newest entry of each task's stream that is not an ``ignored`` late duplicate
    (``None``: no stream, e.g. expired)."""
    pipe = redis.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.xrevrange(task_events_key(task_id), count=_LOOK_BACK)
    results: list[Any] = await pipe.execute()
    out: dict[str, tuple[str, TaskEvent] | None] = {}
    for task_id, last in zip(task_ids, results, strict=True):
        out[task_id] = None
        for entry_id, fields in last or []:
            try:
                event = decode_event(fields)
            except ValueError:
                break
            if event.type != "ignored":
                out[task_id] = (str(entry_id), event)
                break
    return out


_LOOK_BACK = 16  # entries read back past `ignored` duplicates to find the real newest one


async def events(
    redis: aioredis.Redis, task_id: str, after: str = "-"
) -> list[tuple[str, dict[str, str]]]:
    start = after if after == "-" else f"({after}"
    entries: Any = await redis.xrange(task_events_key(task_id), min=start, count=10_000)
    return [(entry_id, dict(fields)) for entry_id, fields in entries]


def entry_time(entry_id: str) -> datetime:
    from datetime import UTC

    ms = int(entry_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, UTC)
