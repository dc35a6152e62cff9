"""Threads and messages in SQL; every query is scoped to the owner."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.models import Message, TaskRun, Thread, ToolCallRecord


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def get_owned(session: AsyncSession, thread_id: str, owner_id: str) -> Thread | None:
    row = await session.get(Thread, thread_id)
    return row if row is not None and row.owner_id == owner_id else None


async def list_for(
    session: AsyncSession, owner_id: str, *, query: str | None, limit: int, offset: int
) -> Sequence[Thread]:
    stmt = select(Thread).where(Thread.owner_id == owner_id)
    if query:
        stmt = stmt.where(Thread.title.ilike(_like_pattern(query), escape="\\"))
    stmt = stmt.order_by(Thread.updated_at.desc(), Thread.id).limit(limit).offset(offset)
    return (await session.scalars(stmt)).all()


async def next_seq(session: AsyncSession, thread_id: str) -> int:
    current = await session.scalar(
        select(func.max(Message.seq)).where(Message.thread_id == thread_id)
    )
    return (current or 0) + 1


async def messages_page(
    session: AsyncSession, thread_id: str, *, before: int | None, limit: int
) -> list[Message]:
    """The ``limit`` newest messages with ``seq < before``, oldest first."""
    stmt = select(Message).where(Message.thread_id == thread_id)
    if before is not None:
        stmt = stmt.where(Message.seq < before)
    rows = (await session.scalars(stmt.order_by(Message.seq.desc()).limit(limit))).all()
    return list(reversed(rows))


async def history(session: AsyncSession, thread_id: str, limit: int) -> list[Message]:
    return await messages_page(session, thread_id, before=None, limit=limit)


async def tool_calls_of(
    session: AsyncSession, message_ids: Sequence[str]
) -> dict[str, list[ToolCallRecord]]:
    if not message_ids:
        return {}
    rows = await session.scalars(
        select(ToolCallRecord)
        .where(ToolCallRecord.message_id.in_(message_ids))
        .order_by(ToolCallRecord.position, ToolCallRecord.started_at)
    )
    out: dict[str, list[ToolCallRecord]] = {}
    for row in rows:
        out.setdefault(row.message_id, []).append(row)
    return out


async def trace_ids_of(session: AsyncSession, task_ids: Sequence[str]) -> dict[str, str]:
    """The trace each task run was sent in (runs sent before traces were kept have none)."""
    if not task_ids:
        return {}
    rows = await session.execute(
        select(TaskRun.id, TaskRun.trace_id).where(
            TaskRun.id.in_(task_ids), TaskRun.trace_id.is_not(None)
        )
    )
    return {task_id: trace for task_id, trace in rows if trace}
