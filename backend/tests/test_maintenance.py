"""Housekeeping: the app reconciles runs whose task is gone (``lost``, with a reason), and
``celery beat`` (a real process) schedules the purge of expired scratch objects."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from corral.app.db.base import utcnow
from corral.app.db.models import TaskRun
from corral.app.services import Services
from corral.app.settings import AppSettings
from corral.app.streams import TaskFailed, long_poll_celery_result
from corral.app.task_runs import service as task_runs
from corral.task_schemas import (
    SYSTEM_ECHO,
    EchoInput,
    QueuedEvent,
    StartedEvent,
    task_events_key,
)
from tests.support.assistant import AssistantApp, assistant_app, new_user
from tests.support.db import new_sqlite_database
from tests.support.procs import BACKEND_DIR, env_vars, free_port, wait_until
from tests.support.s3 import moto_s3_server

pytestmark = pytest.mark.usefixtures("workers")

OWNER = "reconcile-owner"


@pytest.fixture
async def services(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    url = new_sqlite_database(tmp_path_factory.mktemp("reconcile-db"))
    env = stack_env | {
        "CORRAL_DATABASE__URL": url,
        "CORRAL_TASK_RUNS__IDLE_S": "0",
        "CORRAL_TASK_RUNS__GRACE_S": "0",
        "CORRAL_TASK_RUNS__INSPECT_TIMEOUT_S": "1",
    }
    with env_vars(env):
        settings = AppSettings()  # type: ignore[call-arg]
    svc = await Services.start(settings)
    await svc.users.ensure(OWNER)
    try:
        yield svc
    finally:
        await svc.aclose()


async def add_run(services: Services, state: str, *, age_s: float = 0, **fields: object) -> str:
    """A run row as if the app had sent it ``age_s`` ago (its task is whatever the test makes)."""
    task_id = str(uuid.uuid4())
    created = utcnow() - timedelta(seconds=age_s)
    async with services.db.session() as session:
        session.add(
            TaskRun(
                id=task_id,
                owner_id=OWNER,
                task_name=SYSTEM_ECHO.name,
                queue="llm_q",
                state=state,
                created_at=created,
                **fields,
            )
        )
    return task_id


async def run_row(services: Services, task_id: str) -> TaskRun:
    async with services.db.session() as session:
        row = await session.get(TaskRun, task_id)
    assert row is not None
    return row


async def test_run_whose_stream_is_gone_is_lost(services: Services) -> None:
    task_id = await add_run(services, "queued", age_s=30)
    assert await services.reconciler.run_once() == {task_id: "lost"}
    row = await run_row(services, task_id)
    assert row.state == "lost" and row.error_type == "TaskLost"
    assert "stream is gone" in (row.error_message or "")
    assert await services.reconciler.run_once() == {}  # settled


async def test_started_task_that_no_worker_has_is_lost_and_its_waiter_answered(
    services: Services,
) -> None:
    task_id = await add_run(services, "running", started_at=utcnow())
    await services.sender.publish_event(task_id, QueuedEvent(task_name="system.echo", queue="x"))
    await services.sender.publish_event(task_id, StartedEvent(worker="ghost@gone", attempt=1))
    waiter = asyncio.create_task(
        long_poll_celery_result(task_id, timeout_s=30, hub=services.hub, backend=services.results)
    )
    assert await services.reconciler.run_once() == {}  # one miss may be a slow reply
    assert (await run_row(services, task_id)).state == "running"
    assert await services.reconciler.run_once() == {task_id: "lost"}
    row = await run_row(services, task_id)
    assert row.error_message == "no worker is running it: its worker was lost"
    outcome = await asyncio.wait_for(waiter, 10)
    assert isinstance(outcome, TaskFailed) and outcome.error_type == "TaskLost"
    listed = await task_runs.list_runs(services, OWNER, state="lost", limit=10)
    assert task_id in [r.task_id for r in listed]


async def test_a_task_a_worker_is_running_is_left_alone(services: Services) -> None:
    task_id = await task_runs.submit(
        services, SYSTEM_ECHO, EchoInput(payload=1, sleep_s=4, steps=4), owner_id=OWNER
    )

    async def running() -> bool:
        return (await run_row(services, task_id)).state == "running"

    deadline = time.monotonic() + 10
    while not await running():
        assert time.monotonic() < deadline, "the echo never started"
        await asyncio.sleep(0.05)
    for _ in range(3):
        assert task_id not in await services.reconciler.run_once()
    outcome = await long_poll_celery_result(
        task_id, timeout_s=15, hub=services.hub, backend=services.results
    )
    assert outcome.status == "done"
    await asyncio.sleep(0.2)
    assert (await run_row(services, task_id)).state == "done"


async def test_outcomes_missed_by_the_app_are_recovered(services: Services) -> None:
    """The app was down while the task ran: reconcile reads the stream, or Celery's backend."""
    task_id = await add_run(services, "queued")
    await services.sender.send(
        SYSTEM_ECHO, EchoInput(payload="late"), owner_id=OWNER, task_id=task_id
    )
    await long_poll_celery_result(task_id, timeout_s=15, hub=services.hub, backend=services.results)
    assert await services.reconciler.run_once() == {task_id: "done"}
    assert (await run_row(services, task_id)).finished_at is not None
    # Stream expired, result still in the backend:
    other = await add_run(services, "running")
    await services.sender.send(SYSTEM_ECHO, EchoInput(payload=2), owner_id=OWNER, task_id=other)
    await long_poll_celery_result(other, timeout_s=15, hub=services.hub, backend=services.results)
    await services.redis.delete(task_events_key(other))
    assert await services.reconciler.run_once() == {other: "done"}


async def test_runs_past_their_deadlines_are_lost(services: Services) -> None:
    never_taken = await add_run(services, "queued", age_s=SYSTEM_ECHO.expires_s + 60)
    await services.sender.publish_event(
        never_taken, QueuedEvent(task_name="system.echo", queue="llm_q")
    )
    overran = await add_run(
        services,
        "running",
        age_s=3600,
        started_at=utcnow() - timedelta(seconds=SYSTEM_ECHO.time_limit_s + 60),
    )
    await services.sender.publish_event(overran, StartedEvent(worker="w@x"))
    assert await services.reconciler.run_once() == {never_taken: "lost", overran: "lost"}
    assert "within its expiry" in ((await run_row(services, never_taken)).error_message or "")
    assert "hard time limit" in ((await run_row(services, overran)).error_message or "")


@pytest.fixture
def reconciling_app(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AssistantApp]:
    url = new_sqlite_database(tmp_path_factory.mktemp("lifespan-db"))
    env = {"CORRAL_TASK_RUNS__RECONCILE_INTERVAL_S": "0.3", "CORRAL_TASK_RUNS__IDLE_S": "1"}
    with assistant_app(stack_env, url, "sqlite", **env) as live:
        yield live


async def test_the_app_reconciles_periodically(reconciling_app: AssistantApp) -> None:
    user = new_user()
    async with reconciling_app.client(user) as client:
        assert (await client.get("/api/me")).status_code == 200  # the user exists now
        task_id = str(uuid.uuid4())
        path = reconciling_app.database_url.split(":///", 1)[1]
        with sqlite3.connect(path) as conn:  # a run whose task vanished while the app was down
            conn.execute(
                "INSERT INTO task_runs (id, owner_id, task_name, queue, state, created_at,"
                " attempts, usage_recorded) VALUES (?, ?, 'system.echo', 'llm_q', 'running',"
                " ?, 1, 0)",
                (task_id, user, (utcnow() - timedelta(seconds=5)).replace(tzinfo=None)),
            )
        deadline = time.monotonic() + 10
        while True:
            body = (await client.get(f"/api/tasks/{task_id}")).json()
            if body["state"] == "lost":
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        assert body["error_type"] == "TaskLost" and "stream is gone" in body["error_message"]


# -- scratch purge -----------------------------------------------------------------------------


def put_local(root: Path, key: str, age_s: float) -> Path:
    path = root / "data" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)
    meta = root / "meta" / f"{key}.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text('{"content_type": "text/plain"}')
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_beat_schedules_the_purge_of_expired_scratch_objects(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    root = Path(stack_env["TASKS_STORAGE__LOCAL_DIR"])
    owner = new_user()
    old = put_local(root, f"{owner}/scratch/old-{uuid.uuid4().hex}", age_s=3 * 86_400)
    fresh = put_local(root, f"{owner}/scratch/fresh-{uuid.uuid4().hex}", age_s=60)
    old_figure = put_local(root, f"{owner}/plots/kept-{uuid.uuid4().hex}", age_s=3 * 86_400)
    log = (tmp_path / "beat.log").open("wb")
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "corral.tasks.main",
            "beat",
            "-s",
            str(tmp_path / "schedule"),
            "--pidfile",
            str(tmp_path / "beat.pid"),
            "-l",
            "INFO",
        ],
        env={**os.environ, **stack_env, "TASKS_MAINTENANCE__PURGE_INTERVAL_S": "1"},
        cwd=BACKEND_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: not old.exists(), 30, "beat's purge to delete the old scratch object")
    finally:
        beat.terminate()
        beat.wait(10)
        log.close()
    assert fresh.exists() and old_figure.exists()
    assert "Sending due task corral.purge-scratch" in (tmp_path / "beat.log").read_text()


def test_purge_lists_and_deletes_on_s3() -> None:
    from corral.config import StorageSettings
    from corral.tasks.object_store import S3ObjectStore
    from corral.tasks.purge_scratch_task import purge_expired

    with moto_s3_server() as moto:
        store = S3ObjectStore(StorageSettings(**moto.storage(f"purge-{free_port()}")))  # type: ignore[arg-type]
        old = [f"u1/scratch/old{i}" for i in range(3)]
        for key in old:
            store.put_bytes(key, b"12345", "text/plain")
        time.sleep(2.1)  # S3 times have one-second resolution
        store.put_bytes("u1/scratch/fresh", b"1", "text/plain")
        store.put_bytes("u2/plots/figure", b"1", "image/png")
        dry = purge_expired(store, {"scratch"}, max_age_s=1, dry_run=True)
        assert (dry.scanned, dry.deleted) == (4, 3)
        result = purge_expired(store, {"scratch"}, max_age_s=1)
        assert (result.deleted, result.deleted_bytes, result.errors) == (3, 15, 0)
        keys = {o["Key"] for o in store.client.list_objects_v2(Bucket=store.bucket)["Contents"]}
        assert keys == {"u1/scratch/fresh", "u2/plots/figure"}


def test_compose_and_devstack_run_beat() -> None:
    import yaml

    repo = BACKEND_DIR.parent
    services = yaml.safe_load((repo / "docker-compose.yml").read_text())["services"]
    beats = [s for s in services.values() if "beat" in (s.get("command") or [])]
    assert len(beats) == 1
    assert beats[0]["command"][:4] == ["celery", "-A", "corral.tasks.main", "beat"]
    devstack = (BACKEND_DIR / "src/corral/devstack/cli.py").read_text()
    assert '"beat"' in devstack
