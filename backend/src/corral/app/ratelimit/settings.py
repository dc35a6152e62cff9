"""Per-user rate limits by route group, e.g. ``CORRAL_RATE_LIMITS__CHAT=20/minute``."""

from __future__ import annotations

from typing import Literal

from limits import parse
from pydantic import BaseModel, Field, field_validator

Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]


class RateLimitSettings(BaseModel):
    enabled: bool = True
    strategy: Strategy = "moving-window"
    chat: str = Field(default="20/minute", description="Chat turns per user.")
    tools: str = Field(default="60/minute", description="Direct tool invocations per user.")
    key_prefix: str = "corral-rl"

    @field_validator("chat", "tools")
    @classmethod
    def _parseable(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError:
            raise ValueError(
                f"rate limit {value!r} is not like '20/minute' or '100 per hour'"
            ) from None
        return value
