"""Publishing a task's events to its Redis stream (``task:{id}:events``).

``task_stream_notifier`` wraps a task body: it writes ``started`` on entry and hands the body a
``StreamNotifier`` to report progress. ``done`` and ``error`` are not written here: Celery stores
the result only after the body returns, so they are written from the ``task_success`` /
``task_failure`` signals (see ``corral.tasks.lifecycle``), which fire after the store.
Terminal events go through ``TERMINAL_ONCE_LUA``: the first outcome wins, later ones are
written as ``ignored`` (see ``corral.task_schemas.delivery``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from corral.config import StreamSettings
from corral.task_schemas import (
    TERMINAL_EVENT_TYPES,
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    ProgressEvent,
    StartedEvent,
    _Event,
    encode_event,
    task_events_key,
)
from corral.task_schemas.delivery import TERMINAL_ONCE_LUA, terminal_once_call

log = structlog.get_logger(__name__)

OUTAGE_RETRIES = 12  # about 20 s of backoff: a Redis restart, not a Redis gone for good

_lock = threading.Lock()
_clients: dict[tuple[int, str], redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    """One client per process and URL: prefork children must not share their parent's sockets."""
    key = (os.getpid(), url)
    with _lock:
        client = _clients.get(key)
        if client is None:
            # Ride through a Redis restart (a few seconds) instead of failing the task.
            client = redis.Redis.from_url(
                url,
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), OUTAGE_RETRIES),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            )
            _clients[key] = client
        return client


# Counters that ride with this process's next write to a database (by URL): the task counters
# a task's start bumps go out with its `started` entry instead of in a round trip of their own.
_deferred: dict[str, list[tuple[str, str, int | float]]] = {}


def defer_increments(url: str, key: str, counts: dict[str, int | float]) -> None:
    """Add ``counts`` to hash ``key`` with the next pipeline this process sends to ``url``."""
    with _lock:
        _deferred.setdefault(url, []).extend((key, name, n) for name, n in counts.items())


def add_deferred(pipe: Any, url: str) -> None:
    """Put the increments deferred for ``url`` into ``pipe`` (which the caller executes)."""
    with _lock:
        pending = _deferred.pop(url, [])
    for key, name, amount in pending:
        if isinstance(amount, int):
            pipe.hincrby(key, name, amount)
        else:
            pipe.hincrbyfloat(key, name, amount)


class StreamNotifier:
    """Writes events of one task; every write bounds the stream (MAXLEN ~) and renews its TTL."""

    def __init__(self, task_id: str, *, redis_url: str, settings: StreamSettings) -> None:
        self.task_id = task_id
        self._url = redis_url
        self._settings = settings
        self.key = task_events_key(task_id)

    def publish(self, event: _Event) -> str:
        """Append ``event``; a terminal one only if the task has no outcome yet (else ignored)."""
        if getattr(event, "type", None) in TERMINAL_EVENT_TYPES:
            return self.publish_outcome(event)[1]
        pipe = _client(self._url).pipeline(transaction=False)
        pipe.xadd(
            self.key, cast(Any, encode_event(event)), maxlen=self._settings.maxlen, approximate=True
        )
        pipe.expire(self.key, self._settings.ttl_s)
        add_deferred(pipe, self._url)
        entry_id = pipe.execute()[0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def publish_outcome(self, event: _Event) -> tuple[bool, str]:
        """Write ``event`` as the outcome: ``(True, entry_id)``, or ``(False, first_outcome)``
        when the task already ended (then an ``ignored`` entry records this one)."""
        keys, args = terminal_once_call(
            self.task_id,
            event,
            maxlen=self._settings.maxlen,
            ttl_s=self._settings.ttl_s,
            stream_key=self.key,
        )
        won, value = cast(Any, _client(self._url).eval(TERMINAL_ONCE_LUA, len(keys), *keys, *args))
        text = value.decode() if isinstance(value, bytes) else str(value)
        if not won:
            log.info("late outcome ignored", task_id=self.task_id, first=text)
        return bool(won), text

    def started(self, attempt: int = 1, delivery: int = 1) -> None:
        self.publish(
            StartedEvent(
                worker=f"{socket.gethostname()}:{os.getpid()}", attempt=attempt, delivery=delivery
            )
        )

    def progress(
        self,
        current: float | None = None,
        total: float | None = None,
        message: str = "",
        data: Any = None,
    ) -> None:
        """Report progress; ``data`` (any JSON value) lets a task stream partial output."""
        encoded = None if data is None else json.dumps(data)
        self.publish(ProgressEvent(current=current, total=total, message=message, data=encoded))

    def done(self, result: Any, cpu_s: float | None = None) -> None:
        text = json.dumps(result)
        inline = text if len(text.encode()) <= self._settings.inline_result_max_bytes else None
        self.publish(DoneEvent(result=inline, cpu_s=cpu_s))

    def error(
        self,
        error_type: str,
        message: str,
        traceback: str | None = None,
        cpu_s: float | None = None,
    ) -> None:
        self.publish(
            ErrorEvent(error_type=error_type, message=message, traceback=traceback, cpu_s=cpu_s)
        )

    def cancelled(self, reason: str) -> None:
        self.publish(CancelledEvent(reason=reason))


@contextmanager
def task_stream_notifier(
    task_id: str, *, redis_url: str, settings: StreamSettings, attempt: int = 1, delivery: int = 1
) -> Iterator[StreamNotifier]:
    """Announce ``started`` and give the body a notifier for progress."""
    notifier = StreamNotifier(task_id, redis_url=redis_url, settings=settings)
    notifier.started(attempt=attempt, delivery=delivery)
    yield notifier
