"""The chat request (the events of a turn are in ``corral.app.turns.schemas``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ChatRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"content": "Plot a histogram of 1000 normal samples"}]},
    )

    content: str = Field(
        min_length=1,
        max_length=1_000_000,
        description="What the user says (at most CORRAL_CHAT__MAX_MESSAGE_CHARS characters).",
    )
