"""Migrations upgrade an empty database to head and ``alembic check`` is clean, on SQLite and
PostgreSQL, through the real ``alembic`` command (what ``make migrate`` runs). The app refuses
to start on a database that is not migrated, saying how to fix it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.app.db import Database, DatabaseSettings, SchemaNotReady, models
from corral.app.db.base import Base
from corral.app.db.engine import head_revision
from tests.support.db import PostgresServer, sqlite_url
from tests.support.procs import BACKEND_DIR, free_port

TABLES = {
    "users", "api_keys", "threads", "messages", "tool_calls", "task_runs", "artifacts",
    "datasets", "pipeline_runs", "token_usage", "turns", "research_sessions", "pipeline_steps",
    "purged_records",
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "fresh.db")
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database(migrated=False)


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=BACKEND_DIR,
        env=env | {"CORRAL_DATABASE__URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def table_names(url: str) -> set[str]:
    from sqlalchemy import inspect

    db = Database(DatabaseSettings(url=url))
    try:
        async with db.engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await db.aclose()


async def test_upgrade_from_empty_then_check_is_clean(empty_database: str) -> None:
    assert await table_names(empty_database) == set()
    up = alembic(empty_database, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert TABLES | {"alembic_version"} == await table_names(empty_database)
    mapped = {m.__tablename__ for m in models.Base.__subclasses__()}
    assert set(Base.metadata.tables) == TABLES == mapped
    check = alembic(empty_database, "check")
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    current = alembic(empty_database, "current")
    assert f"{head_revision()} (head)" in current.stdout
    # ... and back down and up again: every migration reverses.
    assert alembic(empty_database, "downgrade", "base").returncode == 0
    assert await table_names(empty_database) == {"alembic_version"}
    assert alembic(empty_database, "upgrade", "head").returncode == 0


async def test_app_refuses_an_unmigrated_database(empty_database: str) -> None:
    db = Database(DatabaseSettings(url=empty_database))
    try:
        with pytest.raises(SchemaNotReady, match="make migrate"):
            await db.check_schema()
    finally:
        await db.aclose()
    assert alembic(empty_database, "upgrade", "head").returncode == 0
    db = Database(DatabaseSettings(url=empty_database))
    try:
        await db.check_schema()
    finally:
        await db.aclose()


async def test_unreachable_database_is_named() -> None:
    url = f"postgresql+asyncpg://corral:pw@127.0.0.1:{free_port()}/corral"
    db = Database(DatabaseSettings(url=url, pool_timeout_s=2))
    try:
        with pytest.raises(SchemaNotReady, match="unreachable"):
            await db.check_schema()
    finally:
        await db.aclose()


def test_database_url_is_checked() -> None:
    with pytest.raises(ValidationError, match="postgresql\\+asyncpg"):
        DatabaseSettings(url="mysql://u:p@h/db")
    with pytest.raises(ValidationError, match="not a database URL"):
        DatabaseSettings(url="::nonsense::")
    assert DatabaseSettings().is_sqlite


async def test_dataset_records_round_trip_through_sql(empty_database: str) -> None:
    """The datasets domain's SQL repository (the system of record for datasets)."""
    from datetime import UTC, datetime, timedelta

    from corral.app.datasets.repository import DatasetRepository as SqlDatasetRepository
    from corral.app.datasets.schemas import DatasetRecord

    assert alembic(empty_database, "upgrade", "head").returncode == 0
    db = Database(DatabaseSettings(url=empty_database))
    repo = SqlDatasetRepository(db)
    now = datetime.now(UTC)

    def record(i: int, owner: str) -> DatasetRecord:
        return DatasetRecord.model_validate(
            {
                "id": f"ds-{i}", "owner_id": owner, "name": f"cells {i}", "format": "sonata",
                "key": f"{owner}/datasets/k{i}", "size": 10 * i, "population": "cortex",
                "populations": ["cortex", "thalamus"], "row_count": i,
                "columns": [{"name": "layer", "type": "VARCHAR"}],
                "sample_rows": [["L5", 1.5, None]], "created_at": now + timedelta(seconds=i),
            }
        )  # fmt: skip

    try:
        for i, owner in [(1, "ann"), (2, "ann"), (3, "bob")]:
            await repo.add(record(i, owner))
        got = await repo.get("ds-1")
        assert got is not None and got.updated_at is not None
        assert got.model_copy(update={"updated_at": None}) == record(1, "ann")
        assert [r.id for r in await repo.list_for_owner("ann", 10)] == ["ds-2", "ds-1"]
        await repo.delete(record(2, "ann"))
        assert await repo.get("ds-2") is None
        assert [r.id for r in await repo.list_for_owner("ann", 10)] == ["ds-1"]
    finally:
        await db.aclose()
