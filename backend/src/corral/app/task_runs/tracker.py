"""Keeping ``task_runs`` rows in step with their tasks' event streams.

Each task the app sends is followed through the process's ``StreamHub`` (no extra Redis
connections) and its row is written on state changes only: ``running`` on the first
``started``/``progress``, then once at the end with the error, the output's object keys, its
artifacts and its token usage. Reads that must be current (``sync``) apply a stream's newest
event first. The first terminal outcome wins: final states (``lost`` included) never change;
a different outcome arriving later is kept in ``ignored_outcomes``, not applied. Redis decides
the winner first (``corral.task_schemas.delivery``); this is the same rule in the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db import Database
from corral.app.db.base import utcnow
from corral.app.db.models import Artifact, TaskRun
from corral.app.storage.store import KEY_RE
from corral.app.streams import ResultBackendReader, StreamHub, TaskDone
from corral.app.streams.long_poll import outcome_from_backend
from corral.app.task_runs import repository
from corral.app.usage import repository as usage
from corral.task_schemas import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    ProgressEvent,
    StartedEvent,
    TaskEvent,
    is_terminal,
    task_events_key,
)
from corral.task_schemas.sessions import SESSION_SNAPSHOT_KIND

log = structlog.get_logger(__name__)

LOST_ERROR_TYPE = "TaskLost"
_OPEN = ("queued", "running")  # states an outcome may still replace (the first one wins)
_MAX_REFS = 200
_MAX_IGNORED = 20
_MAX_SYNCED = 10_000


def object_refs(output: Any, owner_id: str, limit: int = _MAX_REFS) -> list[dict[str, Any]]:
    """Objects of ``owner_id`` named in an output: ``{"key": k, ...}`` or ``{"<x>_key": k}``."""
    found: list[dict[str, Any]] = []

    def walk(node: Any, depth: int) -> None:
        if depth < 0 or len(found) >= limit:
            return
        if isinstance(node, dict):
            for name, value in node.items():
                if (
                    (name == "key" or name.endswith("_key"))
                    and isinstance(value, str)
                    and KEY_RE.fullmatch(value)
                    and value.split("/", 1)[0] == owner_id
                ):
                    # ``{"key": k, "name": ..., "size": ...}`` describes k; ``x_key`` is bare.
                    found.append(node if name == "key" else {"key": value})
                else:
                    walk(value, depth - 1)
        elif isinstance(node, list):
            for value in node[:1000]:
                walk(value, depth - 1)

    walk(output, 6)
    return found


FinishHook = Callable[[AsyncSession, str, str, Any], Awaitable[None]]
"""``(session, task_id, state, output)``, called once per run when its end is recorded."""


class TaskRunTracker:
    def __init__(
        self,
        db: Database,
        hub: StreamHub,
        results: ResultBackendReader,
        streams: aioredis.Redis,
    ) -> None:
        self._db = db
        self._hub = hub
        self._results = results
        self.streams = streams
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._synced: dict[str, str] = {}  # task id -> newest non-terminal entry applied by sync
        self._finish_hooks: dict[str, FinishHook] = {}
        self._closed = False

    def on_finish(self, task_name: str, hook: FinishHook) -> None:
        """Run ``hook`` in the transaction that records the end of each ``task_name`` run
        (whoever records it: a waiting request, a watcher, a sync, the reconciler)."""
        self._finish_hooks[task_name] = hook

    # -- following live ------------------------------------------------------------------------

    @property
    def watching(self) -> int:
        return len(self._watchers)

    def watch(self, task_id: str, *, timeout_s: float) -> None:
        """Follow ``task_id`` to its terminal event or ``timeout_s`` (then reconcile takes over)."""
        if self._closed or task_id in self._watchers:
            return
        task = asyncio.get_running_loop().create_task(
            self._follow(task_id, timeout_s), name=f"task-run-watch:{task_id}"
        )
        self._watchers[task_id] = task
        task.add_done_callback(lambda t: self._watchers.pop(task_id, None))

    async def _follow(self, task_id: str, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        running = False
        try:
            async with self._hub.subscribe(task_events_key(task_id)) as sub:
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        entry_id, event = await asyncio.wait_for(sub.get(), remaining)
                    except TimeoutError:
                        return
                    # Events already waiting are coalesced: only the newest state is written.
                    batch = [(entry_id, event), *sub.drain()]
                    final = next((b for b in batch if is_terminal(b[1])), None)
                    if final is not None:
                        started = [b for b in batch if isinstance(b[1], StartedEvent)]
                        await self.apply(task_id, *final, started=started[-1] if started else None)
                        return
                    if not running:
                        started = [b for b in batch if isinstance(b[1], StartedEvent)]
                        await self.apply(task_id, *(started[-1] if started else batch[-1]))
                        running = True
                    elif started := [b for b in batch if isinstance(b[1], StartedEvent)]:
                        await self.apply(task_id, *started[-1])  # a retry: attempt changes
        except Exception as exc:  # a lost DB write is repaired by sync/reconcile
            log.warning("task run watcher failed", task_id=task_id, error=repr(exc))

    async def resume(self, timeout_s: float, limit: int = 10_000) -> int:
        """After a restart: follow every run still queued or running."""
        async with self._db.session() as session:
            ids = list(
                await session.scalars(
                    select(TaskRun.id).where(TaskRun.state.in_(("queued", "running"))).limit(limit)
                )
            )
        for task_id in ids:
            self.watch(task_id, timeout_s=timeout_s)
        return len(ids)

    async def sync(self, task_ids: Sequence[str]) -> None:
        """Apply each stream's newest event now (for reads that must not lag the stream).

        A non-terminal entry already applied here is not applied again, so frequent reads
        while a task runs (``GET /api/tasks`` polled) cost one Redis round trip, not a write."""
        if not task_ids:
            return
        for task_id, item in (await repository.last_events(self.streams, task_ids)).items():
            if item is None:
                continue
            terminal = is_terminal(item[1])
            if not terminal and self._synced.get(task_id) == item[0]:
                continue
            await self.apply(task_id, *item)
            if terminal:
                self._synced.pop(task_id, None)
            else:
                if len(self._synced) >= _MAX_SYNCED:
                    self._synced.clear()
                self._synced[task_id] = item[0]

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._watchers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- writing rows --------------------------------------------------------------------------

    async def apply(
        self,
        task_id: str,
        entry_id: str,
        event: TaskEvent,
        *,
        started: tuple[str, TaskEvent] | None = None,
        session: AsyncSession | None = None,
    ) -> str | None:
        """Write what ``event`` changes; returns the new state, or ``None`` if nothing changed.

        ``started``: the run's ``started`` entry when it was coalesced into a terminal one.
        ``session``: write a terminal event in the caller's transaction (a request recording
        its own writes in the same commit), not in one of the tracker's own.
        """
        when = repository.entry_time(entry_id)
        extra: dict[str, Any] = {}
        if started is not None and isinstance(started[1], StartedEvent):
            extra = {
                "started_at": func.coalesce(TaskRun.started_at, repository.entry_time(started[0])),
                "attempts": started[1].attempt,
                "worker": started[1].worker[:200] or None,
            }
        if isinstance(event, StartedEvent | ProgressEvent):
            return await self._mark_running(task_id, entry_id, when, event)
        if isinstance(event, DoneEvent | ErrorEvent) and event.cpu_s is not None:
            extra["cpu_s"] = event.cpu_s  # the budget ledger
        if isinstance(event, DoneEvent):
            output = await self._output(task_id, event)
            changed = await self.finish(
                task_id, "done", when=when, entry_id=entry_id, output=output, extra=extra,
                session=session,
            )  # fmt: skip
            return "done" if changed else None
        if isinstance(event, ErrorEvent):
            state = "lost" if event.error_type == LOST_ERROR_TYPE else "error"
            changed = await self.finish(
                task_id,
                state,
                when=when,
                entry_id=entry_id,
                error_type=event.error_type,
                error_message=event.message,
                extra=extra,
                session=session,
            )
            return state if changed else None
        if isinstance(event, CancelledEvent):
            changed = await self.finish(
                task_id,
                "cancelled",
                when=when,
                entry_id=entry_id,
                error_type="Cancelled",
                error_message=event.reason,
                extra=extra,
                session=session,
            )
            return "cancelled" if changed else None
        return None

    async def _mark_running(
        self, task_id: str, entry_id: str, when: datetime, event: StartedEvent | ProgressEvent
    ) -> str | None:
        values: dict[str, Any] = {
            "state": "running",
            "last_event_at": when,
            "last_event_id": entry_id,
            # started_at is the first start; a retry keeps it.
            "started_at": func.coalesce(TaskRun.started_at, when),
        }
        condition = TaskRun.state == "queued"
        if isinstance(event, StartedEvent):
            values |= {"attempts": event.attempt, "worker": event.worker[:200] or None}
            condition = or_(
                condition, (TaskRun.state == "running") & (TaskRun.attempts < event.attempt)
            )
        async with self._db.session() as session:
            result: Any = await session.execute(
                update(TaskRun).where(TaskRun.id == task_id, condition).values(**values)
            )
        return "running" if result.rowcount else None

    async def _output(self, task_id: str, event: DoneEvent) -> Any:
        if event.result is not None:
            try:
                return json.loads(event.result)
            except ValueError:
                return None
        outcome = await outcome_from_backend(self._results, task_id)
        return outcome.output if isinstance(outcome, TaskDone) else None

    async def finish(
        self,
        task_id: str,
        state: str,
        *,
        when: datetime | None = None,
        entry_id: str | None = None,
        output: Any = None,
        error_type: str | None = None,
        error_message: str | None = None,
        extra: dict[str, Any] | None = None,
        session: AsyncSession | None = None,
    ) -> bool:
        """Record the end of a run once; True if this call did. A different later outcome is
        recorded in ``ignored_outcomes`` and changes nothing else. ``session``: in the
        caller's transaction (committed by the caller)."""
        scope: contextlib.AbstractAsyncContextManager[AsyncSession] = (
            contextlib.nullcontext(session) if session is not None else self._db.session()
        )
        async with scope as session:
            return await self._finish_in(
                session, task_id, state, when=when or utcnow(), entry_id=entry_id,
                output=output, error_type=error_type, error_message=error_message, extra=extra,
            )  # fmt: skip

    async def _finish_in(
        self,
        session: AsyncSession,
        task_id: str,
        state: str,
        *,
        when: datetime,
        entry_id: str | None,
        output: Any,
        error_type: str | None,
        error_message: str | None,
        extra: dict[str, Any] | None,
    ) -> bool:
        row = await session.get(TaskRun, task_id)
        if row is None:
            return False
        if row.state not in _OPEN:
            if state != row.state or error_type != row.error_type:
                self._record_ignored(row, state, error_type, when)
            return False
        refs = object_refs(output, row.owner_id) if state == "done" else []
        values: dict[str, Any] = {
            "state": state,
            "finished_at": when,
            "last_event_at": when,
            "error_type": error_type,
            "error_message": error_message[:10_000] if error_message else None,
            "output_refs": [r["key"] for r in refs] or None,
        }
        if entry_id is not None:
            values["last_event_id"] = entry_id
        needs_usage = state == "done" and not row.usage_recorded
        if state == "done":
            values["rows_scanned"] = usage.rows_scanned_in_output(output)
        if needs_usage:
            values["usage_recorded"] = True  # in this statement: no second UPDATE at the flush
        values |= extra or {}
        # The loaded ``row`` is not brought up to date (no ``synchronize_session``): only its
        # unchanged columns (id, owner, thread, task) are read below, and evaluating the new
        # values into it was ~5 % of an HTTP invoke's CPU.
        result: Any = await session.execute(
            update(TaskRun)
            .where(TaskRun.id == task_id, TaskRun.state.in_(_OPEN))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:
            return False
        if state == "done":
            await self._add_artifacts(session, row, refs)
            if needs_usage:
                self._add_usage(session, row, output, when)
        if (hook := self._finish_hooks.get(row.task_name)) is not None:
            await hook(session, row.id, state, output)
        return True

    @staticmethod
    def _record_ignored(row: TaskRun, state: str, error_type: str | None, when: datetime) -> None:
        ignored = list(row.ignored_outcomes or [])
        if len(ignored) >= _MAX_IGNORED:
            return
        ignored.append({"state": state, "error_type": error_type, "at": when.isoformat()})
        row.ignored_outcomes = ignored
        log.info("late outcome ignored", task_id=row.id, kept=row.state, ignored=state)

    async def _add_artifacts(
        self, session: Any, row: TaskRun, refs: Iterable[dict[str, Any]]
    ) -> None:
        # A research session's snapshots are its own state, not files the user's tools made.
        refs = [r for r in refs if r["key"].split("/")[1:2] != [SESSION_SNAPSHOT_KIND]]
        if not refs:
            return
        keys = [r["key"] for r in refs]
        existing = set(await session.scalars(select(Artifact.key).where(Artifact.key.in_(keys))))
        for ref in refs:
            key = ref["key"]
            if key in existing:
                continue
            existing.add(key)
            size = ref.get("size")
            session.add(
                Artifact(
                    owner_id=row.owner_id,
                    thread_id=row.thread_id,
                    task_run_id=row.id,
                    key=key,
                    kind=key.split("/")[1],
                    name=str(ref.get("name"))[:200] if ref.get("name") else None,
                    content_type=str(ref.get("content_type"))[:200]
                    if ref.get("content_type")
                    else None,
                    size=size if isinstance(size, int) else None,
                )
            )

    def _add_usage(self, session: Any, row: TaskRun, output: Any, when: datetime) -> None:
        calls = usage.calls_in_output(output)
        for call in calls:
            usage.add(
                session,
                owner_id=row.owner_id,
                model=call.model,
                provider_model=call.provider_model,
                usage=call.usage,
                source="task",
                thread_id=row.thread_id,
                task_run_id=row.id,
                when=when,
            )
