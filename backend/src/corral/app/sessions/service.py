"""Research sessions: create, run code (routed to the holder), read, close.

Routing: a call goes to the holder's own queue while its lease (refreshed by the worker's
session host) is in Redis, else to python_q, where any worker restores the session from the
snapshot this row names. While waiting for a call on the holder, the lease is watched: if the
holder dies mid-call the caller gets an explicit ``SessionWorkerLost`` error at once (the call
is revoked), never a hang; the next call restores elsewhere.

Calls of one session run one at a time, in arrival order: a FIFO lock per session in this
process, plus the call number (``seq``) the worker orders and fences calls by.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app import idempotency
from corral.app.auth.service import User
from corral.app.db.base import new_id, utcnow
from corral.app.db.models import Dataset, ResearchSession, Thread
from corral.app.problems import ProblemError
from corral.app.services import Services
from corral.app.sessions import repository
from corral.app.sessions.schemas import SessionCreate, SessionOut, SessionRunResponse
from corral.app.storage.store import InvalidKey, key_owner
from corral.app.streams import (
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskTimedOut,
    long_poll_celery_result,
)
from corral.app.streams.long_poll import OnEvent
from corral.app.task_runs import service as task_runs
from corral.app.task_runs.waited import WaitedRun
from corral.task_schemas import (
    SESSION_CLOSE,
    SESSION_RUN,
    FigureFormat,
    PythonInputFile,
    PythonLimitOverrides,
    SessionCloseInput,
    SessionRunInput,
    VariableInfo,
    session_queue,
    task_events_key,
    worker_lease_key,
)
from corral.task_schemas.sessions import live_sessions_key

FIGURE_URL_TTL_S = 3600
LEASE_CHECK_S = 0.5
DATASET_SUFFIX = {"csv": "csv", "parquet": "parquet", "sonata": "h5"}


def not_found(session_id: str) -> ProblemError:
    return ProblemError(404, "not-found", f"session {session_id} not found")


@dataclass
class _Locks:
    """A FIFO asyncio lock per session, dropped when nobody holds or waits for it."""

    locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str) -> Any:
        lock, users = self.locks.get(session_id, (asyncio.Lock(), 0))
        self.locks[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.locks[session_id]
            if users <= 1:
                del self.locks[session_id]
            else:
                self.locks[session_id] = (lock, users - 1)


_locks = _Locks()


async def _input_files(
    services: Services, user: User, files: list[str | PythonInputFile], datasets: list[str]
) -> list[PythonInputFile]:
    out: list[PythonInputFile] = []
    for i, item in enumerate(files):
        try:
            ref = PythonInputFile(key=item) if isinstance(item, str) else item
            owner = key_owner(ref.key)
        except (InvalidKey, ValidationError) as exc:
            raise ProblemError(422, "invalid-input-file", f"input_files[{i}]: {exc}") from exc
        if owner != user.id or not await services.storage.exists(ref.key):
            raise ProblemError(422, "invalid-input-file", f"input_files[{i}]: {ref.key} not found")
        out.append(ref)
    if datasets:
        async with services.db.session() as session:
            rows = (
                await session.execute(
                    select(Dataset).where(Dataset.id.in_(datasets), Dataset.owner_id == user.id)
                )
            ).scalars()
            found = {row.id: row for row in rows}
        for i, dataset_id in enumerate(datasets):
            row = found.get(dataset_id)
            if row is None:
                raise ProblemError(422, "invalid-input-file", f"datasets[{i}]: not found")
            suffix = DATASET_SUFFIX.get(row.format, row.format)
            out.append(PythonInputFile(key=row.key, name=f"{row.id}.{suffix}"))
    names = [f.file_name for f in out]
    if len(names) != len(set(names)):
        raise ProblemError(422, "invalid-input-file", "two input files get the same /input name")
    return out


async def create(
    services: Services, user: User, body: SessionCreate, idempotency_key: str | None = None
) -> ResearchSession:
    """Record a new session; with ``idempotency_key``, a retry (same user and key within 24 h)
    returns the session the first request created."""
    if idempotency_key:
        async with services.db.session() as session:
            earlier = await idempotency.find_recent(
                session, ResearchSession, user.id, idempotency_key
            )
        if earlier is not None:
            return earlier
    try:
        return await _create(services, user, body, idempotency_key)
    except IntegrityError as exc:  # a concurrent twin with the same key won the insert
        if not (idempotency_key and idempotency.is_key_conflict(exc)):
            raise
        async with services.db.session() as session:
            twin = await idempotency.find_recent(session, ResearchSession, user.id, idempotency_key)
        if twin is None:
            raise
        return twin


async def _create(
    services: Services, user: User, body: SessionCreate, idempotency_key: str | None
) -> ResearchSession:
    files = await _input_files(services, user, body.input_files, body.datasets)
    await services.users.ensure(user.id)
    async with services.db.session() as session:
        if body.thread_id is not None:
            thread = await session.get(Thread, body.thread_id)
            if thread is None or thread.owner_id != user.id:
                raise ProblemError(404, "not-found", f"thread {body.thread_id} not found")
            existing = await repository.active_for_thread(session, body.thread_id)
            if existing is not None:
                raise ProblemError(
                    409,
                    "session-exists",
                    f"thread {body.thread_id} already has session {existing.id}; use it or "
                    "DELETE it first",
                    extra={"session_id": existing.id},
                )
        row_id = new_id()
        await session.execute(
            insert(ResearchSession).values(
                id=row_id,
                owner_id=user.id,
                thread_id=body.thread_id,
                state="active",
                seq=0,
                cells=[],
                variables=[],
                input_files=[f.model_dump(mode="json") for f in files],
                limits=body.limits.model_dump(mode="json", exclude_none=True),
                restores=0,
                idempotency_key=idempotency_key,
                created_at=utcnow(),
            )
        )
        row = await session.get(ResearchSession, row_id)
        assert row is not None
        return row


async def for_thread(services: Services, user: User, thread_id: str) -> ResearchSession:
    """The thread's active session, created on first use."""
    async with services.db.session() as session:
        row = await repository.active_for_thread(session, thread_id)
        if row is not None and row.owner_id == user.id:
            return row
    try:
        return await create(services, user, SessionCreate(thread_id=thread_id))
    except ProblemError as exc:
        if exc.kind != "session-exists":  # a concurrent first use made it: use that one
            raise
        async with services.db.session() as session:
            row = await repository.active_for_thread(session, thread_id)
        if row is None:
            raise
        return row


async def get_row(services: Services, user: User, session_id: str) -> ResearchSession:
    async with services.db.session() as session:
        row = await repository.get_owned(session, session_id, user.id)
    if row is None:
        raise not_found(session_id)
    return row


async def _holder_alive(services: Services, worker: str | None) -> bool:
    return bool(worker) and bool(await services.redis.exists(worker_lease_key(str(worker))))


async def describe(services: Services, row: ResearchSession) -> SessionOut:
    state = "closed"
    if row.state == "active":
        live = False
        if row.worker:
            pipe = services.redis.pipeline(transaction=False)
            pipe.exists(worker_lease_key(row.worker))
            pipe.sismember(live_sessions_key(row.worker), row.id)
            alive, member = await pipe.execute()
            live = bool(alive) and bool(member)
        state = "live" if live else "suspended"
    return SessionOut(
        id=row.id,
        thread_id=row.thread_id,
        state=state,
        worker=row.worker,
        calls=row.seq,
        cells=len(row.cells),
        variables=[VariableInfo.model_validate(v) for v in row.variables],
        input_files=[PythonInputFile.model_validate(f).file_name for f in row.input_files],
        has_snapshot=row.snapshot_key is not None,
        restores=row.restores,
        created_at=row.created_at,
        last_call_at=row.last_call_at,
    )


async def prepare_call(
    services: Services,
    user: User,
    row: ResearchSession,
    code: str,
    *,
    formats: list[FigureFormat],
    restart: bool = False,
    extra_files: list[PythonInputFile] | None = None,
) -> tuple[SessionRunInput, str | None]:
    """The task input of the next call and its route (the holder's queue, or None: python_q).
    The call is recorded when its run's end is (``_record_finished``)."""
    async with services.db.session() as session:
        row, task_input, route = await _claim_in(
            services, session, user, row, code,
            formats=formats, restart=restart, extra_files=extra_files,
        )  # fmt: skip
    _expect(row.id, task_input.seq, code, _claimed(row, restart))
    return task_input, route


def _claimed(row: ResearchSession, restart: bool) -> repository.Claimed:
    return repository.Claimed([] if restart else list(row.cells), row.last_call_at)


def _closed(session_id: str) -> ProblemError:
    return ProblemError(409, "session-closed", f"session {session_id} is closed; create a new one")


_HOLDERS_MAX = 10_000
_holders: dict[str, str] = {}  # session id -> its holder at the last call seen here (a guess)


async def _claim_by_id(
    services: Services, session: AsyncSession, user: User, session_id: str
) -> tuple[ResearchSession, int, bool]:
    """Claim the next call number of an active session the user owns in one statement, with
    the holder's lease checked meanwhile (the holder this process saw last, if any).

    Returns the row (as claimed), the call number and whether its holder is alive."""
    guess = _holders.get(session_id)
    lease = asyncio.ensure_future(_holder_alive(services, guess)) if guess else None
    try:
        row = await repository.claim_next(session, session_id, user.id)
    except BaseException:
        if lease is not None:
            lease.cancel()
        raise
    if row is None:
        if lease is not None:
            lease.cancel()
        found = await repository.get_owned(session, session_id, user.id)
        raise not_found(session_id) if found is None else _closed(session_id)
    if lease is not None and row.worker == guess:
        alive = await lease
    else:
        if lease is not None:
            lease.cancel()
        alive = row.worker is not None and await _holder_alive(services, row.worker)
    return row, row.seq, alive


def remember_holder(session_id: str, worker: str | None) -> None:
    if not worker:
        return
    if len(_holders) >= _HOLDERS_MAX and session_id not in _holders:
        _holders.clear()
    _holders[session_id] = worker


async def _claim_in(
    services: Services,
    session: AsyncSession,
    user: User,
    row: ResearchSession | str,
    code: str,
    *,
    formats: list[FigureFormat],
    restart: bool = False,
    extra_files: list[PythonInputFile] | None = None,
) -> tuple[ResearchSession, SessionRunInput, str | None]:
    """Read the session, claim the next call number and work out the route, in ``session``."""
    if isinstance(row, str):
        row, seq, alive = await _claim_by_id(services, session, user, row)
    else:
        if row.state != "active":
            raise _closed(row.id)
        # The holder's liveness before the first write: no Redis round trip under the write lock.
        alive = row.worker is not None and await _holder_alive(services, row.worker)
        seq = await repository.next_seq(session, row.id)
    route = session_queue(row.worker) if alive and row.worker else None
    files = [PythonInputFile.model_validate(f) for f in row.input_files]
    known = {f.file_name for f in files}
    added = [f for f in extra_files or [] if f.file_name not in known]
    values: dict[str, Any] = {}
    if added:
        files += added
        values["input_files"] = [f.model_dump(mode="json") for f in files]
    if restart:
        values |= {"cells": [], "snapshot_key": None, "variables": []}
    if values:
        await session.execute(
            update(ResearchSession).where(ResearchSession.id == row.id).values(**values)
        )
    task_input = SessionRunInput(
        session_id=row.id,
        seq=seq,
        code=code,
        input_files=files,
        limits=PythonLimitOverrides.model_validate(row.limits),
        figure_formats=formats,
        snapshot_key=None if restart else row.snapshot_key,
        restart=restart,
    )
    return row, task_input, route


async def finish_call(
    services: Services, user: User, output: dict[str, Any], *, call: _Call | None = None
) -> dict[str, Any]:
    """Turn figure keys into URLs; with ``call`` (a run no tracker follows), record the run's
    end first, which records the call too (``_record_finished``), in one commit."""
    if call is not None and call.ended is not None:
        async with services.db.session() as session:
            await call.record(services, session)
    remember_holder(str(output["session_id"]), output.get("worker"))
    figures = []
    for figure in output.get("figures") or []:
        url = await services.storage.presign_get(figure["key"], expires_s=FIGURE_URL_TTL_S)
        figures.append({**figure, "url": url})
    return {**output, "figures": figures}


_PENDING_MAX = 1_000
# (session id, call number) -> the call's code and what its claim read of the row, until the
# run's end is recorded (in this process; a run finished elsewhere is recorded without them).
_pending: dict[tuple[str, int], tuple[str, repository.Claimed]] = {}


def _expect(session_id: str, seq: int, code: str, claimed: repository.Claimed) -> None:
    if len(_pending) >= _PENDING_MAX:  # calls whose end this process never saw: oldest first
        del _pending[next(iter(_pending))]
    _pending[(session_id, seq)] = (code, claimed)


async def _record_finished(session: AsyncSession, task_id: str, state: str, output: Any) -> None:
    """The tracker's hook for ``session.run``: a finished call is recorded in the same commit
    as its run, whoever records that (the waiting request, a watcher after the caller left,
    the reconciler), so a call the caller stopped waiting for is still recorded."""
    if state != "done" or not isinstance(output, dict) or "session_id" not in output:
        return
    session_id, seq = str(output["session_id"]), int(output["seq"])
    code, claimed = _pending.pop((session_id, seq), (None, None))
    await repository.record_call(session, session_id, seq, output, code, claimed)


def install(services: Services) -> None:
    """Record session calls when their runs end (before the tracker resumes old runs)."""
    services.tracker.on_finish(SESSION_RUN.name, _record_finished)


ROUTE_TTL_S = 86_400


def _route_key(task_id: str) -> str:
    return f"corral:sessions:route:{task_id}"


def route_worker(route: str | None) -> str | None:
    """The one worker a route (a session holder's own queue) names; ``None`` for a shared queue."""
    if route is None or not route.startswith(session_queue("")):
        return None
    return route[len(session_queue("")) :] or None


async def remember_route(services: Services, task_id: str, route: str | None) -> None:
    """Note which one worker a task was routed to, so any waiter can watch that worker."""
    worker = route_worker(route)
    if worker is not None:
        await services.redis.set(_route_key(task_id), worker, ex=ROUTE_TTL_S)


async def routed_worker(services: Services, task_id: str) -> str | None:
    worker = await services.redis.get(_route_key(task_id))
    if worker is None:
        return None
    return worker.decode() if isinstance(worker, bytes) else str(worker)


async def watch_holder(
    services: Services, task_id: str, worker: str | None, waiter: Awaitable[Any]
) -> Any:
    """``waiter``'s outcome; ``None`` if ``worker`` (the task's holder) died meanwhile.

    While waiting, the holder's lease is checked every ``LEASE_CHECK_S``: when it lapses the
    wait ends at once and the task is revoked (it cannot run elsewhere: it was on that
    worker's own queue), rather than waiting for a timeout.
    """
    if worker is None:
        return await waiter
    task = asyncio.ensure_future(waiter)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=LEASE_CHECK_S)
            if done:
                return task.result()
            if not await _holder_alive(services, worker):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                with contextlib.suppress(Exception):
                    await services.sender.revoke(task_id)
                return None
    finally:
        if not task.done():
            task.cancel()


def worker_lost_message(worker: str | None) -> str:
    return (
        f"the worker holding this session ({worker}) stopped during the call, which did not "
        "complete; run it again: the session is restored from its last snapshot"
    )


async def _wait(
    services: Services, task_id: str, route: str | None, worker: str | None, timeout_s: float,
    subscription: Any, on_event: OnEvent | None = None,
) -> Any:  # fmt: skip
    """The task's outcome; ``None`` if the holder died while we waited (the call is revoked)."""
    poll = long_poll_celery_result(
        task_id,
        timeout_s=timeout_s,
        hub=services.hub,
        backend=services.results,
        subscription=subscription,
        on_event=on_event,
    )
    return await watch_holder(services, task_id, worker if route is not None else None, poll)


async def run(
    services: Services,
    user: User,
    session_id: str,
    code: str,
    *,
    want_svg: bool = False,
    restart: bool = False,
    timeout_s: float = 120.0,
) -> SessionRunResponse:
    formats = [FigureFormat.PNG, FigureFormat.SVG] if want_svg else [FigureFormat.PNG]
    await services.users.ensure(user.id)  # before the transaction: it may write on its own
    async with _locks.hold(session_id):
        task_id = str(uuid.uuid4())
        async with services.hub.subscribe(task_events_key(task_id)) as subscription:
            # One commit for the call number and the run's row (each commit is ~5 ms on SQLite).
            async with services.db.session() as session:
                row, task_input, route = await _claim_in(
                    services, session, user, session_id, code, formats=formats, restart=restart
                )
                waiting = await task_runs.insert_run(
                    services,
                    session,
                    SESSION_RUN,
                    task_input,
                    owner_id=user.id,
                    queue=SESSION_RUN.default_queue,
                    tool="session",
                    task_id=task_id,
                    thread_id=row.thread_id,
                    route=route,
                )
            _expect(row.id, task_input.seq, code, _claimed(row, restart))
            await task_runs.dispatch(
                services,
                SESSION_RUN,
                task_input,
                owner_id=user.id,
                queue=SESSION_RUN.default_queue,
                task_id=task_id,
                route=route,
                waiting=waiting,
                watch=False,  # this request records the run's end and the call in one commit
            )
            call = _Call(task_id, worker=row.worker)
            recorded = False
            # For other waiters (a re-attach watches the holder); not on this call's path.
            noted = asyncio.ensure_future(remember_route(services, task_id, route))
            try:
                outcome = await _wait(
                    services, task_id, route, row.worker, timeout_s, subscription, call.note
                )
                if isinstance(outcome, TaskFailed | TaskCancelled) or outcome is None:
                    _pending.pop((row.id, task_input.seq), None)  # ended without a cell
                response = await _respond(services, user, session_id, outcome, call)
                recorded = call.ended is not None and isinstance(outcome, TaskDone)
                return response
            finally:
                with contextlib.suppress(Exception):
                    await noted
                if not recorded:  # stopped waiting, or an outcome this request did not record
                    call.follow(services, task_runs.watch_timeout_s(services, SESSION_RUN))


@dataclass
class _Call(WaitedRun):
    """One call in flight: its run (as its waiter saw it) and the holder it was sent to."""

    worker: str | None = None


async def _respond(
    services: Services, user: User, session_id: str, outcome: Any, call: _Call
) -> SessionRunResponse:
    task_id = call.task_id

    def error(kind: str, message: str, status: str = "error") -> SessionRunResponse:
        return SessionRunResponse(
            session_id=session_id,
            task_id=task_id,
            status=status,
            error={"type": kind, "message": message},
        )

    match outcome:
        case None:
            return error("SessionWorkerLost", worker_lost_message(call.worker))
        case TaskDone(output=output):
            presented = await finish_call(services, user, output, call=call)
            return SessionRunResponse(
                session_id=session_id, task_id=task_id, status="done", output=presented
            )
        case TaskFailed(error_type=error_type, message=message):
            return error(error_type, message)
        case TaskCancelled(reason=reason):
            return error("Cancelled", reason)
        case TaskTimedOut(state=state):
            return error(
                "Timeout",
                f"no result yet (task is {state.lower()}); follow it at /api/tasks/{task_id}",
                status="timeout",
            )
    raise AssertionError(f"unhandled outcome {outcome!r}")


async def close(services: Services, user: User, session_id: str) -> None:
    async with _locks.hold(session_id):
        row = await get_row(services, user, session_id)
        async with services.db.session() as session:
            await session.execute(
                update(ResearchSession)
                .where(ResearchSession.id == session_id)
                .values(state="closed", variables=[])
            )
        if await _holder_alive(services, row.worker):
            with contextlib.suppress(Exception):
                await services.sender.send(
                    SESSION_CLOSE,
                    SessionCloseInput(session_id=session_id),
                    owner_id=user.id,
                    route=session_queue(str(row.worker)),
                )
        if row.snapshot_key:
            with contextlib.suppress(Exception):
                await services.storage.delete(row.snapshot_key)
