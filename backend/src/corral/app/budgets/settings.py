"""Budget settings: ``AppSettings.budgets``, from the environment as ``CORRAL_BUDGETS__*``.

A limit of 0 means no limit. ``CORRAL_BUDGETS__OVERRIDES`` is JSON, an admin's per-user limits:
``{"alice": {"cpu_seconds": 36000}}`` (kinds: ``tokens``, ``cpu_seconds``, ``rows``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

BudgetKind = Literal["tokens", "cpu_seconds", "rows"]
KINDS: tuple[BudgetKind, ...] = ("tokens", "cpu_seconds", "rows")


class BudgetSettings(BaseModel):
    enabled: bool = Field(default=True, description="Off: nothing is refused for spend.")
    tokens: int = Field(
        default=2_000_000, ge=0, description="Model tokens per user per UTC day (0: no limit)."
    )
    cpu_seconds: float = Field(
        default=3600.0, ge=0, description="Sandbox CPU-seconds per user per UTC day (0: none)."
    )
    rows: int = Field(
        default=10_000_000_000,
        ge=0,
        description="Analysis rows scanned per user per day (0: none).",
    )
    overrides: dict[str, dict[BudgetKind, float]] = Field(
        default_factory=dict, description="Per-user limits by kind, set by an admin."
    )

    def limit(self, owner_id: str, kind: BudgetKind) -> float:
        override = self.overrides.get(owner_id, {}).get(kind)
        return float(override if override is not None else getattr(self, kind))
