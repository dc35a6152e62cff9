"""``GET /api/usage``: the caller's tokens per day and model."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from corral.app.db.base import utcnow
from corral.app.deps import CurrentUser, SessionDep
from corral.app.params import ID_PATTERN
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


class UsageOut(BaseModel):
    since: date
    until: date
    rows: list[UsageRow]
    totals: UsageTotals


@router.get("/usage", response_model=UsageOut)
async def usage(
    user: CurrentUser,
    session: SessionDep,
    days: Annotated[
        int, Query(ge=1, le=366, description="The last N days (UTC), today included.")
    ] = 30,
    thread_id: Annotated[
        str | None, Query(max_length=128, pattern=ID_PATTERN, description="Only this thread.")
    ] = None,
) -> UsageOut:
    """Model token usage per day and model for the last `days` days (optionally one thread)."""
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
    return UsageOut(since=since, until=until, rows=rows, totals=totals)
