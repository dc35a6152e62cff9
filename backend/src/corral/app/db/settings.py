"""Database settings, readable without the rest of the app's settings (Alembic needs only these)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

DEFAULT_URL = "sqlite+aiosqlite:///.corral/corral.db"
SUPPORTED_DRIVERS = frozenset({"sqlite+aiosqlite", "postgresql+asyncpg"})


class DatabaseSettings(BaseModel):
    """Where the app's tables live: SQLite (embedded) or PostgreSQL (compose, production)."""

    url: str = Field(
        default=DEFAULT_URL,
        description="sqlite+aiosqlite:///path.db or postgresql+asyncpg://user:pass@host/db",
    )
    pool_size: int = Field(default=10, ge=1, le=200, description="PostgreSQL only.")
    max_overflow: int = Field(default=10, ge=0, le=200, description="PostgreSQL only.")
    pool_timeout_s: float = Field(default=10.0, gt=0, le=120)
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0, le=600)
    echo: bool = False
    check_schema: bool = Field(
        default=True,
        description="Refuse to start unless the schema is at the newest migration.",
    )

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        try:
            url = make_url(value)
        except Exception as exc:
            raise ValueError(f"database.url is not a database URL: {exc}") from None
        if url.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"database.url driver {url.drivername!r} is not supported; use one of "
                f"{sorted(SUPPORTED_DRIVERS)} (e.g. postgresql+asyncpg://user:pass@host/db)"
            )
        return value

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).get_backend_name() == "sqlite"

    def sqlite_path(self) -> Path | None:
        """The SQLite file (``None`` for PostgreSQL or an in-memory database)."""
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database or "")


class DatabaseOnlySettings(BaseSettings):
    """``CORRAL_DATABASE__*`` alone, for ``alembic`` and scripts that must not need secrets."""

    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", env_file=".env.app", extra="ignore"
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
