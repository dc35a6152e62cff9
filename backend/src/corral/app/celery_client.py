"""The app's Celery client: it only sends tasks by registry name and revokes them.

On the Redis broker a task is published from the event loop (``celery_publish``: Celery's own
message, one ``LPUSH``). Celery's client calls otherwise are synchronous socket I/O, so on
RabbitMQ the publish (and every revoke) runs in worker threads, bounded by a limiter, and never
blocks the event loop. The ``queued`` event is written before the message is published, so it
is always the first entry of the task's stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import anyio
import redis
import redis.asyncio as aioredis
from celery import Celery
from celery.backends.redis import RedisBackend
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from corral.app.celery_publish import RedisTaskPublisher, same_server_dbs
from corral.app.redis_pools import async_pool, sync_pool
from corral.app.settings import AppSettings
from corral.config import StreamSettings
from corral.task_schemas import (
    PRIORITY_NORMAL,
    PRIORITY_STEPS,
    PRIORITY_URGENT,
    ErrorEvent,
    Queue,
    QueuedEvent,
    TaskSpec,
    _Event,
    encode_event,
    message_kwargs,
    task_events_key,
)
from corral.task_schemas.delivery import (
    TERMINAL_ONCE_LUA,
    URGENT_SUFFIX,
    all_broker_queues,
    broker_kind,
    quorum_queue_arguments,
    terminal_once_call,
    urgent_queue,
)
from corral.task_schemas.events import TERMINAL_EVENT_TYPES
from corral.task_schemas.metrics import METRICS_KEY
from corral.task_schemas.metrics import field as metric_field
from corral.telemetry import inject_headers, tracer

if TYPE_CHECKING:
    from corral.app.streams._hub import StreamHub

_TRACER = tracer()


class QueueNotAllowed(ValueError):
    """The task is not consumed on the requested queue."""


class BrokerUnavailable(RuntimeError):
    """The task could not be published."""


class StreamWaitingRedisBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis backend without the pub/sub subscription it makes for every task sent.

    ``send_task`` subscribes the client to each task's result channel so that a later
    ``AsyncResult.get()`` is fast (and unsubscribes when the ``AsyncResult`` is collected). The
    app never calls ``get()``: it waits on event streams and reads stored results with
    ``ResultBackendReader``. Skipping it saves a SUBSCRIBE/UNSUBSCRIBE pair per send and the
    pub/sub connection each app process would hold.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


_BACKEND_PATH = f"{__name__}:StreamWaitingRedisBackend"


def amqp_task_queues() -> list[Any]:
    """RabbitMQ: the quorum queues exactly as the workers declare them (corral.tasks.delivery
    builds the same list; declaring one differently would fail with PRECONDITION_FAILED)."""
    from kombu.entity import Queue as KombuQueue

    return [
        KombuQueue(  # type: ignore[no-untyped-call]
            name,
            routing_key=name,
            queue_arguments=quorum_queue_arguments(name.removesuffix(URGENT_SUFFIX)),
            durable=True,
        )
        for name in all_broker_queues()
    ]


def build_celery_client(settings: AppSettings) -> Celery:
    broker = settings.broker.resolve(settings.redis)
    client = Celery(
        "corral-app",
        broker=broker,
        backend=f"{_BACKEND_PATH}+{settings.redis.backend_url}",
        set_as_current=False,
    )
    client.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        enable_utc=True,
        timezone="UTC",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        # priority_steps must match the workers' (see corral.task_schemas.PRIORITY_STEPS).
        broker_transport_options={
            "visibility_timeout": 3600,
            "max_retries": 3,
            "priority_steps": list(PRIORITY_STEPS),
        },
        result_backend_transport_options={"socket_timeout": 10},
    )
    if broker_kind(broker) == "amqp":
        client.conf.task_queues = amqp_task_queues()
        client.conf.broker_transport_options = {"confirm_publish": True}
    return client


class TaskSender:
    def __init__(
        self,
        client: Celery,
        streams: aioredis.Redis,
        stream_settings: StreamSettings,
        streams_url: str,
        hub: StreamHub | None = None,
    ) -> None:
        """``hub``: the process's stream hub, whose reader wakes ride with sends (one round
        trip for both) when the broker and the streams share a Redis server."""
        self.client = client
        self._hub = hub
        self._streams = streams
        # Used from the send thread: `queued` and the message go out in one hop off the loop.
        self._sync_streams = redis.Redis.from_pool(
            sync_pool(
                streams_url,
                max_connections=16,
                timeout=20,
                socket_timeout=10,
                socket_connect_timeout=5,
            )
        )
        self._stream_settings = stream_settings
        self._limiter = anyio.CapacityLimiter(16)
        # Bursts queue here (in order) instead of exhausting the Redis pool.
        self._send_slots = asyncio.Semaphore(32)
        broker_url = str(client.conf.broker_url)
        # RabbitMQ quorum queues have no priorities: urgent messages go to the urgent twin.
        self._route_urgent = broker_kind(broker_url) == "amqp"
        self._broker: aioredis.Redis | None = None
        self._publisher: RedisTaskPublisher | None = None
        self._dbs: tuple[int, int] | None = None  # (streams, broker) on one Redis server
        if not self._route_urgent:  # Redis broker: publish from the loop, no thread hop
            self._broker = aioredis.Redis.from_pool(
                async_pool(
                    broker_url,
                    max_connections=32,
                    timeout=20,
                    socket_timeout=10,
                    socket_connect_timeout=5,
                )
            )
            self._publisher = RedisTaskPublisher(client, self._broker, PRIORITY_STEPS)
            self._dbs = same_server_dbs(streams_url, broker_url)

    async def publish_outcome(self, task_id: str, event: _Event) -> tuple[bool, str]:
        """Write a terminal ``event`` if the task has no outcome yet: ``(True, entry_id)``;
        else ``(False, first_outcome)`` and the stream records this one as ``ignored``."""
        keys, args = terminal_once_call(
            task_id,
            event,
            maxlen=self._stream_settings.maxlen,
            ttl_s=self._stream_settings.ttl_s,
            stream_key=task_events_key(task_id),
        )
        won, value = await cast(Any, self._streams.eval(TERMINAL_ONCE_LUA, len(keys), *keys, *args))
        text = value.decode() if isinstance(value, bytes) else str(value)
        return bool(won), text

    async def publish_event(self, task_id: str, event: _Event) -> str:
        """Append ``event``; a terminal one goes through ``publish_outcome`` (first wins)."""
        if getattr(event, "type", None) in TERMINAL_EVENT_TYPES:
            won, value = await self.publish_outcome(task_id, event)
            return value if won else ""
        key = task_events_key(task_id)
        pipe = self._streams.pipeline(transaction=False)
        pipe.xadd(
            key,
            cast(Any, encode_event(event)),
            maxlen=self._stream_settings.maxlen,
            approximate=True,
        )
        pipe.expire(key, self._stream_settings.ttl_s)
        entry_id, _ = await pipe.execute()
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    @property
    def carries_wakes(self) -> bool:
        """A send writes the stream hub's owed wake in its own round trip (``take_wake``): the
        Redis broker on the streams' server."""
        return self._publisher is not None and self._dbs is not None and self._hub is not None

    def resolve_queue(self, spec: TaskSpec[Any, Any], queue: Queue | None) -> Queue:
        if queue is None:
            return spec.default_queue
        if queue not in spec.queues:
            allowed = ", ".join(q.value for q in spec.queues)
            raise QueueNotAllowed(
                f"{spec.name} does not run on {queue.value}; use one of {allowed}"
            )
        return queue

    async def send(
        self,
        spec: TaskSpec[Any, Any],
        task_input: BaseModel,
        *,
        owner_id: str,
        queue: Queue | None = None,
        task_id: str | None = None,
        priority: int | None = None,
        route: str | None = None,
    ) -> str:
        """Publish ``spec`` with its input; returns the task id. ``expires`` comes from the spec.
        ``route`` names a queue consumed by one worker of ``queue`` (a session's holder)."""
        target = self.resolve_queue(spec, queue)
        task_id = task_id or str(uuid.uuid4())
        async with self._send_slots:
            await self._publish(spec, task_input, owner_id, target, task_id, priority, route)
        return task_id

    async def _publish(
        self,
        spec: TaskSpec[Any, Any],
        task_input: BaseModel,
        owner_id: str,
        target: Queue,
        task_id: str,
        priority: int | None,
        route: str | None = None,
    ) -> None:
        routing = route or target.value
        queued = cast(Any, encode_event(QueuedEvent(task_name=spec.name, queue=routing)))
        urgent = priority is not None and priority <= PRIORITY_URGENT
        if route is None and self._route_urgent and urgent:
            routing = urgent_queue(target.value)

        def queue_and_publish() -> None:
            # One span for the send; its context rides in the message headers (`traceparent`),
            # so the worker's spans join this trace. `corral_sent` lets it time the queue wait.
            with _TRACER.start_as_current_span(f"send {spec.name}", kind=SpanKind.PRODUCER):
                headers = inject_headers({"corral_sent": time.time()})
                # `queued` first, so it is always the stream's first entry.
                key = task_events_key(task_id)
                pipe = self._sync_streams.pipeline(transaction=False)
                pipe.xadd(key, queued, maxlen=self._stream_settings.maxlen, approximate=True)
                pipe.expire(key, self._stream_settings.ttl_s)
                pipe.hincrby(METRICS_KEY, metric_field("sent", spec.name), 1)
                pipe.execute()
                self.client.send_task(
                    spec.name,
                    kwargs=message_kwargs(task_input, owner_id),
                    task_id=task_id,
                    queue=routing,
                    expires=spec.expires_s,
                    priority=PRIORITY_NORMAL if priority is None else priority,
                    headers=headers,
                    retry=True,
                    retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
                )

        try:
            if self._publisher is not None:
                await self._publish_async(spec, task_input, owner_id, routing, task_id, priority)
            else:
                await anyio.to_thread.run_sync(queue_and_publish, limiter=self._limiter)
        except Exception as exc:
            await self.publish_event(
                task_id,
                ErrorEvent(error_type="BrokerUnavailable", message=f"could not queue: {exc}"),
            )
            raise BrokerUnavailable(f"the task queue is unreachable: {exc}") from exc

    async def _publish_async(
        self,
        spec: TaskSpec[Any, Any],
        task_input: BaseModel,
        owner_id: str,
        routing: str,
        task_id: str,
        priority: int | None,
    ) -> None:
        """The Redis broker's send, no thread: ``queued`` then the message, in one round trip
        (one script) when the streams and the broker share a server, else two."""
        publisher = self._publisher
        assert publisher is not None
        name = spec.name
        with _TRACER.start_as_current_span(f"send {name}", kind=SpanKind.PRODUCER):
            headers = inject_headers({"corral_sent": time.time()})
            key = task_events_key(task_id)
            queued = encode_event(QueuedEvent(task_name=name, queue=routing))
            level = PRIORITY_NORMAL if priority is None else priority
            message = publisher.message(
                name,
                task_id=task_id,
                kwargs=message_kwargs(task_input, owner_id),
                queue=routing,
                priority=level,
                expires_s=spec.expires_s,
                headers=headers,
            )
            if self._dbs is not None:
                wake = self._hub.take_wake() if self._hub is not None else None
                try:
                    await publisher.queue_and_push(
                        self._dbs,
                        stream=key,
                        queued=queued,
                        maxlen=self._stream_settings.maxlen,
                        ttl_s=self._stream_settings.ttl_s,
                        metric=metric_field("sent", name),
                        queue=routing,
                        priority=level,
                        message=message,
                        wake=wake,
                    )
                except BaseException:
                    if wake is not None and self._hub is not None:
                        self._hub.wake_later(wake)  # other waiters counted on that wake
                    raise
                return
            pipe = self._streams.pipeline(transaction=False)
            pipe.xadd(key, cast(Any, queued), maxlen=self._stream_settings.maxlen, approximate=True)
            pipe.expire(key, self._stream_settings.ttl_s)
            pipe.hincrby(METRICS_KEY, metric_field("sent", name), 1)
            await pipe.execute()
            await publisher.push(routing, level, message)

    async def aclose(self) -> None:
        self._sync_streams.close()
        if self._broker is not None:
            await self._broker.aclose()

    async def revoke(self, task_id: str) -> None:
        """Stop the task wherever it is: discarded if queued, its process killed if running."""
        await anyio.to_thread.run_sync(
            lambda: self.client.control.revoke(task_id, terminate=True, signal="SIGTERM"),
            limiter=self._limiter,
        )
