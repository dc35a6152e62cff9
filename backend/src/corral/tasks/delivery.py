"""Worker side of the delivery rules (``corral.task_schemas.delivery``).

``begin_delivery`` runs in the pool child before a task body: it counts this start of the
message atomically in Redis and says whether the body may run. A message redelivered because
its worker died is started again up to the spec's ``max_deliveries``; the next start fails the
task ``WorkerLost`` without running the body, so a task that kills its worker (OOM, a crashing
C extension) cannot crash-loop a pool. A task that already has an outcome (reconcile marked it
lost, the user cancelled it, a duplicate message) is not run at all.

``broker_options_for`` gives a worker its broker bounds from the registry: on Redis the
visibility timeout of the queues it consumes (their longest hard time limit plus a margin) and
unacknowledged-message keys of its own, so a short-queue worker never restores a long queue's
messages early; on RabbitMQ quorum queues with a delivery limit and urgent twins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import structlog

from corral.config import StreamSettings
from corral.task_schemas import TaskSpec, task_deliveries_key, task_outcome_key
from corral.task_schemas.delivery import (
    BEGIN_DELIVERY_LUA,
    VISIBILITY_MARGIN_S,
    broker_kind,
    quorum_queue_arguments,
    urgent_queue,
    visibility_timeout_s,
    worker_lost_message,
)
from corral.tasks.stream_notifier import _client

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    number: int  # starts of this attempt, this one included
    previous_host: str  # the worker that started it last time ('' on the first start)
    outcome: str  # the task's outcome if it already has one, else ''

    def over_limit(self, spec: TaskSpec[Any, Any]) -> bool:
        return self.number > spec.max_deliveries

    def lost_message(self) -> str:
        return worker_lost_message(self.number - 1, self.previous_host)


def begin_delivery(
    task_id: str, attempt: int, host: str, *, redis_url: str, settings: StreamSettings
) -> Delivery:
    """Count this start of ``task_id`` (attempt ``attempt``) on ``host``; atomic."""
    keys = [task_deliveries_key(task_id), task_outcome_key(task_id)]
    raw = cast(
        Any,
        _client(redis_url).eval(
            BEGIN_DELIVERY_LUA, len(keys), *keys, str(attempt), host, settings.ttl_s
        ),
    )
    number, previous, outcome = raw

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value or "")

    return Delivery(int(number), text(previous), text(outcome))


# ---------------------------------------------------------------------------------------------
# Broker bounds per worker
# ---------------------------------------------------------------------------------------------


def redis_transport_options(
    queues: list[str],
    *,
    visibility_timeout: float | None = None,
    restore_interval_s: float = 10.0,
    margin_s: float = VISIBILITY_MARGIN_S,
) -> dict[str, Any]:
    """Redis broker options for a worker consuming ``queues``.

    Worst case for a message held by a worker that died: ``visibility_timeout`` plus one
    restore sweep (``restore_interval_s``) before another worker of the same queues gets it.
    """
    timeout = visibility_timeout or visibility_timeout_s(queues, margin_s)
    scope = "+".join(sorted(queues))
    return {
        "visibility_timeout": timeout,
        # Each queue set restores only its own unacknowledged messages: kombu's sweep restores
        # everything in its unacked index older than *its* timeout.
        "unacked_key": f"unacked:{scope}",
        "unacked_index_key": f"unacked_index:{scope}",
        "unacked_mutex_key": f"unacked_mutex:{scope}",
        "unacked_restore_interval": restore_interval_s,
        "unacked_restore_throttle": 1,
    }


def amqp_queues(queues: list[str]) -> list[Any]:
    """Quorum queues (with delivery limits) for ``queues`` and their urgent twins, urgent first."""
    from kombu.entity import Queue as KombuQueue

    out = []
    for queue in queues:
        for name in (urgent_queue(queue), queue):
            out.append(
                KombuQueue(  # type: ignore[no-untyped-call]
                    name,
                    routing_key=name,
                    queue_arguments=quorum_queue_arguments(queue),
                    durable=True,
                )
            )
    return out


def is_amqp(url: str) -> bool:
    return broker_kind(url) == "amqp"
