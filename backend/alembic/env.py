"""Alembic environment: the app's metadata, the URL from ``CORRAL_DATABASE__URL``, async engines.

The URL is taken, in order, from ``config.attributes["url"]`` (tests), ``-x url=...``, then the
app's settings (``CORRAL_DATABASE__URL`` / ``.env.app``; default: the embedded SQLite file).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from sqlalchemy.engine import Connection

from alembic import context
from corral.app.db.base import Base, UTCDateTime
from corral.app.db.engine import build_engine
from corral.app.db.models import User  # noqa: F401  (registers every table)
from corral.app.db.settings import DatabaseOnlySettings, DatabaseSettings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_settings() -> DatabaseSettings:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return DatabaseSettings(url=url)
    return DatabaseOnlySettings().database


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Write ``UTCDateTime`` as the plain column type it stores (migrations import no app code)."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = build_engine(database_settings())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=database_settings().url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
