"""Fair share settings: per-user caps of running + reserved tasks per queue.

Read from the environment with the prefix ``CORRAL_FAIR__`` (e.g. ``CORRAL_FAIR__PYTHON_Q=4``).
``CORRAL_FAIR__OVERRIDES`` is JSON, an admin's per-user caps:
``{"alice": {"python_q": 16}}``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FairShareSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_FAIR__", extra="ignore")

    enabled: bool = Field(default=True, description="Off: every send goes straight to Celery.")
    # Defaults fit the default worker counts: two python/circuit processes, so four per user
    # keeps each process busy with one running and one reserved task of that user.
    python_q: int = Field(default=4, ge=1, le=10_000)
    circuit_q: int = Field(default=4, ge=1, le=10_000)
    llm_q: int = Field(default=8, ge=1, le=10_000)
    overrides: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per-user caps by queue, set by an admin."
    )
    sweep_interval_s: float = Field(default=0.5, gt=0, le=60)
    release_batch: int = Field(default=500, ge=1, le=10_000)

    def cap(self, owner_id: str, queue: str) -> int:
        override = self.overrides.get(owner_id, {}).get(queue)
        if override is not None:
            return max(1, override)
        return int(getattr(self, queue, self.llm_q))
