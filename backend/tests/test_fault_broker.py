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

pytestmark = pytest.mark.timeout(300)  # real processes; slow on a loaded 2-core box


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


async def test_rabbitmq_urgent_messages_skip_the_normal_backlog(
    rabbitmq: str, stack_env: dict[str, str]
) -> None:
    """Quorum queues have no priorities (RabbitMQ 3.10): urgency is routed to `llm_q.urgent`,
    which the same worker consumes, so an urgent task does not wait behind the backlog."""
    from corral.task_schemas import PRIORITY_URGENT

    env = {"TASKS_BROKER__URL": rabbitmq, "CORRAL_BROKER__URL": rabbitmq}
    with fault_stack(stack_env, **env) as stack:
        stack.worker("llm_q", name="urgent-llm@test", concurrency=1)
        client = stack.streams()
        async with running_services(stack.env) as services:
            backlog = [
                await task_runs.submit(
                    services,
                    SYSTEM_ECHO,
                    EchoInput(payload=i, sleep_s=0.7),
                    owner_id="u-urgent",
                    queue=Queue.LLM,
                )
                for i in range(6)
            ]
            wait_for_event(client, backlog[0], "started")
            urgent = await task_runs.submit(
                services,
                SYSTEM_ECHO,
                EchoInput(payload="urgent", sleep_s=0.1),
                owner_id="u-urgent",
                queue=Queue.LLM,
                priority=PRIORITY_URGENT,
            )
            queued = [e for _, e in events(client, urgent) if e.type == "queued"]
            assert queued and queued[0].queue == "llm_q"
            wait_for_event(client, urgent, "done", timeout=30)
            for task_id in backlog:
                wait_for_event(client, task_id, "done", timeout=30)

            def started_at(task_id: str) -> str:
                return next(i for i, e in events(client, task_id) if e.type == "started")

            order = sorted([*backlog, urgent], key=started_at)
            # At most the running task and one already-reserved normal message go first.
            assert order.index(urgent) <= 2, [order.index(t) for t in [*backlog, urgent]]


async def test_rabbitmq_queue_depth_reaches_metrics(
    rabbitmq: str, stack_env: dict[str, str]
) -> None:
    """`/metrics` reports RabbitMQ queue depth (normal + urgent twin) from a passive declare."""
    from corral.app.observability import metrics
    from corral.task_schemas import PRIORITY_URGENT

    env = {"TASKS_BROKER__URL": rabbitmq, "CORRAL_BROKER__URL": rabbitmq}
    with fault_stack(stack_env, **env) as stack:  # no worker consumes circuit_q here
        async with running_services(stack.env) as services:
            before = await metrics.queue_depths(rabbitmq)
            assert before is not None, "RabbitMQ depth could not be read"
            for i, priority in enumerate([None, None, PRIORITY_URGENT]):
                extra = {"priority": priority} if priority is not None else {}
                await task_runs.submit(
                    services,
                    SYSTEM_ECHO,
                    EchoInput(payload=i),
                    owner_id=f"u-depth-{i}",
                    queue=Queue.CIRCUIT,
                    **extra,
                )
            after = await metrics.queue_depths(rabbitmq)
            assert after is not None
            assert after["circuit_q"] - before["circuit_q"] == 3, (before, after)
            text = (await metrics.render(services)).decode()
            assert f'corral_queue_depth{{queue="circuit_q"}} {float(after["circuit_q"])}' in text
    # A broker that does not answer is no depth, within the deadline, not a hung scrape.
    started = time.monotonic()
    assert await metrics.queue_depths("amqp://guest:guest@127.0.0.1:1//") is None
    assert time.monotonic() - started < metrics.AMQP_TIMEOUT_S * 3 + 1
