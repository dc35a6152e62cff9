"""Daily budgets: today's spend per user from the SQL ledger, and the refusal when it is used up.

The ledger is what is already recorded per user: ``token_usage`` (every model call, the agent's
and those inside tasks) and ``task_runs.cpu_s`` / ``rows_scanned`` (written with each run's
outcome). A send is checked against the budgets its task spends (Python runs: CPU-seconds;
analyses: rows and tokens; generation: tokens) in the transaction that records the run; a chat
turn against tokens. Ingests, closes and system tasks spend none of them. A run already sent
finishes even if it crosses the limit: budgets bound what starts, and the next send is refused
until the day (UTC) turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app import clock
from corral.app.budgets.settings import KINDS, BudgetKind, BudgetSettings
from corral.app.db.models import TaskRun, TokenUsageRow
from corral.app.problems import ProblemError

KINDS_BY_TASK: dict[str, tuple[BudgetKind, ...]] = {
    "python.run": ("cpu_seconds",),
    "session.run": ("cpu_seconds",),
    "circuit.analyze": ("rows", "tokens"),
    "llm.generate": ("tokens",),
}
UNITS: dict[BudgetKind, str] = {"tokens": "tokens", "cpu_seconds": "CPU-seconds", "rows": "rows"}


class BudgetExceeded(ProblemError):
    """429 ``/errors/budget-exceeded``: which budget, its limit, today's spend, when it resets."""

    def __init__(self, kind: BudgetKind, limit: float, spent: float, resets_at: datetime) -> None:
        wait_s = max(1.0, (resets_at - clock.now()).total_seconds())
        detail = (
            f"your daily {UNITS[kind]} budget is used up ({_num(spent)} of {_num(limit)}); "
            f"it resets at {resets_at:%Y-%m-%d %H:%M} UTC (in {_duration(wait_s)}). "
            "An admin can raise it (CORRAL_BUDGETS__OVERRIDES)."
        )
        super().__init__(
            429,
            "budget-exceeded",
            detail,
            title="Budget exceeded",
            retry_after_s=wait_s,
            extra={
                "budget": kind,
                "limit": limit,
                "spent": spent,
                "resets_at": resets_at.isoformat(),
            },
        )
        self.budget = kind
        self.resets_at = resets_at


@dataclass(frozen=True)
class BudgetState:
    kind: BudgetKind
    limit: float | None  # None: no limit
    spent: float
    resets_at: datetime

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit


def day_bounds(now: datetime | None = None) -> tuple[datetime, datetime]:
    """Today's start and the next reset (UTC midnights)."""
    now = now or clock.now()
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


async def spent_today(
    session: AsyncSession, owner_id: str, kinds: tuple[BudgetKind, ...] = KINDS
) -> dict[BudgetKind, float]:
    start, _ = day_bounds()
    spent: dict[BudgetKind, float] = {}
    if "tokens" in kinds:
        tokens = await session.scalar(
            select(func.coalesce(func.sum(TokenUsageRow.total_tokens), 0)).where(
                TokenUsageRow.owner_id == owner_id, TokenUsageRow.day == start.date()
            )
        )
        spent["tokens"] = float(tokens or 0)
    if "cpu_seconds" in kinds or "rows" in kinds:
        row = (
            await session.execute(
                select(
                    func.coalesce(func.sum(TaskRun.cpu_s), 0.0),
                    func.coalesce(func.sum(TaskRun.rows_scanned), 0),
                ).where(TaskRun.owner_id == owner_id, TaskRun.created_at >= start)
            )
        ).one()
        spent["cpu_seconds"] = round(float(row[0] or 0.0), 3)
        spent["rows"] = float(row[1] or 0)
    return {k: v for k, v in spent.items() if k in kinds}


async def today(
    session: AsyncSession, settings: BudgetSettings, owner_id: str
) -> list[BudgetState]:
    _, resets_at = day_bounds()
    spent = await spent_today(session, owner_id)
    out = []
    for kind in KINDS:
        limit = settings.limit(owner_id, kind) if settings.enabled else 0.0
        out.append(BudgetState(kind, limit or None, spent[kind], resets_at))
    return out


async def check(
    session: AsyncSession, settings: BudgetSettings, owner_id: str, kinds: tuple[BudgetKind, ...]
) -> None:
    """Raise ``BudgetExceeded`` if a budget among ``kinds`` is used up today."""
    if not settings.enabled:
        return
    limited = tuple(k for k in kinds if settings.limit(owner_id, k) > 0)
    if not limited:
        return
    spent = await spent_today(session, owner_id, limited)
    _, resets_at = day_bounds()
    for kind in limited:
        limit = settings.limit(owner_id, kind)
        if spent[kind] >= limit:
            raise BudgetExceeded(kind, limit, spent[kind], resets_at)


def kinds_for_task(task_name: str) -> tuple[BudgetKind, ...]:
    return KINDS_BY_TASK.get(task_name, ())


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{max(1, rest // 60)} min"
