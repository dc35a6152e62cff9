"""Token usage rows: one per model call, the agent's and those inside tasks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.base import utcnow
from corral.app.db.models import TokenUsageRow
from corral.task_schemas import TokenUsage

_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(frozen=True)
class ModelCall:
    """Usage found in a task's output: which model, and how many tokens."""

    model: str
    provider_model: str | None
    usage: TokenUsage


def calls_in_output(output: Any, *, max_depth: int = 6) -> list[ModelCall]:
    """Every ``{"model": ..., "usage": {...tokens}}`` object in a task's output.

    ``llm.generate`` returns one at the top level; other tasks may nest several (one per model
    call they made). Nothing else about the output's shape is assumed.
    """
    return list(_walk(output, max_depth))


def _walk(node: Any, depth: int) -> Iterator[ModelCall]:
    if depth < 0:
        return
    if isinstance(node, dict):
        usage, model = node.get("usage"), node.get("model")
        if (
            isinstance(usage, dict)
            and isinstance(model, str)
            and model
            and any(isinstance(usage.get(f), int) for f in _TOKEN_FIELDS)
        ):
            provider = node.get("provider_model")
            yield ModelCall(
                model=model[:64],
                provider_model=str(provider)[:200] if isinstance(provider, str) else None,
                usage=TokenUsage.model_validate(
                    {k: v for k, v in usage.items() if k in TokenUsage.model_fields}
                ),
            )
            return
        for value in node.values():
            yield from _walk(value, depth - 1)
    elif isinstance(node, list):
        for value in node[:1000]:
            yield from _walk(value, depth - 1)


def rows_scanned_in_output(output: Any) -> int | None:
    """Rows an analysis read: its dataset's rows once per query that ran (the repair round
    runs a second one). None for outputs that are not an analysis."""
    if not isinstance(output, dict) or not isinstance(output.get("dataset_rows"), int):
        return None
    if not output.get("sql"):
        return 0  # no query ran (the model gave none)
    attempts = output.get("attempts")
    queries = len(attempts) if isinstance(attempts, list) and attempts else 1
    return max(0, int(output["dataset_rows"])) * queries


def add(
    session: AsyncSession,
    *,
    owner_id: str,
    model: str,
    usage: TokenUsage,
    source: str,
    provider_model: str | None = None,
    thread_id: str | None = None,
    task_run_id: str | None = None,
    message_id: str | None = None,
    when: datetime | None = None,
) -> TokenUsageRow:
    when = when or utcnow()
    total = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
    row = TokenUsageRow(
        owner_id=owner_id,
        thread_id=thread_id,
        task_run_id=task_run_id,
        message_id=message_id,
        source=source,
        model=model,
        provider_model=provider_model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        total_tokens=total,
        day=when.date(),
        created_at=when,
    )
    session.add(row)
    return row


@dataclass(frozen=True)
class UsageBucket:
    day: date
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int


async def per_day_and_model(
    session: AsyncSession,
    owner_id: str,
    *,
    since: date,
    until: date,
    thread_id: str | None = None,
) -> list[UsageBucket]:
    query = (
        select(
            TokenUsageRow.day,
            TokenUsageRow.model,
            func.count(),
            func.sum(TokenUsageRow.prompt_tokens),
            func.sum(TokenUsageRow.completion_tokens),
            func.sum(TokenUsageRow.cached_tokens),
            func.sum(TokenUsageRow.total_tokens),
        )
        .where(
            TokenUsageRow.owner_id == owner_id,
            TokenUsageRow.day >= since,
            TokenUsageRow.day <= until,
        )
        .group_by(TokenUsageRow.day, TokenUsageRow.model)
        .order_by(TokenUsageRow.day, TokenUsageRow.model)
    )
    if thread_id is not None:
        query = query.where(TokenUsageRow.thread_id == thread_id)
    rows = (await session.execute(query)).all()
    return [
        UsageBucket(
            day=day,
            model=model,
            calls=int(calls),
            prompt_tokens=int(p or 0),
            completion_tokens=int(c or 0),
            cached_tokens=int(k or 0),
            total_tokens=int(t or 0),
        )
        for day, model, calls, p, c, k, t in rows
    ]


async def for_task(session: AsyncSession, task_run_id: str) -> list[TokenUsageRow]:
    rows = await session.scalars(
        select(TokenUsageRow).where(TokenUsageRow.task_run_id == task_run_id)
    )
    return list(rows)
