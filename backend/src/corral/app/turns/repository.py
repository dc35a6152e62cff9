"""Turn records in SQL; every read a user makes is scoped to the owner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.base import utcnow
from corral.app.db.models import Message, Turn

OPEN = ("queued", "running")
FINISHED = ("done", "error", "cancelled")


async def get(session: AsyncSession, turn_id: str) -> Turn | None:
    return await session.get(Turn, turn_id)


async def get_owned(session: AsyncSession, turn_id: str, owner_id: str) -> Turn | None:
    row = await session.get(Turn, turn_id)
    return row if row is not None and row.owner_id == owner_id else None


async def running_in(session: AsyncSession, thread_id: str) -> Turn | None:
    return await session.scalar(
        select(Turn).where(Turn.thread_id == thread_id, Turn.status == "running")
    )


async def queued_in(session: AsyncSession, thread_id: str) -> Sequence[Turn]:
    return (
        await session.scalars(
            select(Turn)
            .where(Turn.thread_id == thread_id, Turn.status == "queued")
            .order_by(Turn.created_at, Turn.id)
        )
    ).all()


async def running(session: AsyncSession, limit: int = 500) -> Sequence[Turn]:
    """Running turns, oldest first (the sweeper checks their leases)."""
    return (
        await session.scalars(
            select(Turn).where(Turn.status == "running").order_by(Turn.started_at).limit(limit)
        )
    ).all()


async def threads_with_queued_only(session: AsyncSession, limit: int = 100) -> list[str]:
    """Threads where a turn waits but none runs (the turn before it ended without starting it)."""
    queued = set(
        await session.scalars(select(Turn.thread_id).where(Turn.status == "queued").limit(limit))
    )
    if not queued:
        return []
    busy = set(
        await session.scalars(
            select(Turn.thread_id).where(Turn.thread_id.in_(queued), Turn.status == "running")
        )
    )
    return sorted(queued - busy)


async def set_fields(session: AsyncSession, turn_id: str, **values: Any) -> None:
    await session.execute(update(Turn).where(Turn.id == turn_id).values(**values))


async def finish(
    session: AsyncSession,
    turn_id: str,
    status: str,
    *,
    final_message_id: str | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Mark a running (or queued) turn finished; False if it already was."""
    result = await session.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status.in_(OPEN))
        .values(
            status=status,
            final_message_id=final_message_id,
            error_type=error_type,
            error_message=error_message,
            finished_at=utcnow(),
            lease_holder=None,
            content=None,
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def messages_since(session: AsyncSession, thread_id: str, seq: int) -> list[Message]:
    """The thread's messages from ``seq`` on (a turn's own messages follow its user message)."""
    return list(
        (
            await session.scalars(
                select(Message)
                .where(Message.thread_id == thread_id, Message.seq >= seq)
                .order_by(Message.seq)
            )
        ).all()
    )
