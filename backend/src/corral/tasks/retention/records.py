"""The SQL side of ``system.purge``: which records are past retention, and deleting them.

The workers never import the app, so the few tables touched are declared here by name only
(``sqlalchemy.table``): ``datasets``, ``pipeline_runs`` + ``pipeline_steps``, ``task_runs`` +
``artifacts`` (and the references to a task run in ``tool_calls``/``token_usage``, set null),
and ``purged_records`` (the tombstones the API answers 410 from). Per record: its objects are
deleted first (a missing object counts as deleted); only then, in one transaction, the record
goes and its tombstone is written. A record whose objects could not be deleted stays and is
tried again on the next run, so no record ever points at a deleted object.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import column, delete, insert, select, table, update
from sqlalchemy.ext.asyncio import AsyncConnection

from corral.task_schemas import SAMPLE_OWNER, PurgeKindResult

log = structlog.get_logger(__name__)

datasets = table(
    "datasets",
    column("id"),
    column("owner_id"),
    column("key"),
    column("parquet_key"),
    column("status"),
    column("created_at"),
)
pipeline_runs = table(
    "pipeline_runs", column("id"), column("owner_id"), column("status"), column("created_at")
)
pipeline_steps = table("pipeline_steps", column("run_id"))
task_runs = table(
    "task_runs", column("id"), column("owner_id"), column("state"), column("created_at")
)
artifacts = table("artifacts", column("id"), column("task_run_id"), column("key"))
tool_calls = table("tool_calls", column("task_run_id"))
token_usage = table("token_usage", column("task_run_id"))
purged = table(
    "purged_records",
    column("kind"),
    column("record_id"),
    column("owner_id"),
    column("created_at"),
    column("purged_at"),
)

DeleteObject = Callable[[str], None]
"""Deletes one object; raises on failure (a missing object is not a failure)."""


@dataclass(frozen=True)
class Expired:
    id: str
    owner_id: str
    created_at: Any
    keys: tuple[str, ...]


def _naive_if_sqlite(conn: AsyncConnection, when: datetime) -> datetime:
    # The app stores UTC; on SQLite without the zone (its UTCDateTime type).
    return when.replace(tzinfo=None) if conn.dialect.name == "sqlite" else when


async def _expired(conn: AsyncConnection, kind: str, cutoff: datetime, batch: int) -> list[Expired]:
    cutoff = _naive_if_sqlite(conn, cutoff)
    if kind == "dataset":
        rows = await conn.execute(
            select(datasets.c.id, datasets.c.owner_id, datasets.c.created_at, datasets.c.key,
                   datasets.c.parquet_key)
            .where(
                datasets.c.created_at < cutoff,
                datasets.c.owner_id != SAMPLE_OWNER,
                datasets.c.status != "processing",
            )
            .limit(batch)
        )  # fmt: skip
        return [Expired(r[0], r[1], r[2], tuple(k for k in {r[3], r[4]} if k)) for r in rows]
    if kind == "pipeline_run":
        rows = await conn.execute(
            select(pipeline_runs.c.id, pipeline_runs.c.owner_id, pipeline_runs.c.created_at)
            .where(pipeline_runs.c.created_at < cutoff, pipeline_runs.c.status != "running")
            .limit(batch)
        )
        return [Expired(r[0], r[1], r[2], ()) for r in rows]
    rows = await conn.execute(
        select(task_runs.c.id, task_runs.c.owner_id, task_runs.c.created_at)
        .where(task_runs.c.created_at < cutoff, task_runs.c.state.not_in(("queued", "running")))
        .limit(batch)
    )
    found = [(r[0], r[1], r[2]) for r in rows]
    keys: dict[str, list[str]] = {i: [] for i, _, _ in found}
    if found:
        for run_id, key in await conn.execute(
            select(artifacts.c.task_run_id, artifacts.c.key).where(
                artifacts.c.task_run_id.in_(list(keys))
            )
        ):
            keys[run_id].append(key)
    return [Expired(i, o, c, tuple(keys[i])) for i, o, c in found]


async def _drop(conn: AsyncConnection, kind: str, ids: list[str]) -> None:
    if kind == "dataset":
        await conn.execute(delete(datasets).where(datasets.c.id.in_(ids)))
    elif kind == "pipeline_run":
        await conn.execute(delete(pipeline_steps).where(pipeline_steps.c.run_id.in_(ids)))
        await conn.execute(delete(pipeline_runs).where(pipeline_runs.c.id.in_(ids)))
    else:
        await conn.execute(delete(artifacts).where(artifacts.c.task_run_id.in_(ids)))
        for ref in (tool_calls, token_usage):
            await conn.execute(
                update(ref).where(ref.c.task_run_id.in_(ids)).values(task_run_id=None)
            )
        await conn.execute(delete(task_runs).where(task_runs.c.id.in_(ids)))


def _delete_objects(keys: Iterable[str], delete_object: DeleteObject) -> tuple[int, bool]:
    done = 0
    for key in keys:
        try:
            delete_object(key)
        except Exception as exc:
            log.warning("could not delete object; record kept for the next run", key=key,
                        error=str(exc))  # fmt: skip
            return done, False
        done += 1
    return done, True


async def purge_kind(
    engine: Any,
    kind: str,
    keep_days: float | None,
    now: datetime,
    *,
    delete_object: DeleteObject,
    batch: int,
    stop_at: float,
    dry_run: bool,
) -> tuple[PurgeKindResult, bool]:
    """Purge one kind; returns its result and whether it finished (False: out of time)."""
    result = PurgeKindResult(kind=kind, keep_days=keep_days)
    if keep_days is None:
        return result, True
    cutoff = now - timedelta(days=keep_days)
    failed: set[str] = set()
    while True:
        if time.monotonic() > stop_at:
            return result, False
        async with engine.connect() as conn:
            found = [e for e in await _expired(conn, kind, cutoff, batch + len(failed))
                     if e.id not in failed][:batch]  # fmt: skip
        if not found:
            return result, True
        if dry_run:
            result.deleted += len(found)
            return result, True
        gone: list[Expired] = []
        for record in found:
            count, ok = _delete_objects(record.keys, delete_object)
            result.objects_deleted += count
            if ok:
                gone.append(record)
            else:
                result.errors += 1
                failed.add(record.id)
        if gone:
            async with engine.begin() as conn:
                await _drop(conn, kind, [g.id for g in gone])
                await conn.execute(
                    insert(purged),
                    [
                        {"kind": kind, "record_id": g.id, "owner_id": g.owner_id,
                         "created_at": g.created_at, "purged_at": _naive_if_sqlite(conn, now)}
                        for g in gone
                    ],
                )  # fmt: skip
            result.deleted += len(gone)
        if len(found) < batch and not gone:
            return result, True
