"""``/api/turns/{id}``: a chat turn as a resource — its state, its event stream, Stop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from corral.app.db.models import Turn
from corral.app.deps import CurrentUser, ServicesDep
from corral.app.params import EventCursor, ResourceId
from corral.app.problems import problem_responses
from corral.app.streams.sse import SSE_RESPONSES, LastEventId, resume_cursor, stream_response
from corral.app.turns import events as turn_events
from corral.app.turns import repository, service
from corral.app.turns.schemas import EVENTS_DOC, TurnOut

router = APIRouter(prefix="/turns", tags=["chat"])


@router.get("/{turn_id}", response_model=TurnOut, responses=problem_responses(401, 404, 422))
async def get_turn(turn_id: ResourceId, user: CurrentUser, services: ServicesDep) -> TurnOut:
    """A turn's state: `queued`, `running`, `done`, `error` or `cancelled`."""
    return service.to_out(await service.get_owned(services, user, turn_id))


@router.get(
    "/{turn_id}/events",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSES, **problem_responses(401, 404, 422)},
    description=EVENTS_DOC,
)
async def turn_events_sse(
    turn_id: ResourceId,
    user: CurrentUser,
    services: ServicesDep,
    last_event_id: LastEventId = None,
    after: EventCursor = None,
) -> EventSourceResponse:
    """Every event of the turn from the start (or after `Last-Event-ID` / `after`), until its
    terminal event. Disconnecting never stops the turn; reconnect to continue."""
    row = await service.get_owned(services, user, turn_id)
    key = turn_events.turn_events_key(turn_id)
    if row.status in repository.FINISHED and not await services.redis.exists(key):
        return EventSourceResponse(_expired(row))  # its stream outlived its TTL: the record
    return stream_response(
        services.hub,
        key,
        resume_cursor(last_event_id, after),
        max_s=services.settings.chat.turn_timeout_s + 600,
        ping_s=services.settings.sse_ping_s,
        render=turn_events.render,
        ended=row.status in repository.FINISHED,
    )


@router.post(
    "/{turn_id}/cancel", response_model=TurnOut, responses=problem_responses(401, 404, 409, 422)
)
async def cancel_turn(turn_id: ResourceId, user: CurrentUser, services: ServicesDep) -> TurnOut:
    """Stop the turn (the Stop button): its running tool tasks are cancelled and what was said
    so far is kept. Answers once it ended (or after 5 s, still `running` with
    `cancel_requested`). 409 when it already ended."""
    return await service.cancel(services, user, turn_id)


async def _expired(row: Turn) -> AsyncIterator[ServerSentEvent]:
    """A finished turn whose event stream expired: only its end, from the SQL record."""
    if row.status == "done":
        data: dict[str, object] = {"message_id": row.final_message_id, "expired": True}
    elif row.status == "error":
        data = {"type": row.error_type or "Error", "message": row.error_message or ""}
    else:
        data = {"reason": "stopped"}
    yield ServerSentEvent(id="0-1", event=row.status, data=json.dumps(data))
