"""SQLite writers of one process queue at the write gate instead of in SQLite's busy handler.

Real SQLite files (migrated), real aiosqlite connections. A writer that holds its transaction
open makes the others queue; they must all commit, in order, with no "database is locked", and
the queueing must be visible at the gate. A task's second session must not wait for the first
(the gate is not re-entrant across tasks, but never deadlocks a task on itself).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import func, insert, select, update

from corral.app.db.engine import Database
from corral.app.db.models import User
from corral.app.db.settings import DatabaseSettings
from tests.support.db import new_sqlite_database


def sqlite_db(tmp_path: Path, busy_timeout_s: float = 30.0) -> Database:
    url = new_sqlite_database(tmp_path)
    return Database(DatabaseSettings(url=url, sqlite_busy_timeout_s=busy_timeout_s))


async def test_concurrent_writers_take_turns_at_the_gate(tmp_path: Path) -> None:
    db = await asyncio.to_thread(sqlite_db, tmp_path)
    assert db.write_gate is not None
    order: list[int] = []
    try:
        async with db.session() as session:
            await session.execute(insert(User).values(id="counter", name="0"))

        async def writer(i: int) -> None:
            async with db.session() as session:
                await session.execute(update(User).where(User.id == "counter").values(name=str(i)))
                order.append(i)
                await asyncio.sleep(0.01)  # hold the write lock a while, as real work would

        began = time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(20)))
        elapsed = time.perf_counter() - began
        assert sorted(order) == list(range(20))
        assert order == list(range(20)), "FIFO: writers commit in the order they asked"
        assert db.write_gate.waits >= 19
        # 20 x 10 ms held, handed over without the busy handler's back-off sleeps
        assert elapsed < 20 * 0.01 + 1.5, elapsed
        async with db.session() as session:
            assert await session.scalar(select(User.name).where(User.id == "counter")) == "19"
    finally:
        await db.aclose()


async def test_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    db = await asyncio.to_thread(sqlite_db, tmp_path)
    release = asyncio.Event()
    try:

        async def slow_writer() -> None:
            async with db.session() as session:
                await session.execute(insert(User).values(id="w"))
                await release.wait()

        writing = asyncio.create_task(slow_writer())
        await asyncio.sleep(0.1)
        async with db.session() as session:  # a read while the gate is held: answered at once
            began = time.perf_counter()
            count = await session.scalar(select(func.count()).select_from(User))
            assert time.perf_counter() - began < 1.0
            assert count == 0  # WAL: the uncommitted insert is not visible
        release.set()
        await writing
    finally:
        await db.aclose()


async def test_a_task_never_waits_for_its_own_open_write(tmp_path: Path) -> None:
    db = await asyncio.to_thread(sqlite_db, tmp_path, 1.0)
    try:
        async with db.session() as outer:
            await outer.execute(insert(User).values(id="outer"))
            # Same task, second session: the gate lets it through (it does not wait for itself).
            began = time.perf_counter()
            async with db.session() as inner:
                assert await inner.scalar(select(func.count()).select_from(User)) == 0
            assert time.perf_counter() - began < 0.5
        async with db.session() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 1
    finally:
        await db.aclose()


async def test_a_failed_transaction_hands_the_gate_on(tmp_path: Path) -> None:
    db = await asyncio.to_thread(sqlite_db, tmp_path)
    try:
        async with db.session() as session:
            await session.execute(insert(User).values(id="dup"))
        try:
            async with db.session() as session:
                await session.execute(insert(User).values(id="dup"))  # primary key clash
        except Exception as exc:
            assert "UNIQUE" in str(exc)
        else:
            raise AssertionError("the duplicate insert should fail")
        async with asyncio.timeout(5):  # the gate was released by the rollback
            async with db.session() as session:
                await session.execute(insert(User).values(id="after"))
    finally:
        await db.aclose()
