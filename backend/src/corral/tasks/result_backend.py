"""Celery's Redis result backend, announcing ``done`` in the same script as the result.

ARCHITECTURE.md: ``done`` is written only after Celery stored the result. Appending it to the
task's stream inside the very script that stores the result keeps that order (the SET comes
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
from celery.exceptions import BackendStoreError

from corral.config import StreamSettings
from corral.task_schemas import REGISTRY, DoneEvent, encode_event, task_events_key
from corral.task_schemas.delivery import TERMINAL_ONCE_LUA, terminal_once_call
from corral.tasks.run_clock import cpu_since_start

BACKEND_PATH = "corral.tasks.result_backend:StreamingRedisBackend"


def done_fields(
    result: Any, settings: StreamSettings, cpu_s: float | None = None
) -> dict[str, str]:
    text = json.dumps(result)
    inline = text if len(text.encode()) <= settings.inline_result_max_bytes else None
    return encode_event(DoneEvent(result=inline, cpu_s=cpu_s))


# Celery's store reads the key first and skips the write if the task already SUCCEEDED (a lost
# worker's late redelivery must not overwrite a result): a round trip before every store. Here
# the check runs inside the script that stores, so a store is one round trip and the check
# cannot race. Celery's meta starts with its "status" member; ARGV[3] is how a SUCCESS one
# starts, in the backend's own encoding (tested).
_GUARD_AND_STORE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[3]) == ARGV[3] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
"""
STORE_LUA = _GUARD_AND_STORE + "return 1\n"
# The same, then `done` on the task's stream if it has no outcome yet (e.g. reconcile's `lost`
# came first): TERMINAL_ONCE_LUA with the stream and outcome keys after the result's.
STORE_AND_DONE_LUA = (
    "local function terminal_once(KEYS, ARGV)\n"
    + TERMINAL_ONCE_LUA
    + "end\n"
    + _GUARD_AND_STORE
    + "terminal_once({KEYS[2], KEYS[3]}, {unpack(ARGV, 4)})\nreturn 1\n"
)


class StreamingRedisBackend(RedisBackend):  # type: ignore[misc]
    stream_settings = StreamSettings()

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's ``_store_result`` in one round trip: guard, SET, PUBLISH and (SUCCESS of a
        Corral task) ``done``, in one script."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        if meta.get("name") not in REGISTRY:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = (self.failure_expires if state == states.FAILURE else None) or self.expires
        key = self.get_key_for_task(task_id)
        done = None
        if state == states.SUCCESS:
            done = done_fields(meta.get("result"), self.stream_settings, cpu_since_start(task_id))
        self.ensure(self._store, (key, value, int(expires or 0), task_id, done))
        return result

    def _store(
        self, key: bytes | str, value: str, expires_s: int, task_id: str,
        done: dict[str, str] | None,
    ) -> None:  # fmt: skip
        succeeded = self._success_prefix()
        if done is None:
            self.client.eval(STORE_LUA, 1, key, value, expires_s, succeeded)
            return
        settings = self.stream_settings
        keys, args = terminal_once_call(
            task_id,
            DoneEvent.model_validate(done),
            maxlen=settings.maxlen,
            ttl_s=settings.ttl_s,
            stream_key=task_events_key(task_id),
        )
        self.client.eval(
            STORE_AND_DONE_LUA, 1 + len(keys), key, *keys, value, expires_s, succeeded, *args
        )

    def _success_prefix(self) -> str:
        """How a stored SUCCESS meta begins: ``{"status": "SUCCESS"`` in this encoding."""
        encoded = str(self.encode({"status": states.SUCCESS}))
        return encoded[: encoded.rindex('"') + 1]
