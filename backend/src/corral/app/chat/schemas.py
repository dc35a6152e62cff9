"""The chat request and the events of its SSE stream."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

EVENTS_DOC = """Server-sent events, in order:

- `turn_started` {thread_id, message_id (the user's), model}
- `text` {delta}: the assistant's words as they arrive
- `usage` {model, message_id, prompt_tokens, completion_tokens, cached_tokens, total_tokens}
  after each model call
- `tool_call_started` {call_id, name, arguments, task_id}: every call of a round is started
  before any result is sent
- `tool_progress` {call_id, task_id, current, total, message, data}
- `tool_result` {call_id, name, task_id, status, output, error}: as each call finishes
  (figures carry a `url`)
- `error` {type, message}: the turn stopped early (partial answer saved)
- `done` {message_id, finish_reason, usage}
"""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1, description="What the user says.")
