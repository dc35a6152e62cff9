"""SQLite writers of one process take turns in an asyncio queue, not in SQLite's busy handler.

SQLite has one writer at a time. A connection that finds the write lock taken retries from its
busy handler, which *sleeps* between attempts (1, 2, 5, 10, 15, 20, 25 ms ...), so a write that
queues behind two others waits tens of milliseconds after the lock is long free. Measured on a
chained pipeline (issue 16): the ``task_runs`` insert waited p90 109 ms behind the tracker's and
the step saves' commits, most of a step's 21 ms of app time. Within the process, this gate hands
the write lock over in FIFO order the moment the holder's transaction ends.

A session takes the gate at its first write (an INSERT, UPDATE or DELETE through
``session.execute`` or a flush) and gives it back when its transaction ends. Reads never wait.
A task that already holds the gate through another session does not wait for itself (SQLite's
own locking then applies, as before); a wait longer than the busy timeout proceeds without the
gate rather than fail. Other processes on the same file still meet SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.util import await_only

_HOLDER = "corral_write_gate"
_HELD = "corral_write_gate_held"


class WriteGate:
    def __init__(self, timeout_s: float) -> None:
        self._lock = asyncio.Lock()
        self._timeout_s = timeout_s
        self._owner_task: asyncio.Task[Any] | None = None
        self.waits = 0  # how many writes queued behind another (for tests and curiosity)

    def attach(self, session: AsyncSession) -> None:
        session.sync_session.info[_HOLDER] = self

    def release(self, session: AsyncSession) -> None:
        """At the end of the session's unit of work (after its commit or rollback)."""
        if session.sync_session.info.pop(_HELD, False):
            self._owner_task = None
            self._lock.release()

    async def _acquire(self) -> bool:
        task = asyncio.current_task()
        if task is not None and task is self._owner_task:
            return False  # this task's other session holds it: do not wait for ourselves
        if self._lock.locked():
            self.waits += 1
        try:
            async with asyncio.timeout(self._timeout_s):  # safe against a late cancellation
                await self._lock.acquire()
        except TimeoutError:
            return False
        self._owner_task = task
        return True

    def take(self, session: Session) -> None:
        """Called from SQLAlchemy's sync layer (inside the async engine's greenlet)."""
        if session.info.get(_HELD):
            return
        if await_only(self._acquire()):
            session.info[_HELD] = True


@event.listens_for(Session, "do_orm_execute")
def _gate_statement(state: ORMExecuteState) -> None:
    gate = state.session.info.get(_HOLDER)
    if gate is not None and (state.is_insert or state.is_update or state.is_delete):
        gate.take(state.session)


@event.listens_for(Session, "before_flush")
def _gate_flush(session: Session, _context: Any, _instances: Any) -> None:
    gate = session.info.get(_HOLDER)
    if gate is not None and (session.new or session.dirty or session.deleted):
        gate.take(session)
