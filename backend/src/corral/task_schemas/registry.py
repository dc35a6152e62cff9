"""The task registry: one ``TaskSpec`` per task, the message format and priorities.

One ``TaskSpec`` per task declares its stable name, queues, input and output models, time
limits and retry policy. The app sends by name with routing taken from here; the worker
registers the same name and validates its input with the same model. No task or queue name is
written anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


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
    # A worker that dies running the task gets it redelivered; past this many starts of one
    # attempt the task fails ``WorkerLost`` instead of running again (see delivery.py).
    max_deliveries: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.max_deliveries <= 20:
            raise ValueError(f"{self.name}: max_deliveries must be within 1..20")
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


REGISTRY: dict[str, TaskSpec[Any, Any]] = {}


def register(*specs: TaskSpec[Any, Any]) -> None:
    for spec in specs:
        if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
            raise ValueError(f"task {spec.name} declared twice")
        REGISTRY[spec.name] = spec


def get_spec(name: str) -> TaskSpec[Any, Any]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(REGISTRY)}") from None


# ---------------------------------------------------------------------------------------------
# Message priorities
# ---------------------------------------------------------------------------------------------

# Message priorities on the Redis broker. kombu keeps one list per step and polls them in
# ascending order, so a LOWER number is consumed first. The app client and the workers both set
# ``broker_transport_options["priority_steps"] = PRIORITY_STEPS``; every message the app sends
# carries an explicit priority (a message without one would land in the most urgent list).
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
PRIORITY_URGENT = 0
PRIORITY_NORMAL = 6


def message_priority(urgent: bool) -> int:
    return PRIORITY_URGENT if urgent else PRIORITY_NORMAL
