"""SQL access for research sessions; every read filters on the owner."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.base import utcnow
from corral.app.db.models import ResearchSession

MAX_CELLS = 500


async def get_owned(
    session: AsyncSession, session_id: str, owner_id: str
) -> ResearchSession | None:
    row = await session.get(ResearchSession, session_id)
    return row if row is not None and row.owner_id == owner_id else None


async def active_for_thread(session: AsyncSession, thread_id: str) -> ResearchSession | None:
    query = select(ResearchSession).where(
        ResearchSession.thread_id == thread_id, ResearchSession.state == "active"
    )
    return (await session.execute(query)).scalar_one_or_none()


async def next_seq(session: AsyncSession, session_id: str) -> int:
    """Claim the next call number (an atomic increment)."""
    seq = await session.scalar(
        update(ResearchSession)
        .where(ResearchSession.id == session_id)
        .values(seq=ResearchSession.seq + 1)
        .returning(ResearchSession.seq)
    )
    return int(seq or 0)


async def record_call(
    session: AsyncSession, session_id: str, seq: int, output: dict[str, Any], code: str | None
) -> None:
    """After a call: where the session lives now, its snapshot, cells and variables."""
    row = await session.get(ResearchSession, session_id, with_for_update=True)
    if row is None:
        return
    row.worker = str(output.get("worker") or row.worker or "")
    if output.get("snapshot_key"):
        row.snapshot_key = str(output["snapshot_key"])
    if code is not None and output.get("error") is None and not output.get("lost"):
        row.cells = [*row.cells, code][-MAX_CELLS:]
    if "variables" in output:
        row.variables = list(output.get("variables") or [])
    if output.get("restored"):
        row.restores += 1
    row.last_call_at = utcnow()
