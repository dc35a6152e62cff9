"""Whole-worker loss on both brokers, and the broker bounds derived from the registry.

A worker's main process is SIGKILLed while it runs a task (its pool children die with it,
PR_SET_PDEATHSIG): the task is redelivered to the other worker and completes, once. RabbitMQ
notices the dropped connection at once (quorum queues requeue the unacknowledged message);
the Redis broker waits out the visibility timeout the worker derived (tests shorten it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

from corral.app.streams import TaskDone, long_poll_celery_result
from corral.app.task_runs import service as task_runs
from corral.task_schemas import ALL_QUEUES, REGISTRY, SYSTEM_ECHO, EchoInput, Queue
from corral.task_schemas.delivery import quorum_queue_arguments, visibility_timeout_s
from tests.support.bus import running_services
from tests.support.faults import events, fault_stack, kill, started_pids, wait_for_event
from tests.support.rabbitmq import rabbitmq_url

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[str]:
    with rabbitmq_url() as url:
        yield url


def test_redis_visibility_bounds_come_from_the_registry() -> None:
    bounds = {q.value: visibility_timeout_s([q.value]) for q in ALL_QUEUES}
    # Each workload queue's bound stays in minutes (purge has a short limit of its own).
    assert all(60 < b <= 20 * 60 for b in bounds.values()), bounds
    llm_limits = [s.time_limit_s for s in REGISTRY.values() if Queue.LLM in s.queues]
    assert bounds["llm_q"] == max(llm_limits) + 60
    args = quorum_queue_arguments("llm_q")
    assert args["x-queue-type"] == "quorum" and args["x-delivery-limit"] >= 3


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
async def test_worker_main_sigkill_task_completes_on_another_worker(
    broker: str, stack_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    extra = {}
    if broker == "rabbitmq":
        url = request.getfixturevalue("rabbitmq")
        extra = {"TASKS_BROKER__URL": url, "CORRAL_BROKER__URL": url}
    with fault_stack(stack_env, **extra) as stack:
        workers = [stack.worker("llm_q", name=f"host-{h}-{broker}@test") for h in "ab"]
        client = stack.streams()
        async with running_services(stack.env) as services:
            task_id = await task_runs.submit(
                services,
                SYSTEM_ECHO,
                EchoInput(payload=broker, sleep_s=4, steps=4),
                owner_id="u-host",
                queue=Queue.LLM,
            )
            wait_for_event(client, task_id, "started")
            child = started_pids(client, task_id)[0]
            holder = next(w for w in workers if w.proc.pid == psutil.Process(child).ppid())
            other = next(w for w in workers if w is not holder)
            killed_at = time.monotonic()
            kill(holder.proc.pid)  # the main process only; its pool child dies with it
            outcome = await long_poll_celery_result(
                task_id, timeout_s=60, hub=services.hub, backend=services.results
            )
            elapsed = time.monotonic() - killed_at
            assert isinstance(outcome, TaskDone), outcome
            assert outcome.output["payload"] == broker
            seen = events(client, task_id)
            started = [e for _, e in seen if e.type == "started"]
            assert len(started) == 2 and started[1].delivery == 2
            assert [e.type for _, e in seen if e.type in ("done", "error")] == ["done"]
            assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
            if broker == "rabbitmq":
                assert elapsed < 10, f"redelivered after {elapsed:.1f}s"
            else:  # visibility timeout (6 s in tests) + one restore sweep + the 4 s task
                assert elapsed < 6 + 2 + 4 + 5, f"redelivered after {elapsed:.1f}s"
            print(f"{broker}: done {elapsed:.1f}s after the worker was killed")
            assert other.proc.poll() is None
