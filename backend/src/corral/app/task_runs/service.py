"""Submitting, listing, reading and cancelling the caller's tasks."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel

from corral.app.services import Services
from corral.app.task_runs.repository import now_utc
from corral.app.task_runs.schemas import (
    TaskEventOut,
    TaskRunDetail,
    TaskRunOut,
    TaskRunRecord,
    TaskState,
)
from corral.task_schemas import CancelledEvent, Queue, TaskSpec


class TaskNotFound(LookupError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")


class TaskAlreadyFinished(RuntimeError):
    pass


TERMINAL_STATES: frozenset[TaskState] = frozenset({"done", "error", "cancelled"})


async def submit(
    services: Services,
    spec: TaskSpec[Any, Any],
    task_input: BaseModel,
    *,
    owner_id: str,
    queue: Queue | None = None,
    tool: str | None = None,
    priority: int | None = None,
    task_id: str | None = None,
) -> str:
    """Record who owns the task, then publish it (the record exists before any worker can run)."""
    target = services.sender.resolve_queue(spec, queue)
    task_id = task_id or str(uuid.uuid4())
    await services.task_runs.add(
        TaskRunRecord(
            task_id=task_id,
            owner_id=owner_id,
            task_name=spec.name,
            queue=target.value,
            tool=tool,
            created_at=now_utc(),
        )
    )
    return await services.sender.send(
        spec, task_input, owner_id=owner_id, queue=target, task_id=task_id, priority=priority
    )


async def get_owned(services: Services, task_id: str, owner_id: str) -> TaskRunRecord:
    record = await services.task_runs.get(task_id)
    if record is None or record.owner_id != owner_id:
        raise TaskNotFound(task_id)
    return record


def _out(record: TaskRunRecord, state: TaskState) -> TaskRunOut:
    return TaskRunOut(
        task_id=record.task_id,
        task_name=record.task_name,
        queue=record.queue,
        tool=record.tool,
        created_at=record.created_at,
        state=state,
    )


async def list_runs(
    services: Services, owner_id: str, *, state: TaskState | None, limit: int
) -> list[TaskRunOut]:
    # Over-fetch when filtering so a page of `limit` matching tasks is usually complete.
    ids = await services.task_runs.list_ids(owner_id, limit if state is None else limit * 10)
    records = [r for r in [await services.task_runs.get(i) for i in ids] if r is not None]
    states = await services.task_runs.states([r.task_id for r in records])
    runs = [_out(r, s) for r, s in zip(records, states, strict=True)]
    if state is not None:
        runs = [r for r in runs if r.state == state]
    return runs[:limit]


async def detail(services: Services, task_id: str, owner_id: str) -> TaskRunDetail:
    record = await get_owned(services, task_id, owner_id)
    (state,) = await services.task_runs.states([task_id])
    events = [
        TaskEventOut(id=eid, type=fields.get("type", ""), data=fields)
        for eid, fields in await services.task_runs.events(task_id)
    ]
    return TaskRunDetail(**_out(record, state).model_dump(), events=events)


async def cancel(services: Services, task_id: str, owner_id: str) -> TaskState:
    await get_owned(services, task_id, owner_id)
    (state,) = await services.task_runs.states([task_id])
    if state in TERMINAL_STATES:
        raise TaskAlreadyFinished(f"task {task_id} already finished ({state})")
    # The event first, so waiters answer at once; then the revoke kills the process.
    await services.sender.publish_event(task_id, CancelledEvent(reason="cancelled by user"))
    await services.sender.revoke(task_id)
    return "cancelled"
