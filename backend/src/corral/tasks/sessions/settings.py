"""Session settings: ``TASKS_SESSIONS__*`` (nested under ``TasksSettings``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class SessionSettings(BaseModel):
    """How many sessions a python_q worker holds, for how long, and how it proves it is alive."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Hold sessions (bwrap backend only).")
    max_sessions: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Live sessions per worker; the least recently "
        "used is evicted (its state stays in its snapshot) to make room.",
    )
    idle_evict_s: float = Field(
        default=1200.0, gt=0, description="A session idle this long is evicted (default 20 min)."
    )
    warm_pool: int = Field(
        default=2, ge=0, le=32, description="Sandboxes kept started with the stack imported."
    )
    heartbeat_s: float = Field(default=2.0, gt=0, le=60, description="Lease refresh period.")
    lease_ttl_s: float = Field(
        default=6.0, gt=0, le=600, description="A worker silent this long is considered gone."
    )
    session_cpu_s: int = Field(
        default=3600, ge=10, le=86_400, description="CPU seconds a session may use in all."
    )
    start_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="A new sandbox must be warm within this."
    )
    snapshot_timeout_s: float = Field(default=120.0, gt=0, le=1800)
    max_snapshot_mb: int = Field(default=2048, ge=1, le=65_536)
    max_cells_kb: int = Field(
        default=4096, ge=64, le=1_000_000, description="Source kept for replay, all cells."
    )
    socket_dir: Path | None = Field(
        default=None, description="Where the session host's socket lives; default: a temp dir."
    )
