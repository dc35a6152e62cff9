"""A few XREAD readers per process, multiplexing every task stream anyone is waiting on.

Waiters subscribe to a stream key from a cursor (``0-0`` by default, so an event written before
the waiter arrived is never missed). Each key belongs to one of the hub's readers (by a hash of
the key); a reader's connection blocks on ``XREAD`` over its awaited keys plus its control
stream, and a new subscription appends to that control stream to make the reader re-issue its
``XREAD`` with the new key. Connections stay constant however many subscriptions exist: the
readers plus one connection for control writes.

Why several readers: every ``XREAD`` names all of its reader's keys, and a reader re-issues it
after each delivery, so one reader's cost per event grows with the number of waits (300
concurrent invokes spent ~1.8 ms of the app's CPU per task packing and parsing 300 keys).
Split over ``readers``, each read names a fraction of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from corral.app.redis_pools import async_pool
from corral.task_schemas import TaskEvent, decode_event

log = structlog.get_logger(__name__)


_WAKE_GRACE_S = 0.05  # how long a wake may wait for the send expected to carry it
_MAX_PART = 2**64 - 1  # Redis refuses larger stream id parts (and the whole XREAD with them)


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """``ms-seq`` as numbers; ``ValueError`` for anything Redis would not take as a stream id."""
    ms, _, seq = entry_id.partition("-")
    if not entry_id.isascii() or not ms.isdigit() or not (seq or "0").isdigit():
        raise ValueError(f"{entry_id!r} is not a stream id like 1700000000000-0")
    parsed = int(ms), int(seq or 0)
    if max(parsed) > _MAX_PART:
        raise ValueError(f"{entry_id!r} is not a stream id: each part must be below 2^64")
    return parsed


class Subscription:
    """Entries of one stream after a cursor, delivered in order, each once."""

    def __init__(self, hub: _Reader, key: str, last_id: str) -> None:
        self.hub = hub
        self.key = key
        self.last_id = last_id
        self._last = parse_entry_id(last_id)
        self._queue: asyncio.Queue[tuple[str, TaskEvent]] = asyncio.Queue()

    def _deliver(self, entries: list[tuple[str, TaskEvent]]) -> None:
        for entry_id, event in entries:
            parsed = parse_entry_id(entry_id)
            if parsed > self._last:
                self._last = parsed
                self.last_id = entry_id
                self._queue.put_nowait((entry_id, event))

    async def get(self) -> tuple[str, TaskEvent]:
        return await self._queue.get()

    def drain(self) -> list[tuple[str, TaskEvent]]:
        """Entries already delivered and not yet read, without waiting."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        self.hub._remove(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[tuple[str, TaskEvent]]:
        return self

    async def __anext__(self) -> tuple[str, TaskEvent]:
        return await self.get()


class StreamHub:
    def __init__(
        self,
        redis_url: str,
        *,
        block_ms: int = 5_000,
        batch: int = 500,
        client_name: str | None = None,
        readers: int = 4,
    ) -> None:
        # One name per hub: CLIENT LIST then tells exactly which connections wait for us.
        self.client_name = client_name or f"corral-waiter-{uuid.uuid4().hex[:8]}"
        if readers < 1:
            raise ValueError("a stream hub needs at least one reader")
        self._writer = aioredis.Redis.from_pool(
            async_pool(
                redis_url,
                max_connections=1,
                timeout=10,
                socket_timeout=10,
                socket_connect_timeout=5,
                client_name=self.client_name,
                decode_responses=True,
            )
        )
        self._readers = [
            _Reader(redis_url, self._writer, block_ms, batch, self.client_name)
            for _ in range(readers)
        ]

    @property
    def readers(self) -> int:
        return len(self._readers)

    @property
    def waiting_keys(self) -> int:
        return sum(len(r.subs) for r in self._readers)

    @property
    def open_subscriptions(self) -> int:
        return sum(len(subs) for r in self._readers for subs in r.subs.values())

    @property
    def lag_s(self) -> float:
        """Seconds from an entry's write to its delivery, in each reader's last read (the most)."""
        return max(r.lag_s for r in self._readers)

    async def start(self) -> None:
        for reader in self._readers:
            reader.start()

    async def aclose(self) -> None:
        for reader in self._readers:
            await reader.aclose()
        await self._writer.aclose()

    async def read_after(
        self, key: str, last_id: str = "0-0", count: int = 10_000
    ) -> list[tuple[str, TaskEvent]]:
        """What the stream holds after ``last_id``, without waiting (for a finished stream)."""
        parse_entry_id(last_id)
        entries: Any = await self._writer.xrange(key, min=f"({last_id}", max="+", count=count)
        out: list[tuple[str, TaskEvent]] = []
        for entry_id, fields in entries or []:
            try:
                out.append((entry_id, decode_event(fields)))
            except ValueError:
                log.warning("skipping malformed stream entry", key=key, entry_id=entry_id)
        return out

    def subscribe(
        self, key: str, last_id: str = "0-0", *, wake_with_send: bool = False
    ) -> Subscription:
        """Follow ``key`` from after ``last_id``; use as ``async with`` to unsubscribe.
        ``wake_with_send``: the caller is about to send a task, whose publish carries the
        reader's wake (``take_wake``) in the same round trip; if no send takes it within
        50 ms, the reader is woken by itself."""
        parse_entry_id(last_id)  # reject malformed cursors before they reach Redis
        reader = self._readers[zlib.crc32(key.encode()) % len(self._readers)]
        return reader.subscribe(key, last_id, wake_with_send)

    def take_wake(self) -> str | None:
        """A control stream to write a wake entry to, if a reader of this hub is owed one: for
        a sender about to write to this Redis anyway (one round trip for both). That reader
        then sends none; a sender whose write fails calls ``wake_later`` with the stream."""
        for reader in self._readers:
            if (control := reader.take_wake()) is not None:
                return control
        return None

    def wake_later(self, control_key: str) -> None:
        for reader in self._readers:
            if reader.control_key == control_key:
                reader.wake()


class _Reader:
    """One blocking ``XREAD`` connection over its share of the hub's keys."""

    def __init__(
        self,
        redis_url: str,
        writer: aioredis.Redis,
        block_ms: int,
        batch: int,
        client_name: str,
    ) -> None:
        self._block_ms = block_ms
        self._batch = batch
        self._reader = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=block_ms / 1000 + 10,
            socket_connect_timeout=5,
            client_name=client_name,
            max_connections=1,
            decode_responses=True,
        )
        self._writer = writer
        self.subs: dict[str, set[Subscription]] = {}
        self.control_key = f"corral:hub:{uuid.uuid4().hex}:control"
        self._control_last = "0-0"
        self._wake_pending = False  # this reader is owed a wake
        self._wake_sending = False  # a task that writes it is scheduled
        self._reading: dict[str, str] = {}  # the cursors of the XREAD in flight
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.lag_s = 0.0  # seconds from an entry's write to its delivery, last read

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="corral-stream-hub")

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._writer.delete(self.control_key)
        await self._reader.aclose()

    def subscribe(self, key: str, last_id: str, wake_with_send: bool) -> Subscription:
        sub = Subscription(self, key, last_id)
        self.subs.setdefault(key, set()).add(sub)
        # The XREAD in flight already reads ``key`` from this cursor or an earlier one (another
        # waiter on the same task): it delivers to this subscription too, no wake needed.
        reading = self._reading.get(key)
        if reading is None or parse_entry_id(reading) > sub._last:
            if wake_with_send:
                self._wake_soon()
            else:
                self.wake()
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self.subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subs[sub.key]

    def wake(self) -> None:
        if self._task is None or self._closed:
            return
        self._wake_pending = True
        if not self._wake_sending:
            self._wake_sending = True
            asyncio.get_running_loop().create_task(self._send_wake())

    def _wake_soon(self) -> None:
        if self._task is None or self._closed:
            return
        self._wake_pending = True
        asyncio.get_running_loop().call_later(_WAKE_GRACE_S, self._wake_if_owed)

    def _wake_if_owed(self) -> None:
        if self._wake_pending:
            self.wake()

    def take_wake(self) -> str | None:
        if not self._wake_pending:
            return None
        self._wake_pending = False
        return self.control_key

    async def _send_wake(self) -> None:
        self._wake_sending = False
        if not self._wake_pending:  # a sender took it (``take_wake``)
            return
        # Cleared before the write: a subscription added after this point schedules its own wake.
        self._wake_pending = False
        try:
            pipe = self._writer.pipeline(transaction=False)
            pipe.xadd(self.control_key, {"w": "1"}, maxlen=100, approximate=True)
            pipe.expire(self.control_key, 3600)
            await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("stream hub wake failed", error=str(exc))

    def _cursors(self) -> dict[str, str]:
        streams = {self.control_key: self._control_last}
        for key, subs in self.subs.items():
            streams[key] = min(subs, key=lambda s: s._last).last_id
        return streams

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            cursors = self._cursors()
            self._reading = cursors
            try:
                response: Any = await self._reader.xread(
                    cast(Any, cursors), count=self._batch, block=self._block_ms
                )
                backoff = 0.05
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("stream hub read failed; retrying", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception as exc:  # the one reader of this process must outlive any reply
                log.error("stream hub read refused; retrying", error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for key, entries in response or []:
                if key == self.control_key:
                    self._control_last = entries[-1][0]
                    continue
                decoded = []
                for entry_id, fields in entries:
                    try:
                        decoded.append((entry_id, decode_event(fields)))
                    except ValueError:
                        log.warning("skipping malformed stream entry", key=key, entry_id=entry_id)
                # A subscription that joined during this read with an earlier cursor would miss
                # the entries between its cursor and the read's: it is served by the next read
                # (which starts from the smallest cursor) instead.
                if entries:  # how far behind the newest entry this read delivers
                    self.lag_s = max(0.0, time.time() - parse_entry_id(entries[-1][0])[0] / 1000)
                read_from = parse_entry_id(cursors.get(key, "0-0"))
                subs = [sub for sub in self.subs.get(key, ()) if sub._last >= read_from]
                for sub in subs:
                    sub._deliver(decoded)
                # A malformed last entry must still move the cursor on.
                if entries:
                    for sub in subs:
                        if parse_entry_id(entries[-1][0]) > sub._last:
                            sub._last = parse_entry_id(entries[-1][0])
                            sub.last_id = entries[-1][0]
