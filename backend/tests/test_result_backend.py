"""`done` rides in the transaction that stores the result; the signal path covers other layouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, states

from corral.app.streams import TaskDone, long_poll_celery_result
from corral.config import RedisSettings
from corral.task_schemas import SYSTEM_ECHO, QueuedEvent, decode_event, task_events_key
from corral.tasks.result_backend import BACKEND_PATH
from tests.support.bus import running_services
from tests.support.procs import RedisServer, start_worker, wait_workers_ready


def _backend(redis_server: RedisServer) -> Any:
    url = f"{redis_server.url}/{RedisSettings().backend_db}"
    app = Celery("probe", backend=f"{BACKEND_PATH}+{url}", set_as_current=False)
    app.conf.result_extended = True
    return app.backend


class _Request:
    def __init__(self, task: str) -> None:
        self.task = task
        self.id = str(uuid.uuid4())
        self.args: list[Any] = []
        self.kwargs: dict[str, Any] = {}
        self.hostname = "probe"
        self.retries = 0
        self.delivery_info: dict[str, Any] = {"routing_key": "llm_q"}
        self.ignore_result = False
        self.group = None
        self.parent_id = None
        self.root_id = None
        self.chord = None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def test_done_is_written_with_the_result(redis_server: RedisServer) -> None:
    backend = _backend(redis_server)
    client = redis.Redis.from_url(f"{redis_server.url}/{RedisSettings().streams_db}")
    ours, foreign = _Request(SYSTEM_ECHO.name), _Request("celery.backend_cleanup")
    backend.store_result(ours.id, {"answer": 42}, states.SUCCESS, request=ours)
    backend.store_result(foreign.id, None, states.SUCCESS, request=foreign)
    entries = client.xrange(task_events_key(ours.id))
    assert len(entries) == 1
    event = decode_event(entries[0][1])
    assert event.type == "done" and event.result == '{"answer": 42}'
    assert client.ttl(task_events_key(ours.id)) > 0
    assert backend.get_task_meta(ours.id)["status"] == states.SUCCESS
    assert client.xlen(task_events_key(foreign.id)) == 0  # only registry tasks get streams
    failed = _Request(SYSTEM_ECHO.name)
    backend.store_result(failed.id, ValueError("x"), states.FAILURE, request=failed)
    assert client.xlen(task_events_key(failed.id)) == 0  # errors come from the failure signal


def test_a_store_is_one_round_trip_and_never_overwrites_success(
    redis_server: RedisServer,
) -> None:
    """Celery reads the key before each store to keep a SUCCESS; here that check is inside the
    storing script: one command per store, and a late STARTED (a redelivery after the result)
    or a second SUCCESS changes nothing and announces nothing."""
    backend = _backend(redis_server)
    client = redis.Redis.from_url(f"{redis_server.url}/{RedisSettings().streams_db}")
    req = _Request(SYSTEM_ECHO.name)
    backend.store_result(req.id, {"pid": 1}, states.STARTED, request=req)  # connected
    sent = _sent_commands(
        redis_server,
        lambda: backend.store_result(req.id, {"answer": 42}, states.SUCCESS, request=req),
    )
    assert [c.split()[0].upper() for c in sent] == ["EVAL"], sent
    assert backend.get_task_meta(req.id)["result"] == {"answer": 42}
    backend.store_result(req.id, {"pid": 2}, states.STARTED, request=req)
    backend.store_result(req.id, {"answer": 0}, states.SUCCESS, request=req)
    meta = backend.get_task_meta(req.id)
    assert meta["status"] == states.SUCCESS and meta["result"] == {"answer": 42}
    assert [decode_event(f).type for _, f in client.xrange(task_events_key(req.id))] == ["done"]
    failed = _Request(SYSTEM_ECHO.name)
    backend.store_result(failed.id, ValueError("x"), states.FAILURE, request=failed)
    assert backend.get_task_meta(failed.id)["status"] == states.FAILURE
    assert client.ttl(backend.get_key_for_task(failed.id)) > 0


def _sent_commands(redis_server: RedisServer, action: Callable[[], object]) -> list[str]:
    """The commands clients sent while ``action`` ran (MONITOR; a script's own calls are not
    round trips and are left out, and so is the marker client's handshake)."""
    marker = f"end-{uuid.uuid4().hex}"
    watcher = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    with watcher.monitor() as monitor:
        action()
        redis.Redis.from_url(redis_server.url).echo(marker)
        sent = []
        while marker not in (command := monitor.next_command())["command"]:
            if command.get("client_type") != "lua" and "HELLO" not in command["command"]:
                sent.append(str(command["command"]))
    watcher.close()
    return sent


async def test_separate_streams_database_still_gets_done(
    redis_server: RedisServer, stack_env: dict[str, str]
) -> None:
    """With streams elsewhere, `done` comes from the task_success signal instead."""
    env = stack_env | {"TASKS_REDIS__STREAMS_DB": "5", "CORRAL_REDIS__STREAMS_DB": "5"}
    queue = "separate_db_q"
    worker = start_worker((queue,), env, name="separate-db@test", concurrency=1)
    try:
        wait_workers_ready(redis_server.url + "/0", [worker])
        async with running_services(env) as services:
            task_id = str(uuid.uuid4())
            await services.sender.publish_event(
                task_id, QueuedEvent(task_name=SYSTEM_ECHO.name, queue=queue)
            )
            await asyncio.to_thread(
                services.celery.send_task,
                SYSTEM_ECHO.name,
                kwargs={"input": {"payload": 5}, "owner_id": "u"},
                task_id=task_id,
                queue=queue,
            )
            outcome = await long_poll_celery_result(
                task_id, timeout_s=20, hub=services.hub, backend=services.results
            )
            assert isinstance(outcome, TaskDone) and outcome.output["payload"] == 5
        db5 = redis.Redis.from_url(redis_server.url + "/5")
        types = [decode_event(f).type for _, f in db5.xrange(task_events_key(task_id))]
        assert types == ["queued", "started", "done"]
    finally:
        worker.stop()
