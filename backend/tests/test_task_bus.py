"""The heart of Corral: send by name, stream events, wait without ever losing a result.

Everything here runs against a real redis-server and real Celery worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from corral.app.services import Services
from corral.app.streams import (
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskTimedOut,
    long_poll_celery_result,
)
from corral.app.task_runs import service as task_runs
from corral.config import RedisSettings
from corral.task_schemas import (
    SYSTEM_ECHO,
    SYSTEM_FAIL,
    EchoInput,
    FailInput,
    Queue,
    decode_event,
    task_events_key,
)
from tests.support.bus import running_services
from tests.support.procs import RedisServer, Worker, wait_until

pytestmark = pytest.mark.usefixtures("workers")


@pytest.fixture
async def services(stack_env: dict[str, str]) -> AsyncIterator[Services]:
    async with running_services(stack_env) as svc:
        yield svc


def stream_events(server: RedisServer, task_id: str) -> list[tuple[str, Any]]:
    client = redis.Redis.from_url(
        server.url + f"/{RedisSettings().streams_db}", decode_responses=True
    )
    try:
        return [(eid, decode_event(f)) for eid, f in client.xrange(task_events_key(task_id))]
    finally:
        client.close()


async def wait(services: Services, task_id: str, timeout_s: float = 30) -> Any:
    return await long_poll_celery_result(
        task_id, timeout_s=timeout_s, hub=services.hub, backend=services.results
    )


async def test_result_is_received_when_task_finished_before_waiting(
    services: Services, redis_server: RedisServer
) -> None:
    task_id = await task_runs.submit(
        services, SYSTEM_ECHO, EchoInput(payload={"n": 7}), owner_id="u1", queue=Queue.LLM
    )
    wait_until(
        lambda: any(e.type == "done" for _, e in stream_events(redis_server, task_id)),
        20,
        "the task to finish",
    )
    started = time.monotonic()
    outcome = await wait(services, task_id, timeout_s=10)
    assert isinstance(outcome, TaskDone)
    assert outcome.output["payload"] == {"n": 7}
    assert time.monotonic() - started < 1.0


async def test_large_result_is_read_from_the_backend(
    services: Services, redis_server: RedisServer
) -> None:
    big = "x" * (services.settings.streams.inline_result_max_bytes * 2)
    task_id = await task_runs.submit(
        services, SYSTEM_ECHO, EchoInput(payload=big), owner_id="u1", queue=Queue.CIRCUIT
    )
    outcome = await wait(services, task_id)
    assert isinstance(outcome, TaskDone)
    assert outcome.output["payload"] == big
    done = [e for _, e in stream_events(redis_server, task_id) if e.type == "done"]
    assert done and done[0].result is None  # did not ride in the stream


async def test_event_order_and_progress(services: Services, redis_server: RedisServer) -> None:
    task_id = await task_runs.submit(
        services, SYSTEM_ECHO, EchoInput(sleep_s=0.3, steps=3), owner_id="u1", queue=Queue.PYTHON
    )
    seen: list[str] = []

    async def on_event(entry_id: str, event: Any) -> None:
        seen.append(event.type)

    outcome = await long_poll_celery_result(
        task_id, timeout_s=20, hub=services.hub, backend=services.results, on_event=on_event
    )
    assert isinstance(outcome, TaskDone)
    assert seen == ["queued", "started", "progress", "progress", "progress", "done"]
    progress = [e for _, e in stream_events(redis_server, task_id) if e.type == "progress"]
    assert [(p.current, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]


async def test_error_outcome_is_typed_and_immediate(services: Services) -> None:
    task_id = await task_runs.submit(
        services, SYSTEM_FAIL, FailInput(message="boom 42"), owner_id="u1", queue=Queue.LLM
    )
    started = time.monotonic()
    outcome = await wait(services, task_id, timeout_s=30)
    assert isinstance(outcome, TaskFailed)
    assert (outcome.error_type, outcome.message) == ("DeliberateFailure", "boom 42")
    assert time.monotonic() - started < 5


async def test_invalid_task_input_fails_typed(services: Services) -> None:
    """A message whose input does not match the registry model is an error, not a crash loop."""
    task_id = str(uuid.uuid4())
    await services.sender.publish_event(task_id, _queued())
    await asyncio.to_thread(
        services.celery.send_task,
        SYSTEM_ECHO.name,
        kwargs={"input": {"steps": "many"}, "owner_id": "u1"},
        task_id=task_id,
        queue=Queue.LLM.value,
    )
    outcome = await wait(services, task_id, timeout_s=20)
    assert isinstance(outcome, TaskFailed)
    assert outcome.error_type == "ValidationError"
    assert "steps" in outcome.message


def _queued() -> Any:
    from corral.task_schemas import QueuedEvent

    return QueuedEvent(task_name=SYSTEM_ECHO.name, queue=Queue.LLM.value)


async def test_timeout_outcome_carries_task_id_and_state(services: Services) -> None:
    task_id = await task_runs.submit(
        services, SYSTEM_ECHO, EchoInput(sleep_s=3, steps=3), owner_id="u1", queue=Queue.CIRCUIT
    )
    started = time.monotonic()
    outcome = await wait(services, task_id, timeout_s=0.8)
    elapsed = time.monotonic() - started
    assert isinstance(outcome, TaskTimedOut)
    assert outcome.task_id == task_id
    assert outcome.state in {"PENDING", "STARTED"}
    assert 0.7 < elapsed < 2.0
    # Re-attaching later still gets the result.
    assert isinstance(await wait(services, task_id, timeout_s=20), TaskDone)


async def test_cancel_reaches_waiter_within_a_second_and_stops_the_task(
    services: Services, redis_server: RedisServer
) -> None:
    task_id = await task_runs.submit(
        services, SYSTEM_ECHO, EchoInput(sleep_s=20, steps=20), owner_id="u1", queue=Queue.LLM
    )
    waiter = asyncio.create_task(wait(services, task_id, timeout_s=30))
    wait_until(
        lambda: any(e.type == "started" for _, e in stream_events(redis_server, task_id)),
        20,
        "the task to start",
    )
    cancelled_at = time.monotonic()
    assert await task_runs.cancel(services, task_id, "u1") == "cancelled"
    outcome = await waiter
    assert isinstance(outcome, TaskCancelled)
    assert time.monotonic() - cancelled_at < 1.0
    # The task really stopped: it is marked revoked and never completes or restarts.
    wait_until(lambda: services.celery.AsyncResult(task_id).state == "REVOKED", 10, "REVOKED state")
    await asyncio.sleep(2)
    types = [e.type for _, e in stream_events(redis_server, task_id)]
    assert "done" not in types
    assert types.count("started") == 1


async def test_cancelling_a_finished_task_is_refused(services: Services) -> None:
    task_id = await task_runs.submit(services, SYSTEM_ECHO, EchoInput(), owner_id="u1")
    assert isinstance(await wait(services, task_id), TaskDone)
    with pytest.raises(task_runs.TaskAlreadyFinished):
        await task_runs.cancel(services, task_id, "u1")


async def test_sigkilled_worker_child_task_is_redelivered(
    services: Services, redis_server: RedisServer, workers: dict[str, Worker]
) -> None:
    task_id = await task_runs.submit(
        services,
        SYSTEM_ECHO,
        EchoInput(payload="survivor", sleep_s=3, steps=6),
        owner_id="u1",
        queue=Queue.CIRCUIT,
    )
    waiter = asyncio.create_task(wait(services, task_id, timeout_s=45))

    def child_pid() -> int | None:
        active = (
            services.celery.control.inspect(
                destination=[workers[Queue.CIRCUIT.value].name], timeout=1
            ).active()
            or {}
        )
        for tasks in active.values():
            for t in tasks:
                if t["id"] == task_id and t.get("worker_pid"):
                    return int(t["worker_pid"])
        return None

    pid = wait_until(child_pid, 20, "the task to run in a child process", interval=0.2)
    wait_until(
        lambda: any(e.type == "progress" for _, e in stream_events(redis_server, task_id)),
        10,
        "first progress",
    )
    os.kill(pid, signal.SIGKILL)
    outcome = await waiter
    assert isinstance(outcome, TaskDone), outcome
    assert outcome.output["payload"] == "survivor"
    assert outcome.output["worker"].split(":")[1] != str(pid)
    types = [e.type for _, e in stream_events(redis_server, task_id)]
    assert types.count("started") == 2
    assert "error" not in types


async def test_thousand_concurrent_waits_use_few_redis_connections(
    services: Services, redis_server: RedisServer
) -> None:
    admin = redis.Redis(
        host=redis_server.host, port=redis_server.port, password=redis_server.password
    )

    def waiter_connections() -> int:
        ours = services.hub.client_name
        return sum(1 for c in admin.client_list() if c.get("name", "").startswith(ours))

    ids = [str(uuid.uuid4()) for _ in range(1000)]
    waits = [asyncio.create_task(wait(services, tid, timeout_s=120)) for tid in ids]
    # All 1000 are waiting before anything is sent; sample until the hub's connections show.
    during = 0
    for _ in range(100):
        await asyncio.sleep(0.1)
        during = waiter_connections()
        if services.hub.waiting_keys == 1000 and during:
            break
    assert services.hub.waiting_keys == 1000
    queues = [Queue.PYTHON, Queue.CIRCUIT, Queue.LLM]
    sends = [
        services.sender.send(
            SYSTEM_ECHO, EchoInput(payload=i), owner_id="u1", queue=queues[i % 3], task_id=tid
        )
        for i, tid in enumerate(ids)
    ]
    await asyncio.gather(*sends)
    peak = during
    while not all(w.done() for w in waits):
        peak = max(peak, waiter_connections())
        await asyncio.sleep(0.25)
    outcomes = [w.result() for w in waits]
    admin.close()
    assert all(isinstance(o, TaskDone) for o in outcomes)
    assert [o.output["payload"] for o in outcomes] == list(range(1000))
    few = services.hub.readers + 3  # the readers, control writes, result backend, a spare
    assert 1 <= during <= few
    assert peak <= few
    assert services.hub.waiting_keys == 0


async def test_send_to_a_queue_the_task_does_not_use_is_refused(services: Services) -> None:
    from corral.app.celery_client import QueueNotAllowed
    from corral.task_schemas import TaskSpec

    only_llm: TaskSpec[Any, Any] = TaskSpec(
        name="test.only_llm",
        queues=(Queue.LLM,),
        input_model=EchoInput,
        output_model=EchoInput,
        description="test",
    )
    with pytest.raises(QueueNotAllowed, match="llm_q"):
        await services.sender.send(only_llm, EchoInput(), owner_id="u1", queue=Queue.PYTHON)


async def test_messages_carry_owner_and_expiry(
    services: Services, redis_server: RedisServer
) -> None:
    """Inspect the raw message in the broker: owner in kwargs, expires from the registry."""
    queue = "corral-test-inspect"
    task_id = str(uuid.uuid4())
    await asyncio.to_thread(
        services.celery.send_task,
        SYSTEM_ECHO.name,
        kwargs={"input": {}, "owner_id": "alice"},
        task_id=task_id,
        queue=queue,
        expires=SYSTEM_ECHO.expires_s,
    )
    raw = redis.Redis.from_url(redis_server.url + "/0").lpop(queue)
    assert raw is not None
    message = json.loads(raw)
    headers = message["headers"]
    assert headers["id"] == task_id and headers["expires"]
    body = json.loads(__import__("base64").b64decode(message["body"]))
    assert body[1]["owner_id"] == "alice"


async def test_a_run_whose_end_is_being_written_no_longer_counts_against_the_cap(
    services: Services,
) -> None:
    """A user's next call, sent the moment an answer arrived, is not held back by the run that
    answered it, although its row says ``running`` until the request writes the end."""
    from sqlalchemy import update

    from corral.app.db.base import utcnow
    from corral.app.db.models import TaskRun
    from corral.app.fairshare.scheduler import FairShare
    from corral.app.task_runs.waited import WaitedRun

    fair = services.fair = FairShare(services)  # admission only: no release loop needed here
    assert fair.settings.enabled
    owner = f"u-{uuid.uuid4().hex[:8]}"
    cap = fair.settings.cap(owner, Queue.LLM.value)
    await services.users.ensure(owner)

    async def held() -> bool:
        async with services.db.session() as session:
            return await fair.must_wait(session, owner, Queue.LLM.value)

    ids = [str(uuid.uuid4()) for _ in range(cap)]
    async with services.db.session() as session:  # the user at its cap, as SQL says
        session.add_all(
            TaskRun(id=tid, owner_id=owner, task_name=SYSTEM_ECHO.name, queue=Queue.LLM.value,
                    state="running", created_at=utcnow(), attempts=1, usage_recorded=False)
            for tid in ids
        )  # fmt: skip
    assert await held()
    fair.recording(owner, ids[0])  # one of them ended; its request is writing the end
    assert not await held()
    fair.recorded(owner, ids[0])
    assert await held()
    async with services.db.session() as session:  # end them: the next part needs room
        await session.execute(update(TaskRun).where(TaskRun.id.in_(ids)).values(state="done"))

    # The request's own path: its end is noted, the slot frees at once, the write follows.
    task_id = await task_runs.submit(
        services, SYSTEM_ECHO, EchoInput(payload=2), owner_id=owner, queue=Queue.LLM, watch=False
    )
    run = WaitedRun(task_id, owner_id=owner)
    outcome = await long_poll_celery_result(
        task_id, timeout_s=30, hub=services.hub, backend=services.results, on_event=run.note
    )
    assert isinstance(outcome, TaskDone)
    run.settle(services, watch_timeout_s=30)
    assert task_id in fair._recording.get(owner, set())
    for _ in range(100):
        if owner not in fair._recording:
            break
        await asyncio.sleep(0.05)
    assert owner not in fair._recording  # nothing left behind once written
    async with services.db.session() as session:
        row = await session.get(TaskRun, task_id)
    assert row is not None and row.state == "done" and row.started_at is not None
