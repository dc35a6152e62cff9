"""Delivery limit and first-outcome-wins, with real workers whose processes get SIGKILLed.

Each test has its own redis-server, SQLite database and workers (tests/support/faults.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from corral.app.db.models import TaskRun
from corral.app.streams import TaskFailed, long_poll_celery_result
from corral.app.task_runs import service as task_runs
from corral.task_schemas import SYSTEM_ECHO, EchoInput, ErrorEvent, Queue
from tests.support.bus import running_services
from tests.support.faults import events, fault_stack, kill, started_pids, wait_for_event
from tests.support.procs import wait_until
from tests.support.rabbitmq import rabbitmq_url

pytestmark = pytest.mark.timeout(300)  # real processes; slow on a loaded 2-core box


async def _row(services: Any, task_id: str) -> TaskRun:
    async with services.db.session() as session:
        row = await session.get(TaskRun, task_id)
    assert row is not None
    return row


async def _wait_row(services: Any, task_id: str, state: str, timeout: float = 15) -> TaskRun:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row = await _row(services, task_id)
        if row.state == state or loop.time() > deadline:
            return row
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[str]:
    with rabbitmq_url() as url:
        yield url


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
async def test_poison_task_fails_worker_lost_after_three_deliveries(
    broker: str, stack_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """The child is SIGKILLed every time it starts the task: 3 starts, then WorkerLost."""
    extra = {}
    if broker == "rabbitmq":
        url = request.getfixturevalue("rabbitmq")
        extra = {"TASKS_BROKER__URL": url, "CORRAL_BROKER__URL": url}
    with fault_stack(stack_env, **extra) as stack:
        stack.worker("llm_q", name="poison-llm@test")
        client = stack.streams()
        async with running_services(stack.env) as services:
            task_id = await task_runs.submit(
                services, SYSTEM_ECHO, EchoInput(sleep_s=60), owner_id="u-poison", queue=Queue.LLM
            )
            stop = threading.Event()
            killed: list[int] = []

            def killer() -> None:
                while not stop.is_set():
                    for pid in started_pids(client, task_id):
                        if pid not in killed:
                            killed.append(pid)
                            kill(pid)
                    stop.wait(0.05)

            thread = threading.Thread(target=killer, daemon=True)
            thread.start()
            try:
                outcome = await long_poll_celery_result(
                    task_id, timeout_s=90, hub=services.hub, backend=services.results
                )
            finally:
                stop.set()
                thread.join(5)
            assert isinstance(outcome, TaskFailed), outcome
            assert outcome.error_type == "WorkerLost"
            assert "the worker died 3 times running this task" in outcome.message
            assert "last seen on poison-llm@test" in outcome.message
            seen = events(client, task_id)
            started = [e for _, e in seen if e.type == "started"]
            assert [e.delivery for e in started] == [1, 2, 3]  # no 4th start
            assert len(killed) == 3
            assert [e.type for _, e in seen if e.type in ("done", "error", "cancelled")] == [
                "error"
            ]
            row = await _wait_row(services, task_id, "error")
            assert row.state == "error" and row.error_type == "WorkerLost"
            # The pool survived: the same worker still runs ordinary work.
            ok = await task_runs.submit(
                services, SYSTEM_ECHO, EchoInput(payload=1), owner_id="u-poison", queue=Queue.LLM
            )
            done = await long_poll_celery_result(
                ok, timeout_s=30, hub=services.hub, backend=services.results
            )
            assert done.__class__.__name__ == "TaskDone"


async def test_lost_wins_over_late_redelivery_and_late_result(stack_env: dict[str, str]) -> None:
    """First terminal outcome wins: a run marked lost stays lost; the late ones are recorded."""
    with fault_stack(stack_env) as stack:
        client = stack.streams()
        async with running_services(stack.env) as services:
            # 1. Marked lost while still queued (no worker yet); a worker then receives it.
            queued = await task_runs.submit(
                services, SYSTEM_ECHO, EchoInput(payload="q"), owner_id="u-dup", queue=Queue.LLM
            )
            assert await services.reconciler._mark_lost(queued, "test: its worker was lost")
            stack.worker("llm_q", name="dup-llm@test")
            ignored = wait_for_event(client, queued, "ignored")
            assert ignored[0][1].outcome == "started" and ignored[0][1].first == "error"
            assert not [e for _, e in events(client, queued) if e.type == "started"]  # not run

            # 2. Marked lost while running; the task then finishes: its `done` is ignored.
            running = await task_runs.submit(
                services,
                SYSTEM_ECHO,
                # Long enough that the claim below lands while it runs, even on a loaded machine.
                EchoInput(payload="r", sleep_s=4.0),
                owner_id="u-dup",
                queue=Queue.LLM,
            )
            wait_for_event(client, running, "started")
            assert await services.reconciler._mark_lost(running, "test: its worker was lost")
            late = wait_for_event(client, running, "ignored")
            assert late[0][1].outcome == "done" and late[0][1].first == "error"
            terminal = [e.type for _, e in events(client, running) if e.type in ("done", "error")]
            assert terminal == ["error"]
            outcome = await long_poll_celery_result(
                running, timeout_s=5, hub=services.hub, backend=services.results
            )
            assert isinstance(outcome, TaskFailed) and outcome.error_type == "TaskLost"

            # The record agrees, and an outcome reaching SQL late is kept as ignored.
            for task_id in (queued, running):
                row = await _row(services, task_id)
                assert row.state == "lost", (task_id, row.state)
            assert not await services.tracker.finish(running, "done", output={"payload": "r"})
            row = await _row(services, running)
            assert row.state == "lost"
            assert [o["state"] for o in row.ignored_outcomes or []] == ["done"]

            # 3. A cancel after the outcome is refused; a second `lost` claim loses and is recorded.
            with pytest.raises(task_runs.TaskAlreadyFinished):
                await task_runs.cancel(services, running, "u-dup")
            won, first = await services.sender.publish_outcome(
                running, ErrorEvent(error_type="TaskLost", message="again")
            )
            assert (won, first) == (False, "error")
            wait_until(
                lambda: len([e for _, e in events(client, running) if e.type == "ignored"]) >= 2,
                5,
                "the second lost recorded as ignored",
            )
