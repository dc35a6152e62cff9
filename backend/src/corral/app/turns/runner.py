"""Running turns in this app process: one lease per turn, a sweeper that adopts orphans.

``TurnManager.launch`` runs a turn whose lease this process holds; beside the loop, a renewer
keeps the lease alive and a watcher follows the turn's own event stream (through the process's
``StreamHub``) for ``cancel_requested``. If a renewal fails the loop is handed off: cancelled
without writing anything, so whoever takes the lease next resumes it from SQL. The sweeper
(every ``sweep_interval_s``) takes the lease of every ``running`` turn nobody holds — its
process died or stalled — and resumes it with a ``resumed`` event; it also starts the next
queued turn of a thread whose running turn ended without doing so. On shutdown running turns
are handed off and their leases released, so another process resumes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from corral.app.auth.service import User
from corral.app.db.base import utcnow
from corral.app.db.models import Message, Thread, Turn
from corral.app.threads import repository as threads
from corral.app.turns import events as turn_events
from corral.app.turns import repository
from corral.app.turns.lease import Leases

if TYPE_CHECKING:
    from corral.app.chat.agent import ChatTurn
    from corral.app.services import Services

log = structlog.get_logger(__name__)


@dataclass
class Running:
    task: asyncio.Task[Any]
    chat: ChatTurn | None = None
    stop_reason: str | None = None


class TurnManager:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings.chat
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leases = Leases(
            services.settings.redis.streams_url,
            self.holder,
            self.settings.lease_ttl_s,
            client_name=f"{services.hub.client_name}-leases",
        )
        self.writer = turn_events.StreamWriter(
            services.settings.redis.streams_url,
            services.settings.streams,
            client_name=f"{services.hub.client_name}-turns",
        )
        self._running: dict[str, Running] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def running_here(self) -> set[str]:
        return set(self._running)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="turns-sweeper")
        self._renewer = asyncio.create_task(self._renew_forever(), name="turns-lease-renewer")

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Hand every running turn off (nothing written, leases released)."""
        self._closing = True
        for helper in (self._sweeper, self._renewer):
            if helper is not None:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await helper
        running = list(self._running.values())
        for entry in running:
            self._stop(entry, "handoff")
        if running:
            with contextlib.suppress(Exception):
                await asyncio.wait([e.task for e in running], timeout=timeout_s)
        await self.writer.aclose()
        await self.leases.aclose()

    # -- running one turn ----------------------------------------------------------------------

    def launch(self, turn_id: str, *, resumed: bool) -> None:
        """Run a turn whose lease this process has just taken."""
        task = asyncio.create_task(self._drive(turn_id, resumed), name=f"turn:{turn_id}")
        self._running[turn_id] = Running(task)
        task.add_done_callback(lambda _: self._running.pop(turn_id, None))

    def cancel_local(self, turn_id: str) -> bool:
        entry = self._running.get(turn_id)
        if entry is None:
            return False
        self._stop(entry, "cancel")
        return True

    @staticmethod
    def _stop(entry: Running, reason: str) -> None:
        if entry.stop_reason is None:
            entry.stop_reason = reason
            if entry.chat is not None:
                entry.chat.stop_reason = reason
            entry.task.cancel()

    async def _drive(self, turn_id: str, resumed: bool) -> None:
        from corral.app.chat.agent import ChatTurn

        services = self.services
        entry = self._running[turn_id]
        watcher = None
        outcome: str | None = None
        try:
            async with services.db.session() as session:
                turn = await repository.get(session, turn_id)
                message = await session.get(Message, turn.user_message_id) if turn else None
                if turn is not None and resumed:
                    turn.resumes += 1
                    turn.lease_holder = self.holder
                elif turn is not None:
                    turn.lease_holder = self.holder
            if turn is None or turn.status != "running" or message is None:
                log.warning("turn is gone or not running; dropping it", turn_id=turn_id)
                return
            config = services.agent_models.config(turn.model)
            events = turn_events.TurnEvents(
                self.writer,
                turn_id,
                flush_chars=self.settings.text_flush_chars,
                flush_s=self.settings.text_flush_ms / 1000,
            )
            deadline = turn.deadline_at or utcnow()
            chat = ChatTurn(
                services=services,
                user=User(id=turn.owner_id, claims={}),
                turn_id=turn_id,
                thread_id=turn.thread_id,
                user_seq=message.seq,
                model=config,  # type: ignore[arg-type]
                events=events,
                timeout_s=(deadline - utcnow()).total_seconds(),
                stop_reason=entry.stop_reason,
                still_holder=lambda: self.leases.renew(turn_id),
            )
            entry.chat = chat
            if resumed:
                for entry_id, kind, data in await turn_events.read_all(services.redis, turn_id):
                    if kind in ("tool_progress", "tool_waiting") and data.get("task_id"):
                        chat.progress_seen[str(data["task_id"])] = entry_id
                await events.emit(
                    "resumed", {"resumes": turn.resumes, "holder": self.holder.split(":")[0]}
                )
            watcher = asyncio.create_task(self._watch_cancel(turn_id, entry))
            if config is None:
                await chat.fail("ModelError", f"model {turn.model!r} is no longer configured")
                outcome = "error"
            elif turn.cancel_requested:
                entry.stop_reason = chat.stop_reason = "cancel"
                await chat.cancel_now()
                outcome = "cancelled"
            else:
                outcome = await chat.run()
        except asyncio.CancelledError:
            outcome = "cancelled" if entry.stop_reason == "cancel" else None
            if outcome is None:
                log.info("turn handed off", turn_id=turn_id, reason=entry.stop_reason)
        except Exception:
            log.exception("turn runner failed", turn_id=turn_id)
        finally:
            if watcher is not None:
                watcher.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.leases.release(turn_id)
            if outcome is not None and not self._closing:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self.start_next(turn_id)

    async def _renew_forever(self) -> None:
        """Renew every lease this process holds in one round trip per interval; a turn whose
        lease is gone (or that could not be renewed for a whole TTL) is handed off."""
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            await asyncio.sleep(self.settings.lease_renew_s)
            ids = list(self._running)
            if not ids:
                last_ok = loop.time()
                continue
            try:
                kept = await self.leases.renew_many(ids)
                last_ok = loop.time()
            except Exception as exc:
                log.warning("lease renewal failed", turns=len(ids), error=repr(exc))
                if loop.time() - last_ok < self.settings.lease_ttl_s:
                    continue
                kept = set()
            for turn_id in ids:
                entry = self._running.get(turn_id)
                if turn_id not in kept and entry is not None:
                    log.warning("turn lease lost; handing the turn off", turn_id=turn_id)
                    self._stop(entry, "handoff")

    async def _watch_cancel(self, turn_id: str, entry: Running) -> None:
        async with self.services.hub.subscribe(turn_events.turn_events_key(turn_id)) as sub:
            async for _, event in sub:
                kind, _ = turn_events.from_entry(event)
                if kind == turn_events.CANCEL_REQUESTED:
                    self._stop(entry, "cancel")
                    return

    # -- the queue of a thread and orphans -----------------------------------------------------

    async def start_next(self, finished_turn_id: str) -> None:
        """After a turn ends: start the oldest queued turn of its thread, if any."""
        async with self.services.db.session() as session:
            turn = await repository.get(session, finished_turn_id)
        if turn is not None:
            await self.start_queued(turn.thread_id)

    async def start_queued(self, thread_id: str) -> str | None:
        async with self.services.db.session() as session:
            queued = list(await repository.queued_in(session, thread_id))
        for turn in queued:
            if turn.cancel_requested:
                continue
            if not await self.leases.acquire(turn.id):
                return None
            try:
                async with self.services.db.session() as session:
                    await activate(session, turn, self.settings.turn_timeout_s)
            except IntegrityError:  # another turn started meanwhile
                await self.leases.release(turn.id)
                return None
            except BaseException:
                await self.leases.release(turn.id)
                raise
            await turn_events.append(
                self.writer,
                turn.id,
                "turn_started",
                {
                    "turn_id": turn.id,
                    "thread_id": thread_id,
                    "message_id": turn.user_message_id,
                    "model": turn.model,
                },
            )
            self.launch(turn.id, resumed=False)
            return turn.id
        return None

    async def sweep(self) -> list[str]:
        """Adopt running turns whose lease expired; returns the ids resumed here."""
        adopted: list[str] = []
        async with self.services.db.session() as session:
            running = [t.id for t in await repository.running(session)]
            idle_threads = await repository.threads_with_queued_only(session)
        candidates = [t for t in running if t not in self._running]
        held = await self.leases.held(candidates)
        for turn_id in candidates:
            if turn_id in held or self._closing:
                continue
            if await self.leases.acquire(turn_id):
                log.info("resuming orphaned turn", turn_id=turn_id, holder=self.holder)
                self.launch(turn_id, resumed=True)
                adopted.append(turn_id)
        for thread_id in idle_threads:
            await self.start_queued(thread_id)
        return adopted

    async def _sweep_forever(self) -> None:
        while not self._closing:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("turn sweep failed", error=repr(exc))
            await asyncio.sleep(self.settings.sweep_interval_s)


async def activate(session: Any, turn: Turn, timeout_s: float) -> None:
    """A queued turn becomes the running one: its user message is written now (so the thread's
    history stays in order) with the id promised when it was queued."""
    now = utcnow()
    session.add(
        Message(
            id=turn.user_message_id,
            thread_id=turn.thread_id,
            seq=await threads.next_seq(session, turn.thread_id),
            role="user",
            content=turn.content,
            status="complete",
        )
    )
    await repository.set_fields(
        session,
        turn.id,
        status="running",
        content=None,
        started_at=now,
        deadline_at=now + timedelta(seconds=timeout_s),
    )
    await session.execute(update(Thread).where(Thread.id == turn.thread_id).values(updated_at=now))
    await session.flush()
