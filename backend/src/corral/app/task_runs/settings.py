"""How the app follows the tasks it sent and finds the ones nobody will ever finish."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TaskRunSettings(BaseModel):
    reconcile_interval_s: float = Field(
        default=60.0, ge=0, description="Seconds between reconcile passes; 0 turns them off."
    )
    idle_s: float = Field(
        default=120.0, ge=0, description="Only runs without news for this long are checked."
    )
    grace_s: float = Field(
        default=60.0, ge=0, description="Added to a task's expiry and hard time limit."
    )
    inspect_timeout_s: float = Field(default=2.0, gt=0, le=30, description="Asking workers.")
    batch: int = Field(default=200, ge=1, le=10_000, description="Runs checked per pass.")
