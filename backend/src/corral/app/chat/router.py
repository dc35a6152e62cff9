"""``POST /api/threads/{id}/messages``: the user's message in, the assistant's turn out as SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from corral.app.chat import service
from corral.app.chat.schemas import EVENTS_DOC, ChatRequest
from corral.app.deps import ChatLimit, CurrentUser, ServicesDep

router = APIRouter(prefix="/threads", tags=["chat"])


@router.post(
    "/{thread_id}/messages",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": EVENTS_DOC}},
)
async def post_message(
    thread_id: str,
    body: ChatRequest,
    user: CurrentUser,
    services: ServicesDep,
    limit: ChatLimit,
) -> EventSourceResponse:
    """Send a message; the assistant's turn streams back. Closing the stream stops the turn
    (its running tools are cancelled) and keeps what was said so far."""
    try:
        turn, task = await service.start_turn(services, user, thread_id, body.content)
    except service.ThreadNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except service.TurnRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            while (event := await turn.events.get()) is not None:
                yield event
        finally:
            if not task.done():  # the client went away mid-turn
                task.cancel()

    headers = limit.headers() if limit is not None else {}
    return EventSourceResponse(stream(), ping=int(services.settings.sse_ping_s), headers=headers)
