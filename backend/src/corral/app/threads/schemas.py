"""API models of threads and their messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TITLE = "New conversation"


class ThreadCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"title": "Layer 5 analysis"}]}
    )

    title: str | None = Field(
        default=None, min_length=1, max_length=200, description="Default: from the first message."
    )
    model: str | None = Field(
        default=None, max_length=64, description="Configured model name; default: the chat model."
    )


class ThreadUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"title": "Renamed"}]}
    )

    title: str | None = Field(default=None, min_length=1, max_length=200)
    model: str | None = Field(default=None, max_length=64)


class ThreadOut(BaseModel):
    id: str
    title: str
    model: str | None
    created_at: datetime
    updated_at: datetime
    running_turn_id: str | None = Field(
        default=None,
        description="The turn writing a reply now (GET /api/threads/{id} only): follow "
        "/api/turns/{running_turn_id}/events to re-attach.",
    )


class ToolCallOut(BaseModel):
    call_id: str
    name: str
    arguments: Any
    task_id: str | None
    status: str
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    trace_id: str | None = Field(
        default=None, description="The OpenTelemetry trace of the call's task (32 hex digits)."
    )


class MessageOut(BaseModel):
    id: str
    seq: int
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None
    status: str
    model: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallOut] = []
    created_at: datetime


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_before: int | None = Field(
        description="Pass as `before` for the previous (older) page; null on the first message."
    )
