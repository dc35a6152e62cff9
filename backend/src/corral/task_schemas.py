"""The task registry and the event-stream format: the contract between app and workers.

One ``TaskSpec`` per task declares its stable name, queues, input and output models, time
limits and retry policy. The app sends by name with routing taken from here; the worker
registers the same name and validates its input with the same model. No task or queue name is
written anywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter


class Queue(StrEnum):
    """One queue per workload, each with its own worker command."""

    PYTHON = "python_q"
    CIRCUIT = "circuit_q"
    LLM = "llm_q"


ALL_QUEUES: tuple[Queue, ...] = tuple(Queue)

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)


class RetryPolicy(BaseModel):
    """Automatic retries for transient infrastructure errors (never for user errors)."""

    model_config = ConfigDict(frozen=True)

    max_retries: int = Field(default=0, ge=0, le=20)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    jitter: bool = True


@dataclass(frozen=True)
class TaskSpec(Generic[InputT, OutputT]):
    """Everything both sides need to know about one task."""

    name: str
    queues: tuple[Queue, ...]
    input_model: type[InputT]
    output_model: type[OutputT]
    description: str
    soft_time_limit_s: float = 60.0
    time_limit_s: float = 75.0
    expires_s: float = 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.queues:
            raise ValueError(f"{self.name}: at least one queue")
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError(f"{self.name}: hard time limit must exceed the soft one")

    @property
    def default_queue(self) -> Queue:
        return self.queues[0]


# ---------------------------------------------------------------------------------------------
# Message format
# ---------------------------------------------------------------------------------------------


def message_kwargs(task_input: BaseModel, owner_id: str) -> dict[str, Any]:
    """The kwargs of every Corral task message: the validated input and who asked for it."""
    return {"input": task_input.model_dump(mode="json"), "owner_id": owner_id}


# ---------------------------------------------------------------------------------------------
# Built-in system tasks (health checks and benchmarks; consumed on every queue)
# ---------------------------------------------------------------------------------------------


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: JsonValue = Field(default=None, description="Returned unchanged.")
    sleep_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Total time to sleep.")
    steps: int = Field(
        default=1, ge=1, le=1000, description="Progress events reported while sleeping."
    )


class EchoOutput(BaseModel):
    payload: JsonValue
    steps: int
    worker: str


class FailInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(default="failure requested", max_length=2000)
    sleep_s: float = Field(default=0.0, ge=0.0, le=600.0)


class FailOutput(BaseModel):
    """Never produced: ``system.fail`` always raises ``DeliberateFailure``."""


SYSTEM_ECHO: TaskSpec[EchoInput, EchoOutput] = TaskSpec(
    name="system.echo",
    queues=ALL_QUEUES,
    input_model=EchoInput,
    output_model=EchoOutput,
    description="Return the payload after an optional sleep, reporting progress each step.",
    soft_time_limit_s=620.0,
    time_limit_s=640.0,
    expires_s=900.0,
)

SYSTEM_FAIL: TaskSpec[FailInput, FailOutput] = TaskSpec(
    name="system.fail",
    queues=ALL_QUEUES,
    input_model=FailInput,
    output_model=FailOutput,
    description="Raise a typed error (DeliberateFailure) after an optional sleep.",
    soft_time_limit_s=620.0,
    time_limit_s=640.0,
    expires_s=900.0,
)

REGISTRY: dict[str, TaskSpec[Any, Any]] = {}


def register(*specs: TaskSpec[Any, Any]) -> None:
    for spec in specs:
        if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
            raise ValueError(f"task {spec.name} declared twice")
        REGISTRY[spec.name] = spec


register(SYSTEM_ECHO, SYSTEM_FAIL)


def get_spec(name: str) -> TaskSpec[Any, Any]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(REGISTRY)}") from None


# ---------------------------------------------------------------------------------------------
# The event stream of a task: key ``task:{task_id}:events``, flat string fields
# ---------------------------------------------------------------------------------------------


def task_events_key(task_id: str) -> str:
    return f"task:{task_id}:events"


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


TERMINAL_EVENT_TYPES = frozenset({EventType.DONE, EventType.ERROR, EventType.CANCELLED})


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class QueuedEvent(_Event):
    type: Literal["queued"] = "queued"
    task_name: str
    queue: str


class StartedEvent(_Event):
    type: Literal["started"] = "started"
    worker: str = ""
    attempt: int = 1


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


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error_type: str
    message: str
    traceback: str | None = None


class CancelledEvent(_Event):
    type: Literal["cancelled"] = "cancelled"
    reason: str = "cancelled by user"


TaskEvent = Annotated[
    QueuedEvent | StartedEvent | ProgressEvent | DoneEvent | ErrorEvent | CancelledEvent,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)


def encode_event(event: _Event) -> dict[str, str]:
    """Flatten an event into Redis stream fields (strings only, ``None`` fields left out)."""
    out: dict[str, str] = {}
    for key, value in event.model_dump(mode="json", exclude_none=True).items():
        out[key] = value if isinstance(value, str) else json.dumps(value)
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
