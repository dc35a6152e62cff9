"""Submitting, listing, reading and cancelling the caller's tasks.

Send after commit: the ``task_runs`` row is committed in its own short transaction before the
message is published, so a worker can never run (or finish) a task the database does not know.
The row then follows the task's events (``TaskRunTracker``).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app import idempotency
from corral.app.budgets import service as budgets
from corral.app.celery_client import BrokerUnavailable
from corral.app.db.base import utcnow
from corral.app.db.models import TaskRun
from corral.app.services import Services
from corral.app.task_runs import repository
from corral.app.task_runs.schemas import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    TaskEventOut,
    TaskRunDetail,
    TaskRunOut,
    TaskState,
)
from corral.task_schemas import CancelledEvent, Queue, TaskSpec
from corral.telemetry import current_trace_id, tracer


class TaskNotFound(LookupError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")


class TaskAlreadyFinished(RuntimeError):
    pass


def watch_timeout_s(services: Services, spec: TaskSpec[Any, Any]) -> float:
    """How long a run may legitimately take: queued until expiry, then its hard limit."""
    return spec.expires_s + spec.time_limit_s + services.settings.task_runs.grace_s


_TRACER = tracer()


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
    thread_id: str | None = None,
    route: str | None = None,
    idempotency_key: str | None = None,
    watch: bool = True,
) -> str:
    """Commit the run's row, then publish the task; returns the task id. ``route``: a queue of
    one worker (a session's holder), see ``TaskSender.send``. With ``idempotency_key``, a run
    the owner created with the same key within 24 h is returned instead and nothing is sent
    (``corral.app.idempotency``). ``watch=False``: the caller waits and records the run
    (``task_runs.waited.WaitedRun``), so no tracker follows it."""
    target = services.sender.resolve_queue(spec, queue)
    task_id = task_id or str(uuid.uuid4())
    await services.users.ensure(owner_id)
    if idempotency_key is not None:
        async with services.db.session() as session:
            earlier = await idempotency.find_recent(session, TaskRun, owner_id, idempotency_key)
        if earlier is not None:
            return earlier.id
    waiting = False
    try:
        with _TRACER.start_as_current_span("task_runs insert"):  # the row and its commit
            async with services.db.session() as session:
                waiting = await insert_run(
                    services,
                    session,
                    spec,
                    task_input,
                    owner_id=owner_id,
                    queue=target,
                    tool=tool,
                    priority=priority,
                    task_id=task_id,
                    thread_id=thread_id,
                    route=route,
                    idempotency_key=idempotency_key,
                )
    except IntegrityError as exc:
        if idempotency_key is None or not idempotency.is_key_conflict(exc):
            raise
        async with services.db.session() as session:  # a concurrent twin won: its run
            earlier = await idempotency.find_recent(session, TaskRun, owner_id, idempotency_key)
        if earlier is None:
            raise
        return earlier.id
    await dispatch(
        services,
        spec,
        task_input,
        owner_id=owner_id,
        queue=target,
        task_id=task_id,
        priority=priority,
        route=route,
        waiting=waiting,
        watch=watch,
    )
    return task_id


async def insert_run(
    services: Services,
    session: AsyncSession,
    spec: TaskSpec[Any, Any],
    task_input: BaseModel,
    *,
    owner_id: str,
    queue: Queue,
    task_id: str,
    tool: str | None = None,
    priority: int | None = None,
    thread_id: str | None = None,
    route: str | None = None,
    idempotency_key: str | None = None,
) -> bool:
    """The run's row, in the caller's transaction (``submit`` without its own commit, for a
    caller with its own writes to make in the same commit); then ``dispatch`` after the commit.
    True: fair share holds the run back (``waiting``). The caller has ``users.ensure``d the
    owner before opening its transaction (that may write in a transaction of its own)."""
    fair = services.fair if route is None else None  # a session's route is one at a time
    # Daily budgets: a user whose spend is used up is refused before anything runs.
    await budgets.check(session, services.budgets, owner_id, budgets.kinds_for_task(spec.name))
    waiting = False
    if fair is not None:  # fair share: past the cap, the run waits in SQL
        waiting = await fair.must_wait(session, owner_id, queue.value)
    await session.execute(
        insert(TaskRun).values(
            id=task_id,
            owner_id=owner_id,
            thread_id=thread_id,
            task_name=spec.name,
            queue=queue.value,
            tool=tool,
            state="waiting" if waiting else "queued",
            pending={"input": task_input.model_dump(mode="json"), "priority": priority}
            if waiting
            else None,
            created_at=utcnow(),
            attempts=0,
            usage_recorded=False,
            idempotency_key=idempotency_key,
            trace_id=current_trace_id(),
        )
    )
    return waiting


async def dispatch(
    services: Services,
    spec: TaskSpec[Any, Any],
    task_input: BaseModel,
    *,
    owner_id: str,
    queue: Queue,
    task_id: str,
    priority: int | None = None,
    route: str | None = None,
    waiting: bool = False,
    watch: bool = True,
) -> None:
    """After the row's commit: send the run, or (``waiting``) hand it to fair share.
    ``watch=False``: the caller waits for the outcome and records it (or calls
    ``tracker.watch`` if it stops waiting first), so no tracker follows the run."""
    if waiting:
        assert services.fair is not None
        await services.fair.announce(task_id, owner_id, queue.value)
        services.fair.wake()
        return
    await send_claimed(
        services,
        spec,
        task_input,
        owner_id=owner_id,
        queue=queue,
        task_id=task_id,
        priority=priority,
        route=route,
        watch=watch,
    )


async def send_claimed(
    services: Services,
    spec: TaskSpec[Any, Any],
    task_input: BaseModel,
    *,
    owner_id: str,
    queue: Queue,
    task_id: str,
    priority: int | None = None,
    route: str | None = None,
    watch: bool = True,
) -> None:
    """Publish a run whose row is committed as ``queued`` and follow it (``watch``)."""
    target = queue
    try:
        await services.sender.send(
            spec,
            task_input,
            owner_id=owner_id,
            queue=target,
            task_id=task_id,
            priority=priority,
            route=route,
        )
    except BrokerUnavailable as exc:
        await services.tracker.finish(
            task_id, "error", error_type="BrokerUnavailable", error_message=str(exc)
        )
        raise
    if watch:
        services.tracker.watch(task_id, timeout_s=watch_timeout_s(services, spec))


async def get_owned(services: Services, task_id: str, owner_id: str) -> TaskRun:
    async with services.db.session() as session:
        row = await repository.get_owned(session, task_id, owner_id)
    if row is None:
        raise TaskNotFound(task_id)
    return row


async def _current(services: Services, task_id: str, owner_id: str) -> TaskRun:
    """The row after applying its stream's newest event (never behind what a waiter saw)."""
    row = await get_owned(services, task_id, owner_id)
    if row.state in ACTIVE_STATES:
        await services.tracker.sync([task_id])
        row = await get_owned(services, task_id, owner_id)
    return row


async def sync_active(services: Services, owner_id: str) -> None:
    """Apply the newest event of the user's unfinished runs (a read that must not lag what a
    waiter already saw: the task list, today's budgets)."""
    async with services.db.session() as session:
        active = await repository.active_ids(session, owner_id)
    await services.tracker.sync(active)


async def list_runs(
    services: Services,
    owner_id: str,
    *,
    state: TaskState | None,
    limit: int,
    thread_id: str | None = None,
) -> list[TaskRunOut]:
    await sync_active(services, owner_id)
    async with services.db.session() as session:
        rows = await repository.list_for(
            session, owner_id, state=state, thread_id=thread_id, limit=limit
        )
    return [repository.to_out(r) for r in rows]


async def detail(services: Services, task_id: str, owner_id: str) -> TaskRunDetail:
    row = await _current(services, task_id, owner_id)
    events = [
        TaskEventOut(id=eid, type=fields.get("type", ""), data=fields)
        for eid, fields in await repository.events(services.redis, task_id)
    ]
    ahead = None
    if row.state == "waiting" and services.fair is not None:
        ahead = await services.fair.position(task_id, owner_id, row.queue)
    return TaskRunDetail(**repository.to_out(row).model_dump(), events=events, waiting_ahead=ahead)


async def cancel(
    services: Services, task_id: str, owner_id: str, reason: str = "cancelled by user"
) -> TaskState:
    row = await _current(services, task_id, owner_id)
    if row.state == "waiting" and await _cancel_waiting(services, task_id, reason):
        return "cancelled"
    row = await _current(services, task_id, owner_id)
    if row.state in TERMINAL_STATES:
        raise TaskAlreadyFinished(f"task {task_id} already finished ({row.state})")
    # The event first, so waiters answer at once; then the revoke kills the process. If the
    # task reached an outcome meanwhile, that outcome wins (first terminal outcome wins).
    won, first = await services.sender.publish_outcome(task_id, CancelledEvent(reason=reason))
    if not won:
        await services.tracker.sync([task_id])
        raise TaskAlreadyFinished(f"task {task_id} already finished ({first})")
    await services.tracker.finish(
        task_id, "cancelled", error_type="Cancelled", error_message=reason
    )
    await services.sender.revoke(task_id)
    return "cancelled"


async def _cancel_waiting(services: Services, task_id: str, reason: str) -> bool:
    """A run still in fair share's backlog was never sent: end it in SQL (if still waiting)."""
    async with services.db.session() as session:
        result: Any = await session.execute(
            update(TaskRun)
            .where(TaskRun.id == task_id, TaskRun.state == "waiting")
            .values(
                state="cancelled",
                finished_at=utcnow(),
                error_type="Cancelled",
                error_message=reason,
                pending=None,
            )
        )
    if result.rowcount:
        await services.sender.publish_outcome(task_id, CancelledEvent(reason=reason))
    return bool(result.rowcount)
