"""A run whose caller waits for its outcome and records it, so no tracker has to follow it.

The tracker follows a run with a subscription of its own and writes its row twice (``running``,
then the end). A caller that waits on the run's stream anyway (an HTTP invoke) sees the same
entries: it notes the ``started`` and terminal ones (``note``, an ``on_event``) and writes the
end, start included, in one transaction. A caller that stops waiting first (a timeout answer,
a client that left, an error) hands the run to the tracker instead (``settle``), so every run
is recorded by someone, exactly once (``finish`` writes a run's end only once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from corral.app.background import ShuttingDown
from corral.task_schemas import StartedEvent, TaskEvent, is_terminal

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from corral.app.services import Services

log = structlog.get_logger(__name__)


@dataclass
class WaitedRun:
    task_id: str
    owner_id: str | None = None  # set: the run's end frees its fair-share slot before its write
    started: tuple[str, TaskEvent] | None = None
    ended: tuple[str, TaskEvent] | None = None

    async def note(self, entry_id: str, event: TaskEvent) -> None:
        """An ``on_event`` for ``long_poll_celery_result``."""
        if isinstance(event, StartedEvent):
            self.started = (entry_id, event)
        elif is_terminal(event):
            self.ended = (entry_id, event)

    async def record(self, services: Services, session: AsyncSession | None = None) -> bool:
        """Write the end this caller saw, with its start, in ``session`` (the caller's own
        transaction, for writes that belong with it) or in one of the tracker's. False: no end
        seen yet."""
        if self.ended is None:
            return False
        await services.tracker.apply(
            self.task_id, *self.ended, started=self.started, session=session
        )
        return True

    def follow(self, services: Services, timeout_s: float) -> None:
        """Hand the run to the tracker (its caller stopped waiting, or will not record it)."""
        services.tracker.watch(self.task_id, timeout_s=timeout_s)

    def settle(self, services: Services, watch_timeout_s: float) -> None:
        """After the wait, whatever its outcome: record the end this caller saw, off the
        response's path; or, if it saw none, let the tracker follow the run."""
        if self.ended is None:
            self.follow(services, watch_timeout_s)
            return
        if services.fair is not None and self.owner_id is not None:
            services.fair.recording(self.owner_id, self.task_id)
        try:
            services.background.spawn(
                f"record-run:{self.task_id}", self._record_or_follow(services, watch_timeout_s)
            )
        except (ShuttingDown, ValueError):
            # Shutting down: the next process resumes the run (still queued or running in
            # SQL) and records it from its stream.
            log.info("run left for the next process to record", task_id=self.task_id)
            self._recorded(services)

    async def _record_or_follow(self, services: Services, watch_timeout_s: float) -> None:
        try:
            await self.record(services)
        except Exception as exc:  # e.g. the database is briefly locked: the tracker retries
            log.warning("could not record a run's end; the tracker follows it",
                        task_id=self.task_id, error=repr(exc))  # fmt: skip
            self.follow(services, watch_timeout_s)
        finally:
            self._recorded(services)

    def _recorded(self, services: Services) -> None:
        if services.fair is not None and self.owner_id is not None:
            services.fair.recorded(self.owner_id, self.task_id)
