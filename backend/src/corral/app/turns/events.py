"""A turn's event stream ``turn:{id}:events``: writing it (text batched) and reading it back.

Entries use the task-stream format so the process's ``StreamHub`` follows them like any task
stream: a turn event ``kind`` with JSON ``data`` is a ``progress`` entry (``message`` = kind,
``data`` = JSON); the turn's end is the stream's terminal entry (``done`` with the JSON in
``result``, ``error``, ``cancelled``). ``render`` turns entries back into the turn's SSE events.
Every write trims the stream (``MAXLEN ~``) and renews its TTL, like task streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import redis.asyncio as aioredis
from sse_starlette import ServerSentEvent

from corral.app.redis_pools import async_pool
from corral.config import StreamSettings
from corral.task_schemas import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    ProgressEvent,
    TaskEvent,
    _Event,
    decode_event,
    encode_event,
)

# Kinds the stream carries besides the terminal ones.
CANCEL_REQUESTED = "cancel_requested"


def turn_events_key(turn_id: str) -> str:
    return f"turn:{turn_id}:events"


def to_entry(kind: str, data: dict[str, Any]) -> _Event:
    if kind == "done":
        return DoneEvent(result=json.dumps(data, default=str))
    if kind == "error":
        return ErrorEvent(
            error_type=str(data.get("type", "Error")), message=str(data.get("message", ""))
        )
    if kind == "cancelled":
        return CancelledEvent(reason=str(data.get("reason", "cancelled")))
    return ProgressEvent(message=kind, data=json.dumps(data, default=str))


def from_entry(event: TaskEvent) -> tuple[str, dict[str, Any]]:
    """The turn event (kind, data) an entry carries."""
    if isinstance(event, ProgressEvent):
        return event.message, (json.loads(event.data) if event.data else {})
    if isinstance(event, DoneEvent):
        return "done", (json.loads(event.result) if event.result else {})
    if isinstance(event, ErrorEvent):
        return "error", {"type": event.error_type, "message": event.message}
    if isinstance(event, CancelledEvent):
        return "cancelled", {"reason": event.reason}
    return event.type, event.model_dump(mode="json")


def render(entry_id: str, event: TaskEvent) -> ServerSentEvent:
    kind, data = from_entry(event)
    return ServerSentEvent(id=entry_id, event=kind, data=json.dumps(data))


class StreamWriter:
    """Every turn stream write of this process through ONE Redis connection: appends queue up
    and go out as one pipeline per round trip (``XADD MAXLEN ~`` + ``EXPIRE`` each), so a
    hundred busy turns cost one connection and batch their writes, in order."""

    def __init__(self, redis_url: str, streams: StreamSettings, *, client_name: str) -> None:
        self._redis = aioredis.Redis.from_pool(
            async_pool(
                redis_url,
                max_connections=1,
                timeout=10,
                socket_timeout=10,
                socket_connect_timeout=5,
                client_name=client_name,
                decode_responses=True,
            )
        )
        self._ttl_s = streams.ttl_s
        self._maxlen = max(streams.maxlen, 10_000)
        self._pending: list[tuple[str, Any, asyncio.Future[str]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def xadd(self, key: str, fields: Any) -> str:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="turn-stream-writer")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((key, fields, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for key, fields, _ in batch:
                pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
                pipe.expire(key, self._ttl_s)
            try:
                results = await pipe.execute()
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for i, (_, _, future) in enumerate(batch):
                if not future.done():
                    future.set_result(str(results[2 * i]))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._redis.aclose()


class TurnEvents:
    """Appends a turn's events in order. Text: the first delta goes out at once, later ones are
    batched until ``flush_chars`` characters wait or ``flush_s`` passed since the last write."""

    def __init__(
        self,
        writer: StreamWriter,
        turn_id: str,
        *,
        flush_chars: int = 128,
        flush_s: float = 0.05,
    ) -> None:
        self._writer = writer
        self.key = turn_events_key(turn_id)
        self._flush_chars = flush_chars
        self._flush_s = flush_s
        self._lock = asyncio.Lock()
        self._text = ""
        self._last_text_at = 0.0
        self._timer: asyncio.Task[None] | None = None
        self.written = 0

    async def emit(self, kind: str, data: dict[str, Any]) -> str:
        async with self._lock:
            await self._flush_text()
            return await self._xadd(kind, data)

    async def text(self, delta: str) -> None:
        async with self._lock:
            self._text += delta
            now = time.monotonic()
            due = self._last_text_at + self._flush_s
            if now >= due or len(self._text) >= self._flush_chars:
                await self._flush_text()
            elif self._timer is None:
                self._timer = asyncio.create_task(self._flush_later(due - now))

    async def flush(self) -> None:
        async with self._lock:
            await self._flush_text()

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            self._timer = None
            await self._flush_text()

    async def _flush_text(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
            self._timer = None
        if self._text:
            text, self._text = self._text, ""
            self._last_text_at = time.monotonic()
            await self._xadd("text", {"delta": text})

    async def _xadd(self, kind: str, data: dict[str, Any]) -> str:
        entry_id = await self._writer.xadd(self.key, encode_event(to_entry(kind, data)))
        self.written += 1
        return entry_id

    def discard_text(self) -> None:
        """Forget text not written yet (the model call it came from is re-issued)."""
        self._text = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def append(writer: StreamWriter, turn_id: str, kind: str, data: dict[str, Any]) -> str:
    """One event from outside the runner (e.g. ``cancel_requested``, a queued turn's end)."""
    return await TurnEvents(writer, turn_id).emit(kind, data)


async def read_all(redis: aioredis.Redis, turn_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every entry still in the stream as (entry id, kind, data); for a resuming runner."""
    out = []
    entries: Any = await redis.xrange(turn_events_key(turn_id))
    for entry_id, fields in entries or []:
        try:
            kind, data = from_entry(decode_event(fields))
        except ValueError:
            continue
        out.append((str(entry_id), kind, data))
    return out
