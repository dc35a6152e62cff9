"""``GET /api/rate-limit``: the caller's limits and what is left of them."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from corral.app.deps import CurrentUser, ServicesDep
from corral.app.ratelimit.service import GROUPS

router = APIRouter(tags=["rate limits"])


class GroupState(BaseModel):
    limit: str
    amount: int
    window_s: int
    remaining: int
    reset_at: float


class RateLimitOut(BaseModel):
    enabled: bool
    strategy: str
    groups: dict[str, GroupState]


@router.get("/rate-limit", response_model=RateLimitOut)
async def rate_limit(user: CurrentUser, services: ServicesDep) -> RateLimitOut:
    """Your request-rate limits per group (chat, tools) and what is left in the current window."""
    limits = services.rate_limits
    groups = {}
    for group in GROUPS:
        state = await limits.peek(group, user.id)
        groups[group] = GroupState(
            limit=state.limit,
            amount=state.amount,
            window_s=state.window_s,
            remaining=state.remaining,
            reset_at=state.reset_at,
        )
    return RateLimitOut(enabled=limits.enabled, strategy=limits.settings.strategy, groups=groups)
