"""Where a turn stands, read back from SQL: what a resuming runner continues from.

A turn's messages are the thread's messages after its user message (one turn runs per thread
at a time). Every assistant message with tool calls is one round; the newest such message may
still have calls without an answer (their ``tool_calls`` rows say whether a task was sent).
An assistant message without calls ends the turn.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.models import Message, TaskRun, TokenUsageRow, ToolCallRecord
from corral.task_schemas import TokenUsage

_TASK_IDS = uuid.UUID("6f1c3c1e-2b7a-4f3e-9a53-0c8e7d2b5a10")


def call_task_id(message_id: str, position: int) -> str:
    """The task id of a tool call, fixed before it is sent: a runner resuming after a crash
    finds out whether the call was already sent (its ``task_runs`` row) instead of re-sending."""
    return str(uuid.uuid5(_TASK_IDS, f"{message_id}:{position}"))


@dataclass
class OpenCall:
    """A call of the newest round that has no answer yet."""

    call_id: str
    name: str
    arguments: str
    position: int
    record: ToolCallRecord | None = None
    task_sent: bool = False


@dataclass
class TurnState:
    rounds: int = 0
    final_message_id: str | None = None
    open_message_id: str | None = None
    open_calls: list[OpenCall] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)


async def load(session: AsyncSession, thread_id: str, user_seq: int) -> TurnState:
    rows = list(
        (
            await session.scalars(
                select(Message)
                .where(Message.thread_id == thread_id, Message.seq > user_seq)
                .order_by(Message.seq)
            )
        ).all()
    )
    state = TurnState()
    assistants = [m for m in rows if m.role == "assistant"]
    state.rounds = sum(1 for m in assistants if m.tool_calls)
    if assistants:
        totals = (
            await session.execute(
                select(
                    func.coalesce(func.sum(TokenUsageRow.prompt_tokens), 0),
                    func.coalesce(func.sum(TokenUsageRow.completion_tokens), 0),
                    func.coalesce(func.sum(TokenUsageRow.cached_tokens), 0),
                    func.coalesce(func.sum(TokenUsageRow.total_tokens), 0),
                ).where(
                    TokenUsageRow.message_id.in_([m.id for m in assistants]),
                    TokenUsageRow.source == "agent",
                )
            )
        ).one()
        state.usage = TokenUsage(
            prompt_tokens=int(totals[0]),
            completion_tokens=int(totals[1]),
            cached_tokens=int(totals[2]),
            total_tokens=int(totals[3]),
        )
    last = assistants[-1] if assistants else None
    if last is None:
        return state
    if not last.tool_calls:
        state.final_message_id = last.id
        return state
    answered = {m.tool_call_id for m in rows if m.role == "tool" and m.seq > last.seq}
    records = {
        r.call_id: r
        for r in await session.scalars(
            select(ToolCallRecord).where(ToolCallRecord.message_id == last.id)
        )
    }
    for position, call in enumerate(last.tool_calls):
        call_id = str(call.get("id"))
        if call_id in answered:
            continue
        function = call.get("function") or {}
        open_call = OpenCall(
            call_id=call_id,
            name=str(function.get("name", "")),
            arguments=str(function.get("arguments") or ""),
            position=position,
            record=records.get(call_id),
        )
        task_id = call_task_id(last.id, position)
        open_call.task_sent = (
            open_call.record is not None and open_call.record.task_run_id is not None
        ) or (await session.get(TaskRun, task_id)) is not None
        state.open_calls.append(open_call)
    state.open_message_id = last.id if state.open_calls else None
    if not state.open_calls:
        state.open_message_id = None
    return state


def as_request(call: OpenCall) -> Any:
    """The call in the shape the loop's ``_start`` takes (a model's ``ToolCallRequest``)."""
    from corral.app.chat.llm import ToolCallRequest

    return ToolCallRequest(
        index=call.position, id=call.call_id, name=call.name, arguments=call.arguments
    )
