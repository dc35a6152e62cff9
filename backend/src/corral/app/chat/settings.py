"""The assistant's loop: which model and tools, and the bounds on one turn."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

DEFAULT_SYSTEM_PROMPT = (
    "You are Corral's assistant. You can run Python (numpy, pandas, scipy, matplotlib) in a "
    "sandbox, analyse circuit populations and call other language models through the tools "
    "you are given. Use a tool when it helps; call independent tools in the same turn so they "
    "run in parallel. Figures you make are shown to the user automatically."
)


class ChatSettings(BaseModel):
    model: str | None = Field(
        default=None, description="Configured model name for the agent; default: llm default."
    )
    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, max_length=50_000)
    tools: list[str] = Field(
        default_factory=lambda: ["run_python", "circuit_population_analysis", "llm_generate"],
        description="Tools offered to the model (names not registered are left out).",
    )
    max_tool_rounds: int = Field(
        default=4, ge=0, le=50, description="Model turns that may call tools before a final one."
    )
    tool_timeout_s: float = Field(default=300.0, gt=0, le=3600, description="Per tool call.")
    turn_timeout_s: float = Field(default=900.0, gt=0, le=7200, description="Whole turn.")
    max_history_messages: int = Field(default=60, ge=1, le=1000)
    max_message_chars: int = Field(default=32_000, ge=1, le=2_000_000)
    tool_result_max_chars: int = Field(
        default=12_000, ge=200, description="A tool's result as given back to the model."
    )
    text_flush_chars: int = Field(
        default=128,
        ge=1,
        le=100_000,
        description="After the first text delta (sent at once), deltas are batched until this "
        "many characters wait or ``text_flush_ms`` passed.",
    )
    text_flush_ms: float = Field(default=50.0, ge=0, le=5_000)
    double_texting: Literal["reject", "enqueue"] = Field(
        default="reject",
        description="A message sent while a turn runs: 409 (reject) or queued after it (enqueue).",
    )
    max_queued_turns: int = Field(default=5, ge=1, le=100, description="Per thread (enqueue).")
    lease_ttl_s: float = Field(
        default=12.0, ge=1, le=300, description="A turn's lease lives this long without renewal."
    )
    lease_renew_s: float = Field(default=3.0, gt=0, le=100, description="Renewal interval.")
    sweep_interval_s: float = Field(
        default=2.0, gt=0, le=300, description="How often each app looks for orphaned turns."
    )
