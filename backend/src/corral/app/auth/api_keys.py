"""API keys: ``ck_`` + 256 random bits, shown once; only the SHA-256 is stored.

A presented key is hashed and looked up by that hash (an index lookup on a value the caller
cannot steer, so there is nothing to time). Revoking deletes the row.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db import Database
from corral.app.db.base import utcnow
from corral.app.db.models import ApiKey

KEY_PREFIX = "ck_"
_LAST_USED_RESOLUTION = timedelta(minutes=5)


class InvalidApiKey(Exception):
    """Unknown or revoked key."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


async def create(session: AsyncSession, user_id: str, name: str) -> tuple[ApiKey, str]:
    """Store a new key for ``user_id``; returns the row and the key (never stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(user_id=user_id, name=name, prefix=key[:10], key_hash=hash_key(key))
    session.add(row)
    await session.flush()
    return row, key


async def list_for(session: AsyncSession, user_id: str) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
    )
    return list(rows)


async def revoke(session: AsyncSession, user_id: str, key_id: str) -> bool:
    result = await session.execute(
        delete(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
    )
    return bool(getattr(result, "rowcount", 0))


async def authenticate(db: Database, key: str) -> ApiKey:
    """The key's row, or ``InvalidApiKey``; ``last_used_at`` is refreshed every few minutes."""
    async with db.session() as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        if row is None:
            raise InvalidApiKey("invalid API key (unknown or revoked)")
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > _LAST_USED_RESOLUTION:
            await session.execute(
                update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now)
            )
        return row
