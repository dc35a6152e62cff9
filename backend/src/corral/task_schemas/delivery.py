"""Delivery rules both sides follow: the first terminal outcome wins, deliveries are counted.

Keys live in the streams database next to ``task:{id}:events``:

- ``task:{id}:outcome`` — the type of the task's first terminal event (``done``, ``error``,
  ``cancelled``), set once (``SET NX``) by whoever writes it: the result backend, a worker's
  failure handler, the app's cancel or reconcile's ``lost``. A later terminal event is written
  as an ``ignored`` event instead, so a stream never carries two outcomes.
- ``task:{id}:deliveries`` — a hash: per attempt (Celery retry number) how many times a worker
  started the message, and ``host``, the worker that last did. Past the task's
  ``max_deliveries`` the body is not run again (``WorkerLost``).

Both scripts are atomic, so two workers, or a worker and the app, never both win.
Broker-side helpers (queue arguments, urgent queues, visibility timeouts) are here too because
the app (publishing) and the workers (consuming) must declare queues identically.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from corral.task_schemas.events import _Event, encode_event
from corral.task_schemas.registry import REGISTRY, Queue

DEFAULT_MAX_DELIVERIES = 3
WORKER_LOST = "WorkerLost"


def task_outcome_key(task_id: str) -> str:
    return f"task:{task_id}:outcome"


def task_deliveries_key(task_id: str) -> str:
    return f"task:{task_id}:deliveries"


# KEYS: stream, outcome.  ARGV: maxlen, ttl_s, outcome type, detail for a duplicate, fields...
# Returns {1, entry_id} when this event is the outcome, {0, first_outcome} when it is ignored.
TERMINAL_ONCE_LUA = """
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[2]) then
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {1, id}
end
local first = redis.call('GET', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', 'ignored',
  'outcome', ARGV[3], 'first', first, 'detail', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {0, first}
"""

# KEYS: deliveries hash, outcome.  ARGV: attempt, host, ttl_s.
# Returns {deliveries of this attempt, host of the previous delivery, outcome or ''}.
BEGIN_DELIVERY_LUA = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local previous = redis.call('HGET', KEYS[1], 'host') or ''
redis.call('HSET', KEYS[1], 'host', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local outcome = redis.call('GET', KEYS[2]) or ''
return {n, previous, outcome}
"""


def terminal_once_call(
    task_id: str, event: _Event, *, maxlen: int, ttl_s: int, stream_key: str
) -> tuple[list[str], list[Any]]:
    """``(keys, args)`` for ``TERMINAL_ONCE_LUA`` writing ``event`` as the task's outcome."""
    fields = encode_event(event)
    detail = fields.get("message") or fields.get("reason") or ""
    flat: list[Any] = [maxlen, ttl_s, fields["type"], detail[:500]]
    for name, value in fields.items():
        flat += [name, value]
    return [stream_key, task_outcome_key(task_id)], flat


def worker_lost_message(deaths: int, host: str) -> str:
    where = f"; last seen on {host}" if host else ""
    return f"the worker died {deaths} times running this task{where}"


# ---------------------------------------------------------------------------------------------
# Brokers
# ---------------------------------------------------------------------------------------------

URGENT_SUFFIX = ".urgent"
VISIBILITY_MARGIN_S = 60.0


def broker_kind(url: str) -> str:
    """``redis`` or ``amqp`` (RabbitMQ) from a broker URL."""
    scheme = urlsplit(url).scheme
    if scheme in {"redis", "rediss"}:
        return "redis"
    if scheme in {"amqp", "amqps", "pyamqp"}:
        return "amqp"
    raise ValueError(f"unsupported broker URL scheme {scheme!r}: use redis:// or amqp://")


def urgent_queue(queue: str) -> str:
    """RabbitMQ: urgent messages of ``queue`` go to this queue, consumed by the same workers."""
    return f"{queue}{URGENT_SUFFIX}"


def specs_on(queues: Iterable[str]) -> list[Any]:
    wanted = {q.removesuffix(URGENT_SUFFIX) for q in queues}
    return [s for s in REGISTRY.values() if any(q.value in wanted for q in s.queues)]


def max_deliveries_on(queues: Iterable[str]) -> int:
    return max((s.max_deliveries for s in specs_on(queues)), default=DEFAULT_MAX_DELIVERIES)


def longest_time_limit_s(queues: Iterable[str]) -> float:
    """The longest hard time limit of the tasks routed to ``queues``."""
    return max((s.time_limit_s for s in specs_on(queues)), default=0.0)


def visibility_timeout_s(queues: Iterable[str], margin_s: float = VISIBILITY_MARGIN_S) -> float:
    """Redis broker: how long a delivered, unacknowledged message stays invisible.

    A worker that dies holding one gets it redelivered after this (plus the restore sweep's
    period); it must exceed the longest hard limit or a task still running would be delivered
    twice.
    """
    return longest_time_limit_s(queues) + margin_s


def quorum_queue_arguments(queue: str) -> dict[str, Any]:
    """RabbitMQ: a quorum queue whose own delivery limit is a backstop behind ours.

    The broker drops a message returned more than ``x-delivery-limit`` times; our limit (the
    worker fails the task ``WorkerLost`` at ``max_deliveries + 1``) must come first so the
    failure is recorded, hence the margin.
    """
    return {"x-queue-type": "quorum", "x-delivery-limit": max_deliveries_on([queue]) + 2}


def all_broker_queues() -> list[str]:
    """Every queue name a RabbitMQ deployment declares: each workload and its urgent twin."""
    return [name for q in Queue for name in (q.value, urgent_queue(q.value))]
