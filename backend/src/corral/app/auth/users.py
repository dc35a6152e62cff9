"""Users are created the first time their token (or key) is seen; ids are the token ``sub``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db import Database
from corral.app.db.base import utcnow
from corral.app.db.models import User as UserRow


def _profile(claims: dict[str, object] | None) -> dict[str, Any]:
    claims = claims or {}
    email = claims.get("email")
    name = claims.get("name") or claims.get("preferred_username")
    return {
        "email": str(email)[:320] if isinstance(email, str) else None,
        "name": str(name)[:200] if isinstance(name, str) else None,
    }


async def ensure_user_in(
    session: AsyncSession, user_id: str, claims: dict[str, object] | None = None
) -> None:
    """Insert the user unless present (race-free on both databases)."""
    values = {"id": user_id, "created_at": utcnow(), "last_seen_at": utcnow(), **_profile(claims)}
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(insert(UserRow).values(**values).on_conflict_do_nothing())


class KnownUsers:
    """Remembers which users exist so a request costs no write after the first one."""

    def __init__(self, db: Database, capacity: int = 10_000) -> None:
        self._db = db
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    async def ensure(self, user_id: str, claims: dict[str, object] | None = None) -> None:
        if user_id in self._seen:
            self._seen.move_to_end(user_id)
            return
        async with self._db.session() as session:
            exists = await session.scalar(select(UserRow.id).where(UserRow.id == user_id))
            if exists is None:
                await ensure_user_in(session, user_id, claims)
        self._seen[user_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
