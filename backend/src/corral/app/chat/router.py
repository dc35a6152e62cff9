"""``POST /api/threads/{id}/messages``: the user's message starts a turn that runs on its own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, status
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from corral.app.chat import service
from corral.app.chat.schemas import ChatRequest
from corral.app.deps import ChatLimit, CurrentUser, ServicesDep
from corral.app.idempotency import IdempotencyKey
from corral.app.params import ResourceId
from corral.app.problems import problem_responses
from corral.app.streams.sse import stream_response
from corral.app.turns import events as turn_events
from corral.app.turns.schemas import EVENTS_DOC, TurnAccepted

router = APIRouter(prefix="/threads", tags=["chat"])


@router.post(
    "/{thread_id}/messages",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TurnAccepted,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "With `Accept: text/event-stream`: the turn's events.\n\n" + EVENTS_DOC,
        },
        **problem_responses(401, 404, 409, 422, 429, 503),
    },
)
async def post_message(
    thread_id: ResourceId,
    body: ChatRequest,
    user: CurrentUser,
    services: ServicesDep,
    limit: ChatLimit,
    accept: Annotated[str | None, Header(max_length=1000)] = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse | EventSourceResponse:
    """Send a message: the assistant's turn starts and runs on its own — `202 {turn_id,
    message_id, events_url}`; follow `events_url` (SSE, resumable). With
    `Accept: text/event-stream` the same events stream back in this response instead.
    Closing a stream never stops the turn; `POST /api/turns/{id}/cancel` does.
    While a turn runs, another message is refused (409 `turn-in-progress`) or queued after it
    (`CORRAL_CHAT__DOUBLE_TEXTING=enqueue`). No model configured: 503 `no-model-configured`.
    With an `Idempotency-Key`, a retried request (same user and key, within 24 h) answers the
    turn the first one started instead of sending the message twice."""
    try:
        accepted = await service.start_turn(
            services, user, thread_id, body.content, idempotency_key
        )
    except service.ThreadNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    headers = limit.headers() if limit is not None else {}
    if accept and "text/event-stream" in accept:
        response = stream_response(
            services.hub,
            turn_events.turn_events_key(accepted.turn_id),
            "0-0",
            max_s=services.settings.chat.turn_timeout_s + 600,
            ping_s=services.settings.sse_ping_s,
            render=turn_events.render,
        )
        response.headers.update(headers)
        return response
    return JSONResponse(accepted.model_dump(), status_code=202, headers=headers)
