"""Starting a turn from a user's message: check the thread and model, record the turn (SQL),
take its lease and launch it in this process — or queue it behind the thread's running turn."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from corral.app import idempotency
from corral.app.auth.service import User
from corral.app.budgets import service as budgets
from corral.app.db.base import new_id, utcnow
from corral.app.db.models import Message, Thread, Turn
from corral.app.llm.service import NoModelConfigured
from corral.app.problems import ProblemError
from corral.app.services import Services
from corral.app.threads import repository as threads
from corral.app.threads.schemas import DEFAULT_TITLE
from corral.app.threads.service import ThreadNotFound
from corral.app.turns import events as turn_events
from corral.app.turns import repository as turns
from corral.app.turns.schemas import TurnAccepted
from corral.app.turns.service import events_url, manager

__all__ = ["ThreadNotFound", "start_turn"]

_TITLE_CHARS = 60


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1] + "…"


def _busy(running_id: str) -> ProblemError:
    return ProblemError(
        409,
        "turn-in-progress",
        "a reply is already being written in this thread; wait for it (follow "
        f"{events_url(running_id)}) or stop it (POST /api/turns/{running_id}/cancel)",
        extra={"running_turn_id": running_id},
    )


def _accepted(turn: Turn) -> TurnAccepted:
    return TurnAccepted(
        turn_id=turn.id,
        message_id=turn.user_message_id,
        thread_id=turn.thread_id,
        status=turn.status,
        events_url=events_url(turn.id),
    )


async def _replay(services: Services, user: User, thread_id: str, key: str) -> TurnAccepted | None:
    """The turn an earlier request with this ``Idempotency-Key`` started, if any (24 h)."""
    async with services.db.session() as session:
        turn = await idempotency.find_recent(session, Turn, user.id, key)
    if turn is None:
        return None
    if turn.thread_id != thread_id:
        raise ProblemError(
            409,
            "idempotency-key-reused",
            f"Idempotency-Key {key!r} already started turn {turn.id} in another thread; "
            "use a new key for a new message",
        )
    return _accepted(turn)


async def start_turn(
    services: Services,
    user: User,
    thread_id: str,
    content: str,
    idempotency_key: str | None = None,
) -> TurnAccepted:
    settings = services.settings.chat
    if len(content) > settings.max_message_chars:
        raise ProblemError(
            422,
            "validation-error",
            f"message too long: at most {settings.max_message_chars} characters",
        )
    if not content.strip():
        raise ProblemError(422, "validation-error", "message is empty")
    async with services.db.session() as session:
        thread = await threads.get_owned(session, thread_id, user.id)
        if thread is None:
            raise ThreadNotFound(thread_id)
        model_name = thread.model or settings.model
    if idempotency_key and (earlier := await _replay(services, user, thread_id, idempotency_key)):
        return earlier
    async with services.db.session() as session:  # a turn spends tokens: refused up front
        await budgets.check(session, services.budgets, user.id, ("tokens",))
    config = services.agent_models.config(model_name)
    if config is None and not services.settings.llm.names():
        raise NoModelConfigured()
    if config is None:
        raise ProblemError(
            422,
            "unknown-model",
            f"model {model_name!r} is not configured; configured: {services.settings.llm.names()}",
        )
    runner = manager(services)
    turn_id, message_id = new_id(), new_id()
    # The lease first: a sweeper elsewhere must never see this running turn without a holder.
    if not await runner.leases.acquire(turn_id):
        raise ProblemError(503, "service-unavailable", "could not take the turn's lease")
    status = "running"
    try:
        async with services.db.session() as session:
            running = await turns.running_in(session, thread_id)
            if running is not None:
                if settings.double_texting == "reject":
                    raise _busy(running.id)
                waiting = len(await turns.queued_in(session, thread_id))
                if waiting >= settings.max_queued_turns:
                    raise _busy(running.id)
                status = "queued"
            now = utcnow()
            turn = Turn(
                id=turn_id,
                thread_id=thread_id,
                owner_id=user.id,
                status=status,
                model=config.name,
                user_message_id=message_id,
                created_at=now,
                cancel_requested=False,
                resumes=0,
                idempotency_key=idempotency_key,
            )
            values: dict[str, Any] = {"updated_at": now}
            if thread.title == DEFAULT_TITLE:
                values["title"] = _title_from(content)
            if status == "running":
                session.add(
                    Message(
                        id=message_id,
                        thread_id=thread_id,
                        seq=await threads.next_seq(session, thread_id),
                        role="user",
                        content=content,
                        status="complete",
                    )
                )
                turn.started_at = now
                turn.deadline_at = now + timedelta(seconds=settings.turn_timeout_s)
                turn.lease_holder = runner.holder
            else:
                turn.content = content
            session.add(turn)
            await session.execute(update(Thread).where(Thread.id == thread_id).values(**values))
            await session.flush()
    except IntegrityError:  # another message started a turn here at the same moment
        await runner.leases.release(turn_id)
        if idempotency_key:  # a twin with the same key may have won either unique index
            twin = await _replay(services, user, thread_id, idempotency_key)
            if twin is not None:
                return twin
        async with services.db.session() as session:
            other = await turns.running_in(session, thread_id)
        raise _busy(other.id if other else "?") from None
    except BaseException:
        await runner.leases.release(turn_id)
        raise
    accepted = TurnAccepted(
        turn_id=turn_id,
        message_id=message_id,
        thread_id=thread_id,
        status=status,
        events_url=events_url(turn_id),
    )
    if status == "queued":
        await runner.leases.release(turn_id)
        await turn_events.append(runner.writer, turn_id, "queued", {"turn_id": turn_id})
        return accepted
    await turn_events.append(
        runner.writer,
        turn_id,
        "turn_started",
        {
            "turn_id": turn_id,
            "thread_id": thread_id,
            "message_id": message_id,
            "model": config.name,
        },
    )
    runner.launch(turn_id, resumed=False)
    return accepted
