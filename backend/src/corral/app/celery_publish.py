"""Celery task messages published on the Redis broker from the event loop.

``send_task`` is synchronous socket I/O, so the app ran it in a worker thread: a thread hop,
kombu's publish machinery and a round trip of its own for every task (issue 16's profile: the
publish thread was a tenth of the app's CPU). On the Redis broker a publish is one ``LPUSH`` of
a JSON document onto the queue's list, so this module builds the message with Celery's own
``amqp.create_task_message`` (headers, body, the same ids and expiry), shapes it exactly as
kombu's Redis channel does (``prepare_message``, ``_inplace_augment_message``, the priority
list from ``priority_steps``) and pushes it with redis-py asyncio. The result is byte-for-byte
kombu's layout except the fresh ``delivery_tag`` (tests compare the two and run real workers on
it). RabbitMQ keeps ``send_task`` (publisher confirms; see ``TaskSender``).
"""

from __future__ import annotations

import base64
from bisect import bisect
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import redis.asyncio as aioredis
from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps

from corral.task_schemas.metrics import METRICS_KEY

# kombu's Redis channel: priorities live in lists named `<queue><sep><step>` (step 0 = `queue`).
_PRIORITY_SEP = "\x06\x16"
_MIN_PRIORITY, _MAX_PRIORITY = 0, 9
_PERSISTENT = 2  # kombu's default delivery mode for Celery's queues


class RedisTaskPublisher:
    """``publish(...)`` = Celery's ``send_task(name, kwargs=..., queue=...)`` on a Redis broker."""

    def __init__(self, app: Celery, broker: aioredis.Redis, priority_steps: Sequence[int]) -> None:
        self._app = app
        self._broker = broker
        self._steps = sorted(priority_steps)
        self._serializer = str(app.conf.task_serializer)
        self._queue_and_push = broker.register_script(_QUEUE_AND_PUSH)

    def list_key(self, queue: str, priority: int) -> str:
        """The Redis list kombu's consumer reads ``priority`` of ``queue`` from."""
        clamped = max(min(int(priority), _MAX_PRIORITY), _MIN_PRIORITY)
        step = self._steps[bisect(self._steps, clamped) - 1]
        return f"{queue}{_PRIORITY_SEP}{step}" if step else queue

    def message(
        self,
        name: str,
        *,
        task_id: str,
        kwargs: dict[str, Any],
        queue: str,
        priority: int,
        expires_s: float | None,
        headers: dict[str, Any],
    ) -> dict[str, Any]:
        """The JSON document kombu would push for ``send_task`` with these arguments."""
        task_headers, properties, body, _sent_event = self._app.amqp.create_task_message(
            task_id,
            name,
            (),
            kwargs,
            expires=expires_s,
            reply_to=self._app.thread_oid,
            ignore_result=None,
        )
        task_headers.update(headers)
        properties["priority"] = priority
        if expires_s is not None:
            properties["expiration"] = str(int(max(expires_s, 0) * 1000))
        content_type, content_encoding, payload = serialize(body, serializer=self._serializer)  # type: ignore[no-untyped-call]
        raw = payload.encode() if isinstance(payload, str) else payload
        properties.update(
            delivery_mode=_PERSISTENT,
            delivery_info={"exchange": "", "routing_key": queue},
            body_encoding="base64",
            delivery_tag=str(uuid4()),
        )
        return {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": task_headers,
            "properties": properties,
        }

    def encode(self, message: dict[str, Any]) -> str:
        return str(json_dumps(message))  # type: ignore[no-untyped-call]

    async def queue_and_push(
        self,
        dbs: tuple[int, int],
        *,
        stream: str,
        queued: dict[str, str],
        maxlen: int,
        ttl_s: int,
        metric: str,
        queue: str,
        priority: int,
        message: dict[str, Any],
        wake: str | None = None,
    ) -> None:
        """Write a task's ``queued`` entry (with its expiry and the sent counter) and push its
        message in one round trip, on a server holding both databases ``dbs``: (streams,
        broker). ``wake``: a stream hub's control stream to wake (``StreamHub.take_wake``)."""
        fields = [part for pair in queued.items() for part in pair]
        await self._queue_and_push(
            keys=[stream, METRICS_KEY, self.list_key(queue, priority), *([wake] if wake else [])],
            args=[*dbs, maxlen, ttl_s, metric, self.encode(message), *fields],
        )

    async def push(self, queue: str, priority: int, message: dict[str, Any]) -> None:
        """``LPUSH`` a ``message`` made by ``message``."""
        await self._broker.lpush(self.list_key(queue, priority), self.encode(message))

    async def publish(
        self,
        name: str,
        *,
        task_id: str,
        kwargs: dict[str, Any],
        queue: str,
        priority: int,
        expires_s: float | None,
        headers: dict[str, Any],
    ) -> None:
        """Push the message; the broker client's pool retries a dropped connection."""
        message = self.message(
            name,
            task_id=task_id,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            expires_s=expires_s,
            headers=headers,
        )
        await self._broker.lpush(self.list_key(queue, priority), self.encode(message))


# ``queued`` on the streams database, then the message on the broker's: one round trip, in
# this order, and all or nothing (a script runs alone; SELECT inside one does not change the
# caller's connection).
_QUEUE_AND_PUSH = """
redis.call('SELECT', ARGV[1])
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
if #KEYS > 3 then  -- a stream hub's wake (as StreamHub._send_wake writes it)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100, '*', 'w', '1')
  redis.call('EXPIRE', KEYS[4], 3600)
end
redis.call('SELECT', ARGV[2])
return redis.call('LPUSH', KEYS[3], ARGV[6])
"""


def same_server_dbs(streams_url: str, broker_url: str) -> tuple[int, int] | None:
    """``(streams db, broker db)`` when both URLs name one Redis server, else ``None``."""
    streams, broker = urlsplit(streams_url), urlsplit(broker_url)
    if streams._replace(path="") != broker._replace(path=""):
        return None
    try:
        return int(streams.path.strip("/") or 0), int(broker.path.strip("/") or 0)
    except ValueError:
        return None
