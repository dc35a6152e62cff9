"""``GET /api/usage``: the caller's tokens per day and model, and today's budgets."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from corral.app.budgets import service as budgets
from corral.app.budgets.settings import BudgetKind
from corral.app.db.base import utcnow
from corral.app.deps import CurrentUser, ServicesDep, SessionDep
from corral.app.params import ID_PATTERN
from corral.app.task_runs import service as task_runs
from corral.app.usage import repository

router = APIRouter(tags=["usage"])


class UsageRow(BaseModel):
    day: date
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int


class UsageTotals(BaseModel):
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0


class BudgetOut(BaseModel):
    """Today's spend against one daily budget (UTC day)."""

    kind: BudgetKind = Field(description="tokens, cpu_seconds or rows (analysis rows scanned)")
    limit: float | None = Field(description="The daily limit; null: no limit")
    spent: float
    remaining: float | None = Field(description="What is left today; null: no limit")
    exhausted: bool = Field(description="Sends that spend it are refused until `resets_at`")
    resets_at: datetime


class UsageOut(BaseModel):
    since: date
    until: date
    rows: list[UsageRow]
    totals: UsageTotals
    budgets: list[BudgetOut] = Field(default_factory=list)


@router.get("/usage", response_model=UsageOut)
async def usage(
    user: CurrentUser,
    session: SessionDep,
    services: ServicesDep,
    days: Annotated[
        int, Query(ge=1, le=366, description="The last N days (UTC), today included.")
    ] = 30,
    thread_id: Annotated[
        str | None, Query(max_length=128, pattern=ID_PATTERN, description="Only this thread.")
    ] = None,
) -> UsageOut:
    """Model token usage per day and model for the last `days` days (optionally one thread),
    and today's spend against each daily budget (tokens, sandbox CPU-seconds, rows scanned)."""
    await task_runs.sync_active(services, user.id)  # a run that just ended counts already
    until = utcnow().date()
    since = until - timedelta(days=days - 1)
    buckets = await repository.per_day_and_model(
        session, user.id, since=since, until=until, thread_id=thread_id
    )
    rows = [UsageRow(**b.__dict__) for b in buckets]
    totals = UsageTotals()
    for row in rows:
        totals.calls += row.calls
        totals.prompt_tokens += row.prompt_tokens
        totals.completion_tokens += row.completion_tokens
        totals.cached_tokens += row.cached_tokens
        totals.total_tokens += row.total_tokens
    states = await budgets.today(session, services.budgets, user.id)
    return UsageOut(
        since=since,
        until=until,
        rows=rows,
        totals=totals,
        budgets=[
            BudgetOut(
                kind=s.kind,
                limit=s.limit,
                spent=s.spent,
                remaining=None if s.limit is None else max(0.0, s.limit - s.spent),
                exhausted=s.exhausted,
                resets_at=s.resets_at,
            )
            for s in states
        ],
    )
