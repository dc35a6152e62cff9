"""API models of turns and the events of a turn's stream."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

TurnStatus = Literal["queued", "running", "done", "error", "cancelled"]

EVENTS_DOC = """Server-sent events of one turn; each `id` is a stream id (resume with
`Last-Event-ID`). In order:

- `turn_started` {turn_id, thread_id, message_id (the user's), model}
- `queued` {turn_id, position}: the turn waits for the thread's running turn (enqueue policy)
- `text` {delta}: the assistant's words (the first at once, then batched: 50 ms / 128 chars)
- `message_saved` {message_id, role}: the text so far is saved as an assistant message
- `usage` {model, message_id, prompt_tokens, completion_tokens, cached_tokens, total_tokens}
- `tool_call_started` {call_id, name, arguments, task_id}: every call of a round is started
  before any result is sent
- `tool_waiting` {call_id, task_id, task_entry, queue, ahead, cap}: fair share holds the call
  (you have `cap` tasks on `queue` already); `ahead` of your own calls go first
- `tool_progress` {call_id, task_id, task_entry, current, total, message, data}
- `tool_result` {call_id, name, task_id, status, output, error}: as each call finishes
- `cancel_requested` {}: Stop was pressed; `cancelled` follows
- `resumed` {resumes, holder}: another app process took the turn over; text sent since the
  last `message_saved` was not saved and is written again by the re-issued model call
- terminal, one of: `done` {message_id, finish_reason, usage} · `error` {type, message} ·
  `cancelled` {reason}
"""


class TurnAccepted(BaseModel):
    """``202`` to a message: the turn runs on its own; follow ``events_url``."""

    turn_id: str
    message_id: str = Field(description="The user's message (written when a queued turn starts).")
    thread_id: str
    status: TurnStatus = Field(
        description="running or queued; a repeated Idempotency-Key answers the turn as it is now"
    )
    events_url: str


class TurnOut(BaseModel):
    id: str
    thread_id: str
    status: TurnStatus
    model: str
    user_message_id: str
    final_message_id: str | None = None
    cancel_requested: bool = False
    resumes: int = Field(default=0, description="How often another app process took it over.")
    error_type: str | None = None
    error_message: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    events_url: str
