"""The async engine and session factory, and the start-up check that the schema is migrated.

Sessions never outlive a unit of work: a request (``SessionDep``, committed when the route
returns), or a ``async with db.session() as s`` block in background code. Rows are plain data
after commit (``expire_on_commit=False``) so they can be returned without lazy loads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from corral.app.db.settings import DatabaseSettings

BACKEND_DIR = Path(__file__).resolve().parents[4]
MIGRATIONS_DIR = BACKEND_DIR / "alembic"


class SchemaNotReady(RuntimeError):
    """The database is unreachable, empty, or behind the newest migration."""


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    return on_connect


def build_engine(settings: DatabaseSettings) -> AsyncEngine:
    if settings.is_sqlite:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            settings.url,
            echo=settings.echo,
            connect_args={"timeout": settings.sqlite_busy_timeout_s},
        )
        event.listen(
            engine.sync_engine,
            "connect",
            _sqlite_pragmas(int(settings.sqlite_busy_timeout_s * 1000)),
        )
        return engine
    return create_async_engine(
        settings.url,
        echo=settings.echo,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_s,
        pool_pre_ping=True,
    )


def head_revision(migrations_dir: Path = MIGRATIONS_DIR) -> str | None:
    """The newest migration in the source tree, or ``None`` when the scripts are not shipped."""
    if not (migrations_dir / "env.py").is_file():
        return None
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    return ScriptDirectory.from_config(config).get_current_head()


class Database:
    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine = build_engine(settings)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: committed when the block ends normally, rolled back otherwise."""
        async with self.sessionmaker() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            result = await conn.execute(text("SELECT version_num FROM alembic_version"))
            row = result.first()
            return None if row is None else str(row[0])

    async def check_schema(self) -> None:
        """Fail start-up with the fix when the database is not at the newest migration."""
        fix = "run `make migrate` (cd backend && uv run alembic upgrade head)"
        try:
            current = await self.current_revision()
        except (OperationalError, ProgrammingError) as exc:
            if _is_missing_table(exc):
                raise SchemaNotReady(f"the database has no Corral schema; {fix}") from None
            raise SchemaNotReady(f"database unreachable: {exc.orig}") from exc
        except (DBAPIError, OSError) as exc:
            raise SchemaNotReady(f"database unreachable: {exc}") from exc
        head = head_revision()
        if current is None or (head is not None and current != head):
            raise SchemaNotReady(
                f"the database schema is at {current or 'nothing'}, the code needs {head}; {fix}"
            )

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        await self.engine.dispose()


def _is_missing_table(exc: DBAPIError) -> bool:
    message = str(exc.orig).lower()
    return (
        isinstance(exc.orig, sqlite3.OperationalError) and "no such table" in message
    ) or "does not exist" in message
