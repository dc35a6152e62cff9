"""SQL access for research sessions; every read filters on the owner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.base import utcnow
from corral.app.db.models import ResearchSession
from corral.task_schemas.sessions import snapshot_seq

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


async def claim_next(
    session: AsyncSession, session_id: str, owner_id: str
) -> ResearchSession | None:
    """The active session ``session_id`` of ``owner_id`` with its next call number claimed
    (an atomic increment returning the row); ``None``: not found, not theirs or closed."""
    query = (
        update(ResearchSession)
        .where(
            ResearchSession.id == session_id,
            ResearchSession.owner_id == owner_id,
            ResearchSession.state == "active",
        )
        .values(seq=ResearchSession.seq + 1)
        .returning(ResearchSession)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one_or_none()


@dataclass(frozen=True)
class Claimed:
    """What a call's claim read of the row: lets ``record_call`` write without reading it
    again, unless another call was recorded since (then it reads the row under a lock)."""

    cells: list[Any]
    last_call_at: datetime | None


async def record_call(
    session: AsyncSession,
    session_id: str,
    seq: int,
    output: dict[str, Any],
    code: str | None,
    claimed: Claimed | None = None,
) -> None:
    """After a call: where the session lives now, its snapshot, cells and variables."""
    keep_cell = code is not None and output.get("error") is None and not output.get("lost")
    if claimed is not None:
        values: dict[str, Any] = {"last_call_at": utcnow()}
        if output.get("worker"):
            values["worker"] = str(output["worker"])
        if output.get("snapshot_key"):
            values["snapshot_key"] = str(output["snapshot_key"])
        if keep_cell:
            values["cells"] = [*claimed.cells, code][-MAX_CELLS:]
        if "variables" in output:
            values["variables"] = list(output.get("variables") or [])
        if output.get("restored"):
            values["restores"] = ResearchSession.restores + 1
        result: Any = await session.execute(
            update(ResearchSession)
            .where(
                ResearchSession.id == session_id,
                ResearchSession.last_call_at.is_not_distinct_from(claimed.last_call_at),
            )
            .values(**values)
        )
        if result.rowcount:
            return
    row = await session.get(ResearchSession, session_id, with_for_update=True)
    if row is None:
        return
    if keep_cell:
        row.cells = [*row.cells, code][-MAX_CELLS:]
    if output.get("restored"):
        row.restores += 1
    row.last_call_at = utcnow()
    if snapshot_seq(row.snapshot_key) > seq:
        return  # a later call was recorded first (this one's caller left): keep the newer state
    row.worker = str(output.get("worker") or row.worker or "")
    if output.get("snapshot_key"):
        row.snapshot_key = str(output["snapshot_key"])
    if "variables" in output:
        row.variables = list(output.get("variables") or [])
