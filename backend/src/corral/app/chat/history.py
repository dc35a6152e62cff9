"""Turning stored messages into what the model is sent (OpenAI chat format)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from corral.app.db.models import Message

INTERRUPTED = json.dumps({"error": {"type": "Interrupted", "message": "no result was recorded"}})


def to_openai(system_prompt: str, rows: Sequence[Message]) -> list[dict[str, Any]]:
    """The system prompt and the stored history, repaired so every tool call has an answer.

    History is cut to a window, so it starts at the first user message in it (never with a
    tool answer whose call was cut off); calls left without an answer by an interrupted turn
    get a synthetic one, as providers require.
    """
    start = next((i for i, m in enumerate(rows) if m.role == "user"), len(rows))
    out: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    open_calls: list[str] = []

    def close_open_calls() -> None:
        for call_id in open_calls:
            out.append({"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED})
        open_calls.clear()

    for row in rows[start:]:
        if row.role == "tool":
            if row.tool_call_id in open_calls:
                open_calls.remove(row.tool_call_id)
                out.append(
                    {"role": "tool", "tool_call_id": row.tool_call_id, "content": row.content or ""}
                )
            continue
        close_open_calls()
        if row.role == "user":
            out.append({"role": "user", "content": row.content or ""})
        elif row.role == "assistant":
            calls = row.tool_calls or []
            if not calls and not row.content:
                continue
            message: dict[str, Any] = {"role": "assistant", "content": row.content or None}
            if calls:
                message["tool_calls"] = calls
                open_calls.extend(str(c.get("id")) for c in calls)
            out.append(message)
    close_open_calls()
    return out
