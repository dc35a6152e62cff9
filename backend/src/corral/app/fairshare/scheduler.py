"""Fair share: a user's running + reserved tasks per queue are capped; the rest wait in SQL.

A send past the user's cap is recorded as a ``waiting`` task run holding its input
(``TaskRun.pending``); nothing reaches the broker. Released in a sweep driven by terminal
outcomes (the tracker's ``finish``) and a timer: per (user, queue) with waiting work, up to
``cap - active`` runs, urgent first then oldest, users served round-robin (the one served
longest ago first). The backlog is in SQL, so an app restart or a Redis flush loses none of it.

Exactly once: a run leaves ``waiting`` only through a conditional ``UPDATE ... WHERE
state='waiting'``; the process whose update changed the row is the one that sends it. One app
process sweeps at a time (a Redis lease), so caps hold across processes; a lapsed lease only
delays releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.base import utcnow
from corral.app.db.models import TaskRun
from corral.app.fairshare.settings import FairShareSettings
from corral.app.observability.counters import fair_share_refused
from corral.task_schemas import Queue, WaitingEvent, get_spec

if TYPE_CHECKING:
    from corral.app.services import Services

log = structlog.get_logger(__name__)

_ACTIVE = ("queued", "running")
_LEASE_KEY = "fair:release-lease"


class FairShare:
    def __init__(self, services: Services, settings: FairShareSettings | None = None) -> None:
        self.services = services
        self.settings = settings or FairShareSettings()
        self._wake = asyncio.Event()
        self._served: dict[tuple[str, str], float] = {}
        self._token = uuid.uuid4().hex
        # False once a sweep found nothing waiting (anywhere), until this process holds a run
        # back again: runs ending then need no sweep (the timer still sweeps every interval,
        # for backlogs other app processes hold).
        self._backlog = True
        self._started = utcnow()
        self._recovered = False  # the first sweep re-sends releases an earlier process cut off
        # owner -> runs whose end a waiting request saw and is writing (``recording``)
        self._recording: dict[str, set[str]] = {}

    # -- admission -------------------------------------------------------------------------

    async def must_wait(self, session: AsyncSession, owner_id: str, queue: str) -> bool:
        """True when the user is at their cap on ``queue`` or already has waiting work there
        (a new send never overtakes the user's own backlog). Runs in the caller's session (the
        one that inserts the run: one transaction, no extra round trip)."""
        if not self.settings.enabled:
            return False
        query = select(TaskRun.state, func.count()).where(
            TaskRun.owner_id == owner_id,
            TaskRun.queue == queue,
            TaskRun.state.in_((*_ACTIVE, "waiting")),
        )
        if recording := self._recording.get(owner_id):
            query = query.where(TaskRun.id.not_in(recording))
        rows = await session.execute(query.group_by(TaskRun.state))
        counts = {state: n for state, n in rows.all()}
        if counts.get("waiting", 0):
            return True
        active = counts.get("queued", 0) + counts.get("running", 0)
        if active >= self.settings.cap(owner_id, queue):
            fair_share_refused("user_cap")
            return True
        return False

    def recording(self, owner_id: str, task_id: str) -> None:
        """A run has ended (its waiting request saw the terminal entry) and its row is being
        written: it stops counting against its owner's cap now, not at the commit. Without
        this, a user's next call, sent the moment the answer arrived, found the finished run
        still ``running`` in SQL and was held back (33 of 900 in ``bench/http_invoke.py``)."""
        self._recording.setdefault(owner_id, set()).add(task_id)

    def recorded(self, owner_id: str, task_id: str) -> None:
        """The end is written (or left to the tracker): SQL's state counts again."""
        ids = self._recording.get(owner_id)
        if ids is not None:
            ids.discard(task_id)
            if not ids:
                del self._recording[owner_id]

    async def position(self, task_id: str, owner_id: str, queue: str) -> int:
        """How many of the user's waiting runs on ``queue`` go before ``task_id``."""
        async with self.services.db.session() as session:
            rows = (
                await session.execute(
                    select(TaskRun.id, TaskRun.created_at, TaskRun.pending)
                    .where(
                        TaskRun.owner_id == owner_id,
                        TaskRun.queue == queue,
                        TaskRun.state == "waiting",
                    )
                    .order_by(TaskRun.created_at, TaskRun.id)
                    .limit(10_000)
                )
            ).all()
        ordered = sorted(rows, key=_release_order)
        ids = [r[0] for r in ordered]
        return ids.index(task_id) if task_id in ids else 0

    async def announce(self, task_id: str, owner_id: str, queue: str) -> None:
        """Write ``waiting`` (with the run's place) to a held run's stream: its watchers and
        tool cards show it at once instead of an empty stream."""
        ahead = await self.position(task_id, owner_id, queue)
        await self._publish_waiting(task_id, owner_id, queue, ahead)

    async def _publish_waiting(self, task_id: str, owner_id: str, queue: str, ahead: int) -> None:
        event = WaitingEvent(queue=queue, ahead=ahead, cap=self.settings.cap(owner_id, queue))
        try:
            await self.services.sender.publish_event(task_id, event)
        except Exception as exc:  # the run waits in SQL either way; the stream is a view of it
            log.warning("could not write a waiting event", task_id=task_id, error=repr(exc))

    def wake(self) -> None:
        self._backlog = True
        self._wake.set()

    # -- release ---------------------------------------------------------------------------

    def hook_terminal_events(self) -> None:
        """Wake the sweep whenever the tracker records a run's end (a slot was freed)."""
        tracker = self.services.tracker
        original: Callable[..., Awaitable[bool]] = tracker.finish

        async def finish(*args: Any, **kwargs: Any) -> bool:
            changed = await original(*args, **kwargs)
            if changed and self._backlog:
                self._wake.set()
            return changed

        setattr(tracker, "finish", finish)  # noqa: B010 (an instance hook, not a new method)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next pass retries; the backlog is in SQL
                log.warning("fair share sweep failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.sweep_interval_s)
            self._wake.clear()

    async def sweep(self) -> int:
        """Release what the caps allow now; returns how many runs were sent."""
        redis = self.services.redis
        lease_ms = int(max(5.0, self.settings.sweep_interval_s * 4) * 1000)
        if (
            not await redis.set(_LEASE_KEY, self._token, nx=True, px=lease_ms)
            and await redis.get(_LEASE_KEY) != self._token
        ):
            return 0
        try:
            resent = 0
            if not self._recovered:
                resent = await self._resend_unsent()
                self._recovered = True
            return resent + await self._release_all()
        finally:
            with contextlib.suppress(Exception):
                if await redis.get(_LEASE_KEY) == self._token:
                    await redis.delete(_LEASE_KEY)

    async def _resend_unsent(self) -> int:
        """Send the released runs an earlier process committed as ``queued`` but died before
        sending (``_send_one`` commits, then sends). Such a run still holds its input
        (``pending``) and its stream's newest event is ``waiting`` (or it has none): a send
        writes ``queued`` to the stream first, in the same script as the broker's message.
        Without this, the run would hold one of its user's slots until reconcile calls it lost.
        Runs this process released are not candidates (only rows last touched before it
        started), and only the lease holder sweeps, so no run is sent twice."""
        from corral.app.task_runs.repository import last_events

        async with self.services.db.session() as session:
            rows = (
                await session.execute(
                    select(TaskRun.id, TaskRun.pending)
                    .where(
                        TaskRun.state == "queued",
                        # Only fair share's releases hold an input (others store JSON null).
                        TaskRun.pending["input"].is_not(None),
                        TaskRun.last_event_at < self._started,
                    )
                    .limit(self.settings.release_batch)
                )
            ).all()
        if not rows:
            return 0
        newest = await last_events(self.services.tracker.streams, [r[0] for r in rows])
        sent = 0
        for task_id, pending in rows:
            item = newest.get(task_id)
            if not isinstance(pending, dict) or "input" not in pending:
                continue
            if item is not None and item[1].type != "waiting":
                continue  # it was sent: the tracker and reconcile follow it
            log.warning("re-sending a released run its sender did not send", task_id=task_id)
            await self._send_claimed_row(task_id)
            sent += 1
        return sent

    async def _release_all(self) -> int:
        async with self.services.db.session() as session:
            pairs = (
                await session.execute(
                    select(TaskRun.owner_id, TaskRun.queue)
                    .where(TaskRun.state == "waiting")
                    .group_by(TaskRun.owner_id, TaskRun.queue)
                )
            ).all()
        self._backlog = bool(pairs)
        # Round-robin: the user served longest ago goes first.
        order = sorted(pairs, key=lambda p: self._served.get((p[0], p[1]), 0.0))
        sent = 0
        for owner_id, queue in order:
            sent += await self._release(owner_id, queue)
        return sent

    async def _release(self, owner_id: str, queue: str) -> int:
        cap = self.settings.cap(owner_id, queue)
        async with self.services.db.session() as session:
            active = await session.scalar(
                select(func.count()).where(
                    TaskRun.owner_id == owner_id,
                    TaskRun.queue == queue,
                    TaskRun.state.in_(_ACTIVE),
                )
            )
            free = cap - int(active or 0)
            if free <= 0:
                return 0
            rows = (
                await session.execute(
                    select(TaskRun.id, TaskRun.created_at, TaskRun.pending)
                    .where(
                        TaskRun.owner_id == owner_id,
                        TaskRun.queue == queue,
                        TaskRun.state == "waiting",
                    )
                    .order_by(TaskRun.created_at, TaskRun.id)
                    .limit(self.settings.release_batch)
                )
            ).all()
        ordered = sorted(rows, key=_release_order)
        sent = 0
        for task_id, _created, _pending in ordered[:free]:
            if await self._send_one(task_id):
                sent += 1
        if sent:
            self._served[(owner_id, queue)] = time.monotonic()
            # The rest moved up: their streams say so (the first release_batch of them; the
            # Tasks page re-reads the place of any run from SQL).
            for ahead, row in enumerate(ordered[free:]):
                await self._publish_waiting(row[0], owner_id, queue, ahead)
        return sent

    async def _send_one(self, task_id: str) -> bool:
        async with self.services.db.session() as session:
            row = await session.get(TaskRun, task_id)
            if row is None or row.state != "waiting":
                return False
            claimed: Any = await session.execute(
                update(TaskRun)
                .where(TaskRun.id == task_id, TaskRun.state == "waiting")
                .values(state="queued", created_at=row.created_at, last_event_at=utcnow())
            )
            if not claimed.rowcount:
                return False  # another process won it
        await self._send_claimed_row(task_id, row)
        return True

    async def _send_claimed_row(self, task_id: str, row: TaskRun | None = None) -> None:
        """Send a run fair share has moved to ``queued``, from its row's ``pending`` input."""
        from corral.app.task_runs.service import send_claimed  # it imports us

        if row is None:
            async with self.services.db.session() as session:
                row = await session.get(TaskRun, task_id)
            if row is None:
                return
        pending = dict(row.pending or {})
        spec = get_spec(row.task_name)
        await send_claimed(
            self.services,
            spec,
            spec.input_model.model_validate(pending.get("input") or {}),
            owner_id=row.owner_id,
            queue=Queue(row.queue),
            task_id=task_id,
            priority=pending.get("priority"),
        )


def _release_order(row: Any) -> tuple[int, Any, str]:
    """Urgent first (lower Celery priority), then oldest: priorities work inside a share."""
    task_id, created_at, pending = row
    priority = (pending or {}).get("priority")
    return (priority if isinstance(priority, int) else 6, created_at, task_id)
