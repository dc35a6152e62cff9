"""Relaying one event stream to a browser as server-sent events that resume exactly.

Event ids are Redis stream ids, so a client reconnecting with ``Last-Event-ID`` continues after
the last entry it saw. The stream ends after a terminal event or at a deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from corral.app.observability.counters import SSE_CLIENTS
from corral.app.params import STREAM_ID_PATTERN, STREAM_ID_SCHEMA
from corral.app.streams._hub import StreamHub, parse_entry_id
from corral.task_schemas import TaskEvent, is_terminal

_ENTRY_ID = re.compile(STREAM_ID_PATTERN)

Render = Callable[[str, TaskEvent], ServerSentEvent]

LastEventId = Annotated[
    str | None,
    Header(
        max_length=48,
        pattern=STREAM_ID_PATTERN,
        description="Resume after this event id (sent by EventSource on reconnect).",
    ),
    STREAM_ID_SCHEMA,
]

# ``responses=`` for an SSE route: a text/event-stream body, not JSON.
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events; each `id` is a stream id to resume from.",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "description": "One event: `event` is its type, `data` JSON, `id` its cursor.",
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"type": "string"},
                        "data": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                }
            }
        },
    }
}


FUTURE_SLACK_MS = 60_000  # clocks of app processes and Redis may differ a little


def resume_cursor(last_event_id: str | None, after: str | None) -> str:
    """Where to start: after ``Last-Event-ID`` (or ``?after=``), else from the beginning.

    A cursor from the future is refused: nothing after it would ever reach the client (its
    stream's end included), so the connection would wait out its deadline for nothing."""
    cursor = last_event_id or after or "0-0"
    try:
        if not _ENTRY_ID.match(cursor):
            raise ValueError(f"{cursor!r} is not a stream id like 1700000000000-0")
        ms, _ = parse_entry_id(cursor)  # each part below 2^64, as Redis requires
        if ms > time.time() * 1000 + FUTURE_SLACK_MS:
            raise ValueError(f"{cursor!r} is in the future; resume from an id you received")
    except ValueError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"Last-Event-ID / after: {exc}"
        ) from exc
    return cursor


def render_event(entry_id: str, event: TaskEvent) -> ServerSentEvent:
    """The event as it is in the stream: SSE event name = its type, data = its fields."""
    return ServerSentEvent(
        id=entry_id,
        event=event.type,
        data=json.dumps(event.model_dump(mode="json", exclude_none=True)),
    )


def stream_response(
    hub: StreamHub,
    key: str,
    cursor: str,
    *,
    max_s: float,
    ping_s: float,
    render: Render = render_event,
    ended: bool = False,
) -> EventSourceResponse:
    """``ended``: the stream's owner is finished (its record says so), so what the stream holds
    after ``cursor`` is all there will be: sent at once, then the response ends (a browser
    reconnecting after the terminal event is not kept waiting until the deadline)."""

    async def events() -> AsyncIterator[ServerSentEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s
        SSE_CLIENTS.inc()
        try:
            if ended:
                for entry_id, event in await hub.read_after(key, cursor):
                    yield render(entry_id, event)
                return
            async with hub.subscribe(key, cursor) as sub:
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        entry_id, event = await asyncio.wait_for(sub.get(), remaining)
                    except TimeoutError:
                        return
                    yield render(entry_id, event)
                    if is_terminal(event):
                        return
        finally:
            SSE_CLIENTS.dec()

    return EventSourceResponse(events(), ping=int(ping_s))
