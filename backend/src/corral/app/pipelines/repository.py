"""Pipeline runs in SQL (``pipeline_runs`` + one ``pipeline_steps`` row per step), their
transitions on a Redis stream.

SQL is the record: a run and its steps stay until retention (``system.purge``) deletes them.
The stream ``pipeline:{id}:events`` (same entry format as a task's, so ``StreamHub`` follows it)
is only the live feed; it expires with the stream TTL and losing it loses nothing. The cancel
request is the run's ``cancel_requested`` column. While a run is running only its scheduler
writes its steps; each transition writes one step row and the run's usage in one transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.auth.users import ensure_user_in
from corral.app.clock import now
from corral.app.db import Database
from corral.app.db.models import PipelineRunRow, PipelineStepRow
from corral.app.pipelines.schemas import PipelineRun, StepState
from corral.config import StreamSettings
from corral.task_schemas import _Event, encode_event


def events_key(run_id: str) -> str:
    return f"pipeline:{run_id}:events"


def _step_values(step: StepState) -> dict[str, Any]:
    return {
        "kind": step.kind,
        "status": step.status,
        "task_ids": list(step.task_ids),
        "output": step.output,
        "error": step.error.model_dump() if step.error else None,
        "model": step.model,
        "usage": step.usage.model_dump(),
        "queued_at": step.queued_at,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
    }


def _run_values(run: PipelineRun) -> dict[str, Any]:
    return {
        "status": run.status,
        "usage": run.usage.model_dump(),
        "error": run.error,
        "finished_at": run.finished_at,
        "updated_at": now(),
    }


def _to_run(row: PipelineRunRow, steps: list[PipelineStepRow]) -> PipelineRun:
    return PipelineRun.model_validate(
        {
            "run_id": row.id,
            "owner_id": row.owner_id,
            "status": row.status,
            "created_at": row.created_at,
            "finished_at": row.finished_at,
            "error": row.error,
            "usage": row.usage or {},
            "definition": row.definition,
            "steps": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "status": s.status,
                    "task_ids": s.task_ids or [],
                    "output": s.output,
                    "error": s.error,
                    "model": s.model,
                    "usage": s.usage or {},
                    "queued_at": s.queued_at,
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                }
                for s in sorted(steps, key=lambda s: s.position)
            ],
        }
    )


class PipelineRunRepository:
    def __init__(self, db: Database, redis: aioredis.Redis, streams: StreamSettings) -> None:
        self._db = db
        self._redis = redis
        self._ttl_s = streams.ttl_s
        self._maxlen = streams.maxlen

    async def create(self, run: PipelineRun) -> None:
        await self.add_missing([run])

    async def add_missing(self, runs: list[PipelineRun]) -> int:
        """Insert runs (with their steps) not stored yet; idempotent. Returns how many."""
        if not runs:
            return 0
        async with self._db.session() as session:
            known = set(
                await session.scalars(
                    select(PipelineRunRow.id).where(PipelineRunRow.id.in_([r.run_id for r in runs]))
                )
            )
            added = 0
            for run in runs:
                if run.run_id in known:
                    continue
                await ensure_user_in(session, run.owner_id)
                session.add(
                    PipelineRunRow(
                        id=run.run_id,
                        owner_id=run.owner_id,
                        definition=run.definition.model_dump(mode="json"),
                        created_at=run.created_at,
                        cancel_requested=False,
                        **_run_values(run),
                    )
                )
                await session.flush()
                for position, step in enumerate(run.steps):
                    values = _step_values(step)
                    values["usage"] = step.usage.model_dump()
                    session.add(
                        PipelineStepRow(
                            run_id=run.run_id,
                            name=step.name,
                            position=position,
                            **_jsonable(values),
                        )
                    )
                added += 1
        return added

    async def save_step(
        self,
        run: PipelineRun,
        name: str,
        also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> None:
        """One step's state and the run's usage, in one transaction (with ``also``'s writes)."""
        step = run.step(name)
        async with self._db.session() as session:
            if also is not None:
                await also(session)
            await session.execute(
                update(PipelineStepRow)
                .where(PipelineStepRow.run_id == run.run_id, PipelineStepRow.name == name)
                .values(**_jsonable(_step_values(step)))
            )
            await session.execute(
                update(PipelineRunRow)
                .where(PipelineRunRow.id == run.run_id)
                .values(usage=run.usage.model_dump(), updated_at=now())
            )

    async def save(self, run: PipelineRun) -> None:
        """The run and every step."""
        async with self._db.session() as session:
            for step in run.steps:
                await session.execute(
                    update(PipelineStepRow)
                    .where(PipelineStepRow.run_id == run.run_id, PipelineStepRow.name == step.name)
                    .values(**_jsonable(_step_values(step)))
                )
            await session.execute(
                update(PipelineRunRow)
                .where(PipelineRunRow.id == run.run_id)
                .values(**_run_values(run))
            )

    async def get(self, run_id: str) -> PipelineRun | None:
        async with self._db.session() as session:
            row = await session.get(PipelineRunRow, run_id[:64])
            if row is None:
                return None
            steps = list(
                await session.scalars(
                    select(PipelineStepRow).where(PipelineStepRow.run_id == row.id)
                )
            )
        return _to_run(row, steps)

    async def list_for_owner(self, owner_id: str, limit: int) -> list[PipelineRun]:
        async with self._db.session() as session:
            rows = list(
                await session.scalars(
                    select(PipelineRunRow)
                    .where(PipelineRunRow.owner_id == owner_id)
                    .order_by(PipelineRunRow.created_at.desc(), PipelineRunRow.id)
                    .limit(limit)
                )
            )
            ids = [r.id for r in rows]
            steps: dict[str, list[PipelineStepRow]] = {i: [] for i in ids}
            if ids:
                for step in await session.scalars(
                    select(PipelineStepRow).where(PipelineStepRow.run_id.in_(ids))
                ):
                    steps[step.run_id].append(step)
        return [_to_run(r, steps[r.id]) for r in rows]

    async def request_cancel(self, run_id: str) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(PipelineRunRow)
                .where(PipelineRunRow.id == run_id)
                .values(cancel_requested=True, updated_at=now())
            )

    async def cancel_requested(self, run_id: str) -> bool:
        async with self._db.session() as session:
            return await self.cancel_requested_in(session, run_id)

    @staticmethod
    async def cancel_requested_in(session: AsyncSession, run_id: str) -> bool:
        return bool(
            await session.scalar(
                select(PipelineRunRow.cancel_requested).where(PipelineRunRow.id == run_id)
            )
        )

    async def publish(self, run_id: str, event: _Event) -> str:
        key = events_key(run_id)
        fields: Any = encode_event(event)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
        pipe.expire(key, self._ttl_s)
        entry_id, _ = await pipe.execute()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """Step outputs may hold values JSON columns cannot (e.g. tuples); round-trip them."""
    import json

    for name in ("output", "error", "usage", "task_ids"):
        if values.get(name) is not None:
            values[name] = json.loads(json.dumps(values[name], default=str))
    return values
