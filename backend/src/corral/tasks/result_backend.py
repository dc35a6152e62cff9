"""Celery's Redis result backend, announcing ``done`` in the same transaction as the result.

ARCHITECTURE.md: ``done`` is written only after Celery stored the result. Appending it to the
task's stream inside the very MULTI/EXEC that stores the result keeps that order (the SET comes
first, atomically) and saves the round trip a separate write after ``task_success`` costs, so a
waiter learns of a finished task as soon as Celery's own ``AsyncResult.get()`` would. It only
applies when the streams live in the result backend's database; otherwise
``corral.tasks.lifecycle`` writes ``done`` from the ``task_success`` signal.
"""

from __future__ import annotations

import json
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from corral.config import StreamSettings
from corral.task_schemas import REGISTRY, DoneEvent, encode_event, task_events_key
from corral.task_schemas.delivery import TERMINAL_ONCE_LUA, terminal_once_call
from corral.tasks.run_clock import cpu_since_start

BACKEND_PATH = "corral.tasks.result_backend:StreamingRedisBackend"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def done_fields(
    result: Any, settings: StreamSettings, cpu_s: float | None = None
) -> dict[str, str]:
    text = json.dumps(result)
    inline = text if len(text.encode()) <= settings.inline_result_max_bytes else None
    return encode_event(DoneEvent(result=inline, cpu_s=cpu_s))


class StreamingRedisBackend(RedisBackend):  # type: ignore[misc]
    stream_settings = StreamSettings()

    def _set_with_state(self, key: bytes | str, value: str, state: str) -> Any:
        if state != states.SUCCESS:
            return super()._set_with_state(key, value, state)
        meta = json.loads(value)
        if meta.get("name") not in REGISTRY:
            return super()._set_with_state(key, value, state)
        task_id = _text(key)[len(_text(self.task_keyprefix)) :]
        fields = done_fields(meta.get("result"), self.stream_settings, cpu_since_start(task_id))
        return self.ensure(self._set_and_announce, (key, value, task_id, fields))

    def _set_and_announce(
        self, key: bytes | str, value: str, task_id: str, fields: dict[str, str]
    ) -> None:
        stream = task_events_key(task_id)
        settings = self.stream_settings
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, value, ex=self.expires or None)
            pipe.publish(key, value)
            # `done` only if the task has no outcome yet (e.g. reconcile's `lost` came first).
            keys, args = terminal_once_call(
                task_id,
                DoneEvent.model_validate(fields),
                maxlen=settings.maxlen,
                ttl_s=settings.ttl_s,
                stream_key=stream,
            )
            pipe.eval(TERMINAL_ONCE_LUA, len(keys), *keys, *args)
            pipe.execute()
