"""The event stream of a task: key ``task:{task_id}:events``, flat string fields."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def task_events_key(task_id: str) -> str:
    return f"task:{task_id}:events"


class EventType(StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    IGNORED = "ignored"


TERMINAL_EVENT_TYPES = frozenset({EventType.DONE, EventType.ERROR, EventType.CANCELLED})


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    trace_id: str | None = Field(
        default=None, description="The trace (OpenTelemetry, 32 hex) of the call that wrote it."
    )


# Set by corral.telemetry.setup_tracing: the current trace id, stamped on events written in it.
_trace_id_source: list[Callable[[], str | None]] = []


def set_trace_id_source(source: Callable[[], str | None]) -> None:
    _trace_id_source[:] = [source]


class WaitingEvent(_Event):
    """Held back by fair share (the user is at their cap on the queue): nothing is on the
    broker yet. Written again as the user's earlier runs are released; ``queued`` follows."""

    type: Literal["waiting"] = "waiting"
    queue: str
    ahead: int = Field(ge=0, description="The user's own waiting runs released before this one.")
    cap: int = Field(default=0, ge=0, description="The user's running + queued cap there.")


class QueuedEvent(_Event):
    type: Literal["queued"] = "queued"
    task_name: str
    queue: str


class StartedEvent(_Event):
    type: Literal["started"] = "started"
    worker: str = ""
    attempt: int = 1
    delivery: int = Field(default=1, description="Starts of this attempt (redeliveries + 1).")


class ProgressEvent(_Event):
    type: Literal["progress"] = "progress"
    current: float | None = None
    total: float | None = None
    message: str = ""
    data: str | None = Field(
        default=None, description="Optional JSON text (e.g. a chunk of generated tokens)."
    )


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    result: str | None = Field(
        default=None, description="The result as JSON when small; else read the backend."
    )
    cpu_s: float | None = Field(
        default=None, ge=0, description="CPU seconds the run used (worker + its sandboxes)."
    )


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error_type: str
    message: str
    traceback: str | None = None
    cpu_s: float | None = Field(default=None, ge=0, description="CPU seconds the run used.")


class CancelledEvent(_Event):
    type: Literal["cancelled"] = "cancelled"
    reason: str = "cancelled by user"


class IgnoredEvent(_Event):
    """A late outcome (or a redelivery) after the task already ended: recorded, not applied."""

    type: Literal["ignored"] = "ignored"
    outcome: str = Field(description="What arrived late: done, error, cancelled or started.")
    first: str = Field(default="", description="The outcome that won (the first one).")
    detail: str = ""


TaskEvent = Annotated[
    WaitingEvent
    | QueuedEvent
    | StartedEvent
    | ProgressEvent
    | DoneEvent
    | ErrorEvent
    | CancelledEvent
    | IgnoredEvent,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)


def encode_event(event: _Event) -> dict[str, str]:
    """Flatten an event into Redis stream fields (strings only, ``None`` fields left out)."""
    out: dict[str, str] = {}
    for key, value in event.model_dump(mode="json", exclude_none=True).items():
        out[key] = value if isinstance(value, str) else json.dumps(value)
    if "trace_id" not in out and _trace_id_source:
        trace_id = _trace_id_source[0]()
        if trace_id:
            out["trace_id"] = trace_id
    return out


def decode_event(fields: dict[str, str] | dict[bytes, bytes]) -> TaskEvent:
    """Parse a stream entry back into its typed event."""
    flat = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    return _EVENT_ADAPTER.validate_python(flat)


def is_terminal(event: TaskEvent) -> bool:
    return event.type in TERMINAL_EVENT_TYPES
