"""Idempotent creation: an ``Idempotency-Key`` header makes a retried POST return what the first
one created instead of creating (and sending) a second one.

The key is stored on the created SQL row (not only in Redis: a Redis flush must not turn a
retry into a duplicate), unique per user and key, and honoured for ``WINDOW`` (24 h); after
that the key is released and may be used again.

Any owned resource can use it. The table needs ``owner_id``, ``created_at`` and an
``idempotency_key`` column (``String(200)``, nullable) with a unique index on
``(owner_id, idempotency_key)``; then, in a route::

    async def create(..., idempotency_key: IdempotencyKey = None):
        if idempotency_key:
            async with services.db.session() as session:
                row = await find_recent(session, Turn, user.id, idempotency_key)
            if row is not None:
                return existing(row)          # same answer as the first request
        ...insert with idempotency_key=idempotency_key...
        # a concurrent twin loses on the unique index: catch IntegrityError
        # (``is_key_conflict``) and answer with ``find_recent`` again.

``task_runs.service.submit(..., idempotency_key=...)`` does all of this for tasks.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Header
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.db.base import utcnow

WINDOW = timedelta(hours=24)
HEADER = "Idempotency-Key"
MAX_LENGTH = 200

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=MAX_LENGTH,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe creation: the same key from the same user within 24 h returns "
        "what the first request created instead of creating another (printable ASCII, ≤ 200).",
    ),
]

RowT = TypeVar("RowT")


async def find_recent(
    session: AsyncSession,
    model: type[RowT],
    owner_id: str,
    key: str,
    *,
    now: datetime | None = None,
    window: timedelta = WINDOW,
) -> RowT | None:
    """The row ``owner_id`` created with ``key`` within ``window``; an older one releases it."""
    table: Any = model
    row = await session.scalar(
        select(table).where(table.owner_id == owner_id, table.idempotency_key == key)
    )
    if row is None:
        return None
    if row.created_at >= (now or utcnow()) - window:
        return row  # type: ignore[no-any-return]
    await session.execute(update(table).where(table.id == row.id).values(idempotency_key=None))
    return None


def is_key_conflict(exc: IntegrityError) -> bool:
    """Did an insert lose the race on the ``(owner_id, idempotency_key)`` unique index?"""
    text = str(exc.orig).lower()
    return "idempotency" in text or ("unique" in text and "idempotency_key" in text)
