"""Finding runs nobody will ever finish, so nothing stays "running" forever.

A periodic pass (in the app's lifespan) looks at runs still queued or running that have had no
news for ``idle_s``. For each it applies, in order: the stream's newest event; the outcome
Celery stored; and otherwise marks it ``lost`` with the reason when its stream is gone, it
outlived its expiry in the queue or its hard time limit, or no worker has it for two passes
in a row (its worker died). A ``TaskLost`` error event is written to the stream too, so anyone
still waiting on it is answered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio
import structlog
from celery import Celery
from sqlalchemy import func, select

from corral.app.celery_client import TaskSender
from corral.app.db import Database
from corral.app.db.base import utcnow
from corral.app.db.models import TaskRun
from corral.app.streams import ResultBackendReader
from corral.app.streams.long_poll import outcome_from_backend
from corral.app.streams.outcomes import TaskCancelled, TaskDone, TaskFailed
from corral.app.task_runs import repository
from corral.app.task_runs.settings import TaskRunSettings
from corral.app.task_runs.tracker import LOST_ERROR_TYPE, TaskRunTracker
from corral.task_schemas import REGISTRY, ErrorEvent, is_terminal

log = structlog.get_logger(__name__)

_DEFAULT_EXPIRES_S = 3600.0
_DEFAULT_TIME_LIMIT_S = 3600.0


@dataclass
class Reconciler:
    db: Database
    tracker: TaskRunTracker
    results: ResultBackendReader
    sender: TaskSender
    celery: Celery
    settings: TaskRunSettings
    _suspects: dict[str, int] = field(default_factory=dict)

    async def run_once(self, now: datetime | None = None) -> dict[str, str]:
        """One pass; returns ``{task_id: new_state}`` for the runs it changed."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=self.settings.idle_s)
        async with self.db.session() as session:
            ids = list(
                await session.scalars(
                    select(TaskRun.id)
                    .where(
                        TaskRun.state.in_(("queued", "running")),
                        func.coalesce(TaskRun.last_event_at, TaskRun.created_at) <= cutoff,
                    )
                    .order_by(TaskRun.created_at)
                    .limit(self.settings.batch)
                )
            )
        if not ids:
            self._suspects.clear()
            return {}
        changed: dict[str, str] = {}
        last = await repository.last_events(self.tracker.streams, ids)
        for task_id, item in last.items():
            if (
                item is not None
                and is_terminal(item[1])
                and (state := await self.tracker.apply(task_id, *item)) is not None
            ):
                changed[task_id] = state
        pending = [i for i in ids if i not in changed]
        running: list[TaskRun] = []
        for task_id in pending:
            state = await self._from_backend(task_id)
            if state is not None:
                changed[task_id] = state
                continue
            async with self.db.session() as session:
                row = await session.get(TaskRun, task_id)
            if row is None or row.state not in ("queued", "running"):
                continue
            item = last.get(task_id)
            if item is not None and row.state == "queued" and not is_terminal(item[1]):
                # The stream says it started; the row lagged (e.g. the app restarted).
                await self.tracker.apply(task_id, *item)
                async with self.db.session() as session:
                    row = await session.get(TaskRun, task_id)
                if row is None:
                    continue
            reason = self._lost_reason(row, item is None, now)
            if reason is not None:
                if await self._mark_lost(task_id, reason):
                    changed[task_id] = "lost"
            elif row.state == "running":
                running.append(row)
        if running:
            changed |= await self._check_workers(running)
        seen = {r.id for r in running}
        for task_id in list(self._suspects):
            if task_id not in seen:
                del self._suspects[task_id]
        if changed:
            log.info("reconciled task runs", changed=changed)
        return changed

    async def _from_backend(self, task_id: str) -> str | None:
        outcome = await outcome_from_backend(self.results, task_id)
        match outcome:
            case TaskDone(output=output):
                ok = await self.tracker.finish(task_id, "done", output=output)
                return "done" if ok else None
            case TaskFailed(error_type=error_type, message=message):
                ok = await self.tracker.finish(
                    task_id, "error", error_type=error_type, error_message=message
                )
                return "error" if ok else None
            case TaskCancelled(reason=reason):
                ok = await self.tracker.finish(
                    task_id, "cancelled", error_type="Cancelled", error_message=reason
                )
                return "cancelled" if ok else None
        return None

    def _lost_reason(self, row: TaskRun, stream_gone: bool, now: datetime) -> str | None:
        spec = REGISTRY.get(row.task_name)
        expires_s = spec.expires_s if spec else _DEFAULT_EXPIRES_S
        limit_s = spec.time_limit_s if spec else _DEFAULT_TIME_LIMIT_S
        grace = timedelta(seconds=self.settings.grace_s)
        if stream_gone:
            return "its event stream is gone (expired or never written) and no result was stored"
        if row.state == "queued" and now > row.created_at + timedelta(seconds=expires_s) + grace:
            return f"no worker started it within its expiry ({expires_s:g}s)"
        started = row.started_at or row.created_at
        if row.state == "running" and now > started + timedelta(seconds=limit_s) + grace:
            return f"still unfinished past its hard time limit ({limit_s:g}s): its worker was lost"
        return None

    async def _check_workers(self, running: list[TaskRun]) -> dict[str, str]:
        on_workers = await self._ids_on_workers()
        if on_workers is None:
            return {}
        changed: dict[str, str] = {}
        for row in running:
            if row.id in on_workers:
                self._suspects.pop(row.id, None)
                continue
            misses = self._suspects[row.id] = self._suspects.get(row.id, 0) + 1
            if misses >= 2 and await self._mark_lost(
                row.id, "no worker is running it: its worker was lost"
            ):
                changed[row.id] = "lost"
                self._suspects.pop(row.id, None)
        return changed

    async def _ids_on_workers(self) -> set[str] | None:
        """Ids every worker reports as active or reserved; ``None`` if workers can't be asked."""
        timeout = self.settings.inspect_timeout_s

        def ask() -> set[str]:
            inspect = self.celery.control.inspect(timeout=timeout)
            ids: set[str] = set()
            for reply in (inspect.active() or {}, inspect.reserved() or {}):
                for tasks in reply.values():
                    ids.update(str(t.get("id")) for t in tasks or [])
            return ids

        try:
            with anyio.fail_after(timeout * 2 + 5):
                return await anyio.to_thread.run_sync(ask)
        except Exception as exc:
            log.warning("could not ask workers for their tasks", error=repr(exc))
            return None

    async def _mark_lost(self, task_id: str, reason: str) -> bool:
        # Claim the outcome in Redis first (it wakes anyone waiting): if the task finished in the
        # meantime, its outcome wins and the row follows the stream instead. A late redelivery
        # then finds the outcome and does not run (corral.tasks.delivery).
        try:
            won, first = await self.sender.publish_outcome(
                task_id, ErrorEvent(error_type=LOST_ERROR_TYPE, message=reason)
            )
        except Exception as exc:
            log.warning("could not publish lost event", task_id=task_id, error=repr(exc))
            return False
        if not won:
            log.info("not lost after all", task_id=task_id, outcome=first)
            await self.tracker.sync([task_id])
            return False
        # The outcome is ours: the row is `lost` whether this write or the task's watcher (which
        # saw the same event on the stream, and may get there first) records it.
        await self.tracker.finish(task_id, "lost", error_type=LOST_ERROR_TYPE, error_message=reason)
        return True

    async def run_forever(self) -> None:
        interval = self.settings.reconcile_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run_once()
            except Exception as exc:
                log.error("task run reconcile failed", error=repr(exc))
