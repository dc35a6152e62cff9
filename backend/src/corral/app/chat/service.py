"""Starting a turn: check the thread, take the thread's turn lock, save the user's message."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import update

from corral.app.auth.service import User
from corral.app.chat.agent import ChatTurn
from corral.app.db.base import utcnow
from corral.app.db.models import Message, Thread
from corral.app.services import Services
from corral.app.threads import repository as threads
from corral.app.threads.schemas import DEFAULT_TITLE
from corral.app.threads.service import ThreadNotFound, turn_key, turn_lock_key

__all__ = ["ThreadNotFound", "TurnRefused", "start_turn"]

_TITLE_CHARS = 60


class TurnRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1] + "…"


async def start_turn(
    services: Services, user: User, thread_id: str, content: str
) -> tuple[ChatTurn, asyncio.Task[Any]]:
    settings = services.settings.chat
    if len(content) > settings.max_message_chars:
        raise TurnRefused(422, f"message too long: at most {settings.max_message_chars} characters")
    if not content.strip():
        raise TurnRefused(422, "message is empty")
    async with services.db.session() as session:
        thread = await threads.get_owned(session, thread_id, user.id)
        if thread is None:
            raise ThreadNotFound(thread_id)
        model_name = thread.model or settings.model
    config = services.agent_models.config(model_name)
    if config is None:
        raise TurnRefused(
            503 if model_name is None else 422,
            "no language model is configured (CORRAL_LLM__MODELS)"
            if model_name is None
            else f"model {model_name!r} is not configured",
        )
    lock = services.redis.lock(
        turn_lock_key(thread_id), timeout=settings.turn_timeout_s + 120, blocking=False
    )
    if not await lock.acquire():
        raise TurnRefused(
            409, "a reply is already being written in this thread; wait for it or stop it"
        )
    try:
        async with services.db.session() as session:
            message = Message(
                thread_id=thread_id,
                seq=await threads.next_seq(session, thread_id),
                role="user",
                content=content,
                status="complete",
            )
            session.add(message)
            values: dict[str, Any] = {"updated_at": utcnow()}
            if thread.title == DEFAULT_TITLE:
                values["title"] = _title_from(content)
            await session.execute(update(Thread).where(Thread.id == thread_id).values(**values))
        turn = ChatTurn(services, user, thread_id, config, lock)
        turn.emit(
            "turn_started",
            {"thread_id": thread_id, "message_id": message.id, "model": config.name},
        )
        task = services.background.spawn(turn_key(thread_id), turn.run())
    except BaseException:
        with contextlib.suppress(Exception):
            await lock.release()
        raise
    return turn, task
