"""API models of the caller's tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

TaskState = Literal["queued", "running", "done", "error", "cancelled", "unknown"]


class TaskRunRecord(BaseModel):
    task_id: str
    owner_id: str
    task_name: str
    queue: str
    tool: str | None = None
    created_at: datetime


class TaskEventOut(BaseModel):
    id: str
    type: str
    data: dict[str, Any]


class TaskRunOut(BaseModel):
    task_id: str
    task_name: str
    queue: str
    tool: str | None
    created_at: datetime
    state: TaskState


class TaskRunDetail(TaskRunOut):
    events: list[TaskEventOut]
