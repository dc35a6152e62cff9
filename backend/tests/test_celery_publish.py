"""The event-loop publisher writes Celery's own message, and real workers run what it sends.

``RedisTaskPublisher`` replaces ``send_task``'s thread hop on the Redis broker. It must produce
what kombu would push for the same call (compared field by field with a message ``send_task``
really pushed to a real redis-server), land in the list kombu's consumer reads for each
priority, and its sends must be answered by a real worker. A broker that cannot be reached is a
``BrokerUnavailable`` with the reason on the task's stream, never a hang.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery

from corral.app.celery_client import BrokerUnavailable, TaskSender, build_celery_client
from corral.app.celery_publish import RedisTaskPublisher, same_server_dbs
from corral.app.services import Services
from corral.app.settings import AppSettings
from corral.app.streams import StreamHub, TaskDone, long_poll_celery_result
from corral.task_schemas import (
    PRIORITY_NORMAL,
    PRIORITY_STEPS,
    PRIORITY_URGENT,
    SYSTEM_ECHO,
    EchoInput,
    Queue,
    QueuedEvent,
    encode_event,
    message_kwargs,
    task_events_key,
)
from corral.task_schemas.metrics import METRICS_KEY
from corral.task_schemas.metrics import field as metric_field
from tests.support.bus import running_services
from tests.support.procs import RedisServer, env_vars, free_port


@pytest.fixture
async def services(stack_env: dict[str, str], workers: Any) -> AsyncIterator[Services]:
    async with running_services(stack_env) as svc:
        yield svc


def _kombu_message(
    client: Celery, settings: AppSettings, queue: str, priority: int, **send: Any
) -> tuple[str, Any]:
    """What ``send_task`` pushes: (the list it went to, the decoded document)."""
    broker = redis.Redis.from_url(settings.redis.broker_url)
    try:
        client.send_task(SYSTEM_ECHO.name, queue=queue, priority=priority, **send)
        keys = [k.decode() for k in broker.keys(f"{queue}*")]
        assert len(keys) == 1, keys
        raw = broker.lrange(keys[0], 0, -1)
        assert len(raw) == 1
        return keys[0], json.loads(raw[0])
    finally:
        broker.delete(*broker.keys(f"{queue}*"), *broker.keys(f"_kombu.binding*{queue}"))
        broker.close()


@pytest.mark.parametrize("priority", [PRIORITY_URGENT, PRIORITY_NORMAL, 9])
async def test_message_is_the_one_send_task_pushes(
    stack_env: dict[str, str], priority: int
) -> None:
    with env_vars(stack_env):
        settings = AppSettings()
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    task_id = str(uuid.uuid4())
    kwargs = message_kwargs(EchoInput(payload={"x": [1, "é"]}), "owner-1")
    headers = {"corral_sent": 1.25, "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    client = build_celery_client(settings)  # one client: `reply_to` is per client and thread
    their_key, theirs = _kombu_message(
        client,
        settings,
        queue,
        priority,
        kwargs=kwargs,
        task_id=task_id,
        expires=600.0,
        headers=headers,
    )
    broker = aioredis.Redis.from_url(settings.redis.broker_url)
    try:
        publisher = RedisTaskPublisher(client, broker, PRIORITY_STEPS)
        mine = json.loads(
            publisher.encode(
                publisher.message(
                    SYSTEM_ECHO.name,
                    task_id=task_id,
                    kwargs=kwargs,
                    queue=queue,
                    priority=priority,
                    expires_s=600.0,
                    headers=headers,
                )
            )
        )
    finally:
        await broker.aclose()
        client.close()

    assert publisher.list_key(queue, priority) == their_key
    # Only the fresh delivery tag and the expiry instant (computed at send time) may differ.
    for doc in (theirs, mine):
        uuid.UUID(doc["properties"].pop("delivery_tag"))
    expiry = [datetime.fromisoformat(doc["headers"].pop("expires")) for doc in (theirs, mine)]
    assert abs((expiry[0] - expiry[1]).total_seconds()) < 5
    assert mine == theirs


async def test_published_tasks_are_answered_by_a_real_worker_at_each_priority(
    services: Services,
) -> None:
    assert services.sender._publisher is not None, "the Redis broker publishes from the loop"
    for priority in (PRIORITY_URGENT, PRIORITY_NORMAL, None):
        payload = {"priority": priority, "text": "héllo"}
        task_id = await services.sender.send(
            SYSTEM_ECHO, EchoInput(payload=payload), owner_id="u1", priority=priority
        )
        outcome = await long_poll_celery_result(
            task_id, timeout_s=30, hub=services.hub, backend=services.results
        )
        assert isinstance(outcome, TaskDone), outcome
        assert outcome.output["payload"] == payload


async def test_urgent_messages_are_consumed_before_the_normal_backlog(
    stack_env: dict[str, str], redis_server: RedisServer
) -> None:
    """Nobody consumes the probe queue: the lists show the order a worker would take them in."""
    with env_vars(stack_env):
        settings = AppSettings()
    broker = aioredis.Redis.from_url(settings.redis.broker_url)
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    publisher = RedisTaskPublisher(build_celery_client(settings), broker, PRIORITY_STEPS)
    try:
        for priority in (PRIORITY_NORMAL, PRIORITY_URGENT):
            await publisher.publish(
                SYSTEM_ECHO.name,
                task_id=f"t-{priority}",
                kwargs={},
                queue=queue,
                priority=priority,
                expires_s=None,
                headers={},
            )
        urgent = publisher.list_key(queue, PRIORITY_URGENT)
        normal = publisher.list_key(queue, PRIORITY_NORMAL)
        # kombu's Redis consumer pops from the lists in priority_steps order (lowest first).
        polled = [publisher.list_key(queue, step) for step in sorted(PRIORITY_STEPS)]
        assert polled.index(urgent) < polled.index(normal)
        assert await broker.llen(urgent) == 1 and await broker.llen(normal) == 1
    finally:
        await broker.delete(*(await broker.keys(f"{queue}*")))
        await broker.aclose()


async def test_unreachable_broker_is_broker_unavailable_with_the_reason_on_the_stream(
    stack_env: dict[str, str], redis_server: RedisServer
) -> None:
    with env_vars(stack_env):
        settings = AppSettings()
    closed_port = free_port()  # nothing listens here
    client = build_celery_client(settings)
    client.conf.broker_url = f"redis://127.0.0.1:{closed_port}/0"
    streams = aioredis.Redis.from_url(settings.redis.streams_url, decode_responses=True)
    sender = TaskSender(client, streams, settings.streams, settings.redis.streams_url)
    task_id = str(uuid.uuid4())
    try:
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            await sender.send(SYSTEM_ECHO, EchoInput(payload={}), owner_id="u1", task_id=task_id)
        entries = await streams.xrange(task_events_key(task_id))
        types = [fields["type"] for _, fields in entries]
        assert types == ["queued", "error"], entries
        assert "could not queue" in entries[-1][1]["message"]
    finally:
        await sender.aclose()
        await streams.aclose()
        client.close()


async def test_one_round_trip_send_queues_then_pushes_and_carries_the_hubs_wake(
    stack_env: dict[str, str], redis_server: RedisServer
) -> None:
    """Broker and streams on one server: ``queued``, the counter, the hub's wake and the
    message go in one script. Nobody consumes the probe queue, so the list shows the message;
    a subscription made before the send is served by the wake the send carried."""
    with env_vars(stack_env):
        settings = AppSettings()
    client = build_celery_client(settings)
    streams = aioredis.Redis.from_url(settings.redis.streams_url, decode_responses=True)
    broker = aioredis.Redis.from_url(settings.redis.broker_url)
    hub = StreamHub(settings.redis.streams_url)
    await hub.start()
    sender = TaskSender(client, streams, settings.streams, settings.redis.streams_url, hub)
    assert sender._dbs == (settings.redis.streams_db, settings.redis.broker_db)
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    task_id = str(uuid.uuid4())
    sent_before = int(await streams.hget(METRICS_KEY, metric_field("sent", SYSTEM_ECHO.name)) or 0)
    writes_before = await _stream_writes(streams)
    try:
        await asyncio.sleep(0.05)  # the hub's reader is blocked on its XREAD
        async with hub.subscribe(task_events_key(task_id)) as sub:
            await sender.send(
                SYSTEM_ECHO,
                EchoInput(payload={"x": 1}),
                owner_id="u1",
                queue=Queue.LLM,
                task_id=task_id,
                route=queue,
            )
            _, first = await asyncio.wait_for(sub.get(), 2)
        assert first.type == "queued" and first.queue == queue
        # One XADD for `queued`, one for the wake: the hub sent no wake of its own.
        assert await _stream_writes(streams) - writes_before == 2
        sent = int(await streams.hget(METRICS_KEY, metric_field("sent", SYSTEM_ECHO.name)) or 0)
        assert sent == sent_before + 1
        lists = await broker.keys(f"{queue}*")
        assert len(lists) == 1, lists
        raw = await broker.lrange(lists[0], 0, -1)
        assert len(raw) == 1
        doc = json.loads(raw[0])
        assert doc["headers"]["id"] == task_id and doc["headers"]["task"] == SYSTEM_ECHO.name
        assert doc["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
        body = json.loads(base64.b64decode(doc["body"]))
        assert body[1] == message_kwargs(EchoInput(payload={"x": 1}), "u1")
    finally:
        await broker.delete(*(await broker.keys(f"{queue}*")))
        await sender.aclose()
        await hub.aclose()
        await broker.aclose()
        await streams.aclose()
        client.close()


async def test_a_wake_owed_to_a_send_waits_for_it_and_not_longer(
    stack_env: dict[str, str], redis_server: RedisServer
) -> None:
    """``wake_with_send``: the hub writes no wake of its own when the send comes a moment later
    (an HTTP invoke writes its SQL row in between), and wakes by itself when none comes."""
    with env_vars(stack_env):
        settings = AppSettings()
    client = build_celery_client(settings)
    streams = aioredis.Redis.from_url(settings.redis.streams_url, decode_responses=True)
    broker = aioredis.Redis.from_url(settings.redis.broker_url)
    hub = StreamHub(settings.redis.streams_url, readers=1)
    await hub.start()
    sender = TaskSender(client, streams, settings.streams, settings.redis.streams_url, hub)
    assert sender.carries_wakes
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.sleep(0.05)  # the hub's reader is blocked on its XREAD
        plain = task_events_key(str(uuid.uuid4()))
        async with hub.subscribe(plain):
            await asyncio.sleep(0.02)
            assert hub.take_wake() is None  # the hub wrote its wake already: one round trip
        task_id = str(uuid.uuid4())
        async with hub.subscribe(task_events_key(task_id), wake_with_send=True) as sub:
            await asyncio.sleep(0.02)  # the row's insert and commit
            owed = hub.take_wake()
            assert owed is not None  # still owed, for the send to carry
            hub.wake_later(owed)  # given back: the send below takes it again
            await sender.send(
                SYSTEM_ECHO, EchoInput(payload=1), owner_id="u1", queue=Queue.LLM,
                task_id=task_id, route=queue,
            )  # fmt: skip
            _, first = await asyncio.wait_for(sub.get(), 2)
        assert first.type == "queued"
        assert hub.take_wake() is None  # the send took it

        # No send takes the wake (e.g. fair share held the run back): the hub sends it itself.
        quiet = task_events_key(str(uuid.uuid4()))
        async with hub.subscribe(quiet, wake_with_send=True) as sub:
            await asyncio.sleep(0.2)
            await streams.xadd(quiet, encode_event(QueuedEvent(task_name="x", queue="llm_q")))
            _, event = await asyncio.wait_for(sub.get(), 2)
        assert event.type == "queued"
        await streams.delete(quiet)
    finally:
        if leftovers := await broker.keys(f"{queue}*"):
            await broker.delete(*leftovers)
        await sender.aclose()
        await hub.aclose()
        await broker.aclose()
        await streams.aclose()
        client.close()


async def _stream_writes(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


@pytest.mark.parametrize(
    ("streams", "broker", "expected"),
    [
        ("redis://127.0.0.1:6380/1", "redis://127.0.0.1:6380/0", (1, 0)),
        ("redis://:pw@h:1/2", "redis://:pw@h:1/5", (2, 5)),
        ("redis://127.0.0.1:6380/1", "redis://127.0.0.1:6381/0", None),  # another server
        ("redis://u:a@h:1/1", "redis://u:b@h:1/0", None),  # other credentials: maybe not ours
        ("rediss://h:1/1?ssl_cert_reqs=none", "rediss://h:1/0?ssl_cert_reqs=none", (1, 0)),
    ],
)
def test_one_round_trip_only_on_one_server(
    streams: str, broker: str, expected: tuple[int, int] | None
) -> None:
    assert same_server_dbs(streams, broker) == expected
