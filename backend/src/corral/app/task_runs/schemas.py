"""API models of the caller's tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

TaskState = Literal["waiting", "queued", "running", "done", "error", "cancelled", "lost"]
ACTIVE_STATES: tuple[TaskState, ...] = ("waiting", "queued", "running")
FINAL_STATES: frozenset[str] = frozenset({"done", "error", "cancelled"})
"""Never left again. ``lost`` is terminal too, but a late outcome may still replace it."""
TERMINAL_STATES: frozenset[str] = FINAL_STATES | {"lost"}


class TaskEventOut(BaseModel):
    id: str
    type: str
    data: dict[str, Any]


class TaskRunOut(BaseModel):
    task_id: str
    task_name: str
    queue: str
    tool: str | None
    thread_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    state: TaskState
    attempts: int = 0
    error_type: str | None = None
    error_message: str | None = None
    output_refs: list[str] = []
    trace_id: str | None = Field(
        default=None, description="The OpenTelemetry trace the run was sent in (32 hex digits)."
    )


class TaskRunDetail(TaskRunOut):
    events: list[TaskEventOut]
    waiting_ahead: int | None = Field(
        default=None,
        description="While `waiting` (past your fair-share cap): your runs released first.",
    )
