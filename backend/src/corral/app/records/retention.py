"""Reading tombstones: a record the ``system.purge`` task deleted answers 410 ``purged``.

Retention itself (what is deleted when) is the worker's ``system.purge`` on beat, configured per
kind with ``TASKS_RETENTION__<KIND>_DAYS`` (default: keep forever); see docs/architecture.md.
Only the owner learns that a record was purged: anyone else still gets 404.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from corral.app.db.models import PurgedRecord
from corral.app.problems import ProblemError
from corral.app.services import Services

PURGED_KIND = "purged"


async def purged_at(
    services: Services, kind: str, record_id: str, owner_id: str
) -> datetime | None:
    async with services.db.session() as session:
        return await session.scalar(
            select(PurgedRecord.purged_at).where(
                PurgedRecord.kind == kind,
                PurgedRecord.record_id == record_id[:64],
                PurgedRecord.owner_id == owner_id,
            )
        )


def purged_problem(what: str, when: datetime) -> ProblemError:
    return ProblemError(
        410,
        PURGED_KIND,
        f"{what} was deleted on {when:%Y-%m-%d %H:%M} UTC by the retention policy; it cannot be "
        "restored",
        title="Purged",
    )


async def raise_if_purged(
    services: Services, kind: str, record_id: str, owner_id: str, what: str
) -> None:
    when = await purged_at(services, kind, record_id, owner_id)
    if when is not None:
        raise purged_problem(what, when)
