"""Whole-process faults under real load: Redis restarted mid-wait, the app SIGKILLed mid-wait,
and two app processes with two worker "hosts" sharing one Redis and database.

Each test has its own Redis (AOF on, as ``make up``), SQLite file and processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.faults import (
    AppProcess,
    FaultStack,
    persistent_fault_stack,
    started_pids,
    wait_for_event,
)
from tests.support.procs import free_port
from tests.support.rabbitmq import rabbitmq_url

pytestmark = pytest.mark.timeout(300)  # real processes; slow on a loaded 2-core box


def _app(stack: FaultStack, name: str) -> AppProcess:
    return AppProcess(stack.env, free_port(), stack.log_dir / f"{name}.log").start()


def _client(app: AppProcess, timeout: float = 60) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=app.url, headers={"Authorization": f"Bearer {app.token()}"}, timeout=timeout
    )


def _echo(payload: Any, sleep_s: float, timeout_s: float = 40) -> dict[str, Any]:
    return {
        "arguments": {"payload": payload, "sleep_s": sleep_s, "queue": "llm_q"},
        "timeout_s": timeout_s,
    }


async def test_redis_restart_mid_wait_every_invoke_answers(stack_env: dict[str, str]) -> None:
    with persistent_fault_stack(stack_env) as stack:
        stack.worker("llm_q", name="redis-restart@test", concurrency=4)
        app = _app(stack, "app")
        try:
            async with _client(app) as api:
                calls = [
                    asyncio.create_task(api.post("/api/tools/echo/invoke", json=_echo(i, 2)))
                    for i in range(20)
                ]
                await asyncio.sleep(1.5)  # some running, most still queued
                stack.persistent.stop(signal.SIGTERM)  # flushes its AOF, like a clean restart
                await asyncio.sleep(1.0)
                stack.persistent.start()
                answers = [r.json() for r in await asyncio.gather(*calls)]
                assert [a["status"] for a in answers] == ["done"] * 20, [
                    a for a in answers if a["status"] != "done"
                ]
                assert sorted(a["output"]["payload"] for a in answers) == list(range(20))
                # New work, same app process: its connections came back on their own.
                again = (await api.post("/api/tools/echo/invoke", json=_echo("new", 0))).json()
                assert again["status"] == "done", again
                assert app.proc.poll() is None
        finally:
            app.stop()


async def test_app_sigkill_mid_wait_records_done_and_client_reattaches(
    stack_env: dict[str, str],
) -> None:
    with persistent_fault_stack(stack_env) as stack:
        stack.worker("llm_q", name="app-kill@test", concurrency=2)
        app = _app(stack, "app")
        try:
            async with _client(app) as api:
                call = asyncio.create_task(
                    api.post("/api/tools/echo/invoke", json=_echo("survives", 3))
                )
                runs: list[dict[str, Any]] = []
                while not runs:
                    await asyncio.sleep(0.1)
                    runs = (await api.get("/api/tasks")).json()
                task_id = runs[0]["task_id"]
                app.kill()
                with pytest.raises(httpx.HTTPError):
                    await call  # the connection died with the app
            app.start()  # same port: the client comes back to the same address
            async with _client(app) as api:
                again = (
                    await api.get(f"/api/tools/results/{task_id}", params={"timeout_s": 30})
                ).json()
                assert again["status"] == "done" and again["output"]["payload"] == "survives"

                async def recorded() -> dict[str, Any]:
                    for _ in range(100):
                        row = (await api.get(f"/api/tasks/{task_id}")).json()
                        if row["state"] == "done":
                            return dict(row)
                        await asyncio.sleep(0.1)
                    return dict(row)

                row = await recorded()
                assert row["state"] == "done", row
        finally:
            app.stop()


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[str]:
    with rabbitmq_url() as url:
        yield url


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
async def test_two_apps_two_worker_hosts_kill_a_host_mid_task(
    broker: str, stack_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """Sent through app A, awaited through app B; the worker host running it is killed whole
    (its process group) and the task completes on the other host."""
    extra = {}
    if broker == "rabbitmq":
        url = request.getfixturevalue("rabbitmq")
        extra = {"TASKS_BROKER__URL": url, "CORRAL_BROKER__URL": url}
    with persistent_fault_stack(stack_env, **extra) as stack:
        hosts = [stack.worker("llm_q", name=f"host-{h}@test", concurrency=1) for h in "ab"]
        app_a, app_b = _app(stack, "app-a"), _app(stack, "app-b")
        try:
            async with _client(app_a) as a, _client(app_b) as b:
                sent = (await a.post("/api/tools/echo/invoke", json=_echo("hop", 4, 0.2))).json()
                assert sent["status"] == "timeout", sent
                task_id = sent["task_id"]
                client = stack.streams()
                wait_for_event(client, task_id, "started")
                child = started_pids(client, task_id)[0]
                import psutil

                holder = next(h for h in hosts if h.proc.pid == psutil.Process(child).ppid())
                killed_at = time.monotonic()
                os.killpg(holder.proc.pid, signal.SIGKILL)  # the whole "host"
                waited = (
                    await b.get(f"/api/tools/results/{task_id}", params={"timeout_s": 30})
                ).json()
                elapsed = time.monotonic() - killed_at
                assert waited["status"] == "done" and waited["output"]["payload"] == "hop"
                survivor = next(h for h in hosts if h is not holder)
                pid = int(waited["output"]["worker"].rsplit(":", 1)[1])
                assert psutil.Process(pid).ppid() == survivor.proc.pid
                # RabbitMQ: redelivered at once (+ the 4 s task); Redis broker in tests: 6 s
                # visibility + 1 s sweep + the 4 s task.
                assert elapsed < (10 if broker == "rabbitmq" else 20), elapsed
                print(f"{broker}: done {elapsed:.1f}s after the host was killed")
                detail = (await a.get(f"/api/tasks/{task_id}")).json()
                assert [e["type"] for e in detail["events"]].count("done") == 1
        finally:
            app_a.stop()
            app_b.stop()
