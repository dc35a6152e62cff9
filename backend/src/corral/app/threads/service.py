"""Thread use cases. Another user's thread answers exactly like a missing one (404)."""

from __future__ import annotations

import contextlib

import structlog
from sqlalchemy import select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.auth.service import User
from corral.app.db.base import utcnow
from corral.app.db.models import (
    Artifact,
    Message,
    ResearchSession,
    TaskRun,
    Thread,
    ToolCallRecord,
)
from corral.app.problems import ProblemError
from corral.app.services import Services
from corral.app.sessions import service as research_sessions
from corral.app.storage.store import StorageError
from corral.app.task_runs import service as task_runs
from corral.app.threads import repository
from corral.app.threads.schemas import (
    DEFAULT_TITLE,
    MessageOut,
    MessagePage,
    ThreadCreate,
    ThreadOut,
    ThreadUpdate,
    ToolCallOut,
)
from corral.app.turns import service as turns

log = structlog.get_logger(__name__)


class ThreadNotFound(LookupError):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id} not found")


class UnknownModel(ValueError):
    pass


class ThreadBusy(RuntimeError):
    """A reply is being written in the thread by another app process."""


def to_out(row: Thread, running_turn_id: str | None = None) -> ThreadOut:
    return ThreadOut(
        id=row.id,
        title=row.title,
        model=row.model,
        created_at=row.created_at,
        updated_at=row.updated_at,
        running_turn_id=running_turn_id,
    )


async def get_with_turn(session: AsyncSession, thread_id: str, user: User) -> ThreadOut:
    """The thread and the turn running in it (to re-attach to after a reload)."""
    row = await get_owned(session, thread_id, user)
    return to_out(row, await turns.running_turn_id(session, thread_id))


def _check_model(services: Services, model: str | None) -> None:
    if model is not None and services.settings.llm.get(model) is None:
        raise UnknownModel(f"unknown model {model!r}; configured: {services.settings.llm.names()}")


async def get_owned(session: AsyncSession, thread_id: str, user: User) -> Thread:
    row = await repository.get_owned(session, thread_id, user.id)
    if row is None:
        raise ThreadNotFound(thread_id)
    return row


async def create(
    services: Services, session: AsyncSession, user: User, body: ThreadCreate
) -> ThreadOut:
    _check_model(services, body.model)
    row = Thread(owner_id=user.id, title=body.title or DEFAULT_TITLE, model=body.model)
    session.add(row)
    await session.flush()
    return to_out(row)


async def list_threads(
    session: AsyncSession, user: User, *, query: str | None, limit: int, offset: int
) -> list[ThreadOut]:
    rows = await repository.list_for(session, user.id, query=query, limit=limit, offset=offset)
    return [to_out(r) for r in rows]


async def update(
    services: Services, session: AsyncSession, user: User, thread_id: str, body: ThreadUpdate
) -> ThreadOut:
    row = await get_owned(session, thread_id, user)
    changes = body.model_dump(exclude_unset=True)
    if "model" in changes:
        _check_model(services, changes["model"])
        row.model = changes["model"]
    if changes.get("title") is not None:
        row.title = changes["title"]
    row.updated_at = utcnow()
    await session.flush()
    return to_out(row)


async def delete(services: Services, session: AsyncSession, user: User, thread_id: str) -> None:
    """Stop its reply and tasks, delete its objects from the store, then its rows."""
    row = await get_owned(session, thread_id, user)
    if not await turns.stop_thread_turns(services, thread_id, wait_s=15):
        raise ThreadBusy("a reply is being written in this thread; stop it, then delete")
    active = await session.scalars(
        select(TaskRun.id).where(
            TaskRun.thread_id == thread_id,
            TaskRun.state.in_(("waiting", "queued", "running")),  # waiting: fair share's backlog
        )
    )
    for task_id in list(active):
        with contextlib.suppress(task_runs.TaskAlreadyFinished, task_runs.TaskNotFound):
            await task_runs.cancel(services, task_id, user.id, reason="thread deleted")
    await _close_sessions(services, session, user, thread_id)
    keys = list(await session.scalars(select(Artifact.key).where(Artifact.thread_id == thread_id)))
    for key in keys:
        try:
            await services.storage.delete(key)
        except StorageError as exc:
            log.warning("could not delete artifact", key=key, error=str(exc))
            raise
    await session.delete(row)


async def _close_sessions(
    services: Services, session: AsyncSession, user: User, thread_id: str
) -> None:
    """Close the thread's Python sessions as DELETE /api/sessions/{id} does (the process stops,
    the snapshot is deleted), then keep each row only as a closed record with neither its
    thread nor its cells, so its id answers 410 session-closed rather than vanishing."""
    active = await session.scalars(
        select(ResearchSession.id).where(
            ResearchSession.thread_id == thread_id, ResearchSession.state == "active"
        )
    )
    for session_id in list(active):
        with contextlib.suppress(ProblemError):  # closed meanwhile
            await research_sessions.close(services, user, session_id)
    await session.execute(
        sql_update(ResearchSession)
        .where(ResearchSession.thread_id == thread_id)
        .values(
            thread_id=None,
            state="closed",
            cells=[],
            variables=[],
            input_files=[],
            snapshot_key=None,
        )
    )


async def messages(
    session: AsyncSession, user: User, thread_id: str, *, before: int | None, limit: int
) -> MessagePage:
    await get_owned(session, thread_id, user)
    rows = await repository.messages_page(session, thread_id, before=before, limit=limit)
    calls = await repository.tool_calls_of(session, [m.id for m in rows if m.role == "assistant"])
    traces = await repository.trace_ids_of(
        session, [c.task_run_id for cs in calls.values() for c in cs if c.task_run_id]
    )
    items = [message_out(m, calls.get(m.id, []), traces) for m in rows]
    first = rows[0].seq if rows else None
    return MessagePage(items=items, next_before=first if first is not None and first > 1 else None)


def message_out(
    row: Message, calls: list[ToolCallRecord], traces: dict[str, str] | None = None
) -> MessageOut:
    traces = traces or {}
    return MessageOut(
        id=row.id,
        seq=row.seq,
        role=row.role,
        content=row.content,
        status=row.status,
        model=row.model,
        tool_call_id=row.tool_call_id,
        tool_calls=[
            ToolCallOut(
                call_id=c.call_id,
                name=c.name,
                arguments=c.arguments,
                task_id=c.task_run_id,
                status=c.status,
                result=c.result,
                error_type=c.error_type,
                error_message=c.error_message,
                started_at=c.started_at,
                finished_at=c.finished_at,
                trace_id=traces.get(c.task_run_id) if c.task_run_id else None,
            )
            for c in calls
        ],
        created_at=row.created_at,
    )
