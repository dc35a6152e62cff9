"""Typed outcomes of waiting for a task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class TaskDone:
    task_id: str
    output: Any
    status: Literal["done"] = "done"


@dataclass(frozen=True)
class TaskFailed:
    task_id: str
    error_type: str
    message: str
    traceback: str | None = None
    status: Literal["error"] = "error"


@dataclass(frozen=True)
class TaskCancelled:
    task_id: str
    reason: str
    status: Literal["cancelled"] = "cancelled"


@dataclass(frozen=True)
class TaskTimedOut:
    """The deadline passed; ``state`` is what Celery's backend said then. Re-attach by task id."""

    task_id: str
    state: str
    status: Literal["timeout"] = "timeout"


TaskOutcome = TaskDone | TaskFailed | TaskCancelled | TaskTimedOut
