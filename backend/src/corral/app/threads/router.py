"""``/api/threads``: the caller's conversations and their messages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from corral.app.deps import CurrentUser, ServicesDep, SessionDep
from corral.app.params import MAX_INT64, ResourceId
from corral.app.problems import problem_responses
from corral.app.storage.store import StorageError
from corral.app.threads import service
from corral.app.threads.schemas import MessagePage, ThreadCreate, ThreadOut, ThreadUpdate

router = APIRouter(prefix="/threads", tags=["threads"])


def _not_found(exc: service.ThreadNotFound) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ThreadOut)
async def create_thread(
    body: ThreadCreate, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> ThreadOut:
    """Start a conversation. Optional `title` and `model` (a configured model name).

    Example: `POST /api/threads {"title": "Layer 5 analysis"}`"""
    try:
        return await service.create(services, session, user, body)
    except service.UnknownModel as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.get("", response_model=list[ThreadOut])
async def list_threads(
    user: CurrentUser,
    session: SessionDep,
    q: Annotated[
        str | None, Query(max_length=200, description="Title contains (any case).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> list[ThreadOut]:
    """Newest activity first."""
    return await service.list_threads(session, user, query=q, limit=limit, offset=offset)


@router.get("/{thread_id}", response_model=ThreadOut)
async def get_thread(thread_id: ResourceId, user: CurrentUser, session: SessionDep) -> ThreadOut:
    """One of your conversations: title, model, timestamps and whether a turn is running."""
    try:
        return await service.get_with_turn(session, thread_id, user)
    except service.ThreadNotFound as exc:
        raise _not_found(exc) from exc


@router.patch("/{thread_id}", response_model=ThreadOut)
async def update_thread(
    thread_id: ResourceId,
    body: ThreadUpdate,
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
) -> ThreadOut:
    """Rename a conversation or change its model.

    Example: `PATCH /api/threads/{id} {"title": "Renamed"}`"""
    try:
        return await service.update(services, session, user, thread_id, body)
    except service.ThreadNotFound as exc:
        raise _not_found(exc) from exc
    except service.UnknownModel as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.delete(
    "/{thread_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(409, 503)
)
async def delete_thread(
    thread_id: ResourceId, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> Response:
    """Deletes the thread, its messages and its artifacts (objects included); stops its tasks
    and closes its Python session (afterwards 410 `session-closed`, as after its own DELETE)."""
    try:
        await service.delete(services, session, user, thread_id)
    except service.ThreadNotFound as exc:
        raise _not_found(exc) from exc
    except service.ThreadBusy as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except StorageError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"could not delete the thread's files: {exc}"
        ) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{thread_id}/messages", response_model=MessagePage)
async def list_messages(
    thread_id: ResourceId,
    user: CurrentUser,
    session: SessionDep,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INT64, description="Only messages before this seq.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> MessagePage:
    """A page of messages, oldest first; follow ``next_before`` for older ones."""
    try:
        return await service.messages(session, user, thread_id, before=before, limit=limit)
    except service.ThreadNotFound as exc:
        raise _not_found(exc) from exc
