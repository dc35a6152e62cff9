"""Turn use cases: read one, follow its events, stop it. Another user's turn is a 404."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.auth.service import User
from corral.app.db.models import Turn
from corral.app.problems import ProblemError
from corral.app.services import Services
from corral.app.turns import events as turn_events
from corral.app.turns import repository
from corral.app.turns.runner import TurnManager
from corral.app.turns.schemas import TurnOut


class TurnNotFound(ProblemError):
    def __init__(self, turn_id: str) -> None:
        super().__init__(404, "not-found", f"turn {turn_id} not found")


def events_url(turn_id: str) -> str:
    return f"/api/turns/{turn_id}/events"


def to_out(row: Turn) -> TurnOut:
    return TurnOut(
        id=row.id,
        thread_id=row.thread_id,
        status=row.status,
        model=row.model,
        user_message_id=row.user_message_id,
        final_message_id=row.final_message_id,
        cancel_requested=row.cancel_requested,
        resumes=row.resumes,
        error_type=row.error_type,
        error_message=row.error_message,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        events_url=events_url(row.id),
    )


def manager(services: Services) -> TurnManager:
    turns = services.turns
    assert turns is not None, "the turn manager starts with the app"
    return turns


async def get_owned(services: Services, user: User, turn_id: str) -> Turn:
    async with services.db.session() as session:
        row = await repository.get_owned(session, turn_id, user.id)
    if row is None:
        raise TurnNotFound(turn_id)
    return row


async def running_turn_id(session: AsyncSession, thread_id: str) -> str | None:
    row = await repository.running_in(session, thread_id)
    return row.id if row is not None else None


async def cancel(services: Services, user: User, turn_id: str, *, wait_s: float = 5.0) -> TurnOut:
    """Stop a turn: a queued one at once; a running one by whichever process holds it (the
    request is recorded in SQL and announced on the turn's stream). Waits up to ``wait_s`` for
    it to end and answers its state."""
    row = await get_owned(services, user, turn_id)
    if row.status not in repository.OPEN:
        raise ProblemError(
            409, "turn-finished", f"turn {turn_id} already ended ({row.status}); nothing to stop"
        )
    await request_cancel(services, row)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while loop.time() < deadline:
        row = await get_owned(services, user, turn_id)
        if row.status not in repository.OPEN:
            break
        await asyncio.sleep(0.05)
    return to_out(row)


async def request_cancel(services: Services, row: Turn) -> None:
    async with services.db.session() as session:
        await repository.set_fields(session, row.id, cancel_requested=True)
        if row.status == "queued":
            await repository.finish(session, row.id, "cancelled")
    if row.status == "queued":
        await turn_events.append(
            manager(services).writer,
            row.id,
            "cancelled",
            {"reason": "stopped by the user before it started"},
        )
        return
    if not manager(services).cancel_local(row.id):
        await turn_events.append(manager(services).writer, row.id, turn_events.CANCEL_REQUESTED, {})


async def stop_thread_turns(services: Services, thread_id: str, *, wait_s: float) -> bool:
    """Cancel every open turn of a thread (it is being deleted); True when none runs anymore."""
    async with services.db.session() as session:
        running = await repository.running_in(session, thread_id)
        queued = list(await repository.queued_in(session, thread_id))
    for row in [*queued, *([running] if running else [])]:
        await request_cancel(services, row)
    if running is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while loop.time() < deadline:
        async with services.db.session() as session:
            if await repository.running_in(session, thread_id) is None:
                return True
        await asyncio.sleep(0.1)
    return False
