"""Long-lived asyncio work the app owns beyond one request (e.g. pipeline schedulers).

Every task is named and tracked, so a route can ask whether it runs in this process, and app
shutdown cancels them all and waits (bounded) for their cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class ShuttingDown(RuntimeError):
    """No new background work once shutdown began."""


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._closed = False

    def spawn(self, key: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise ShuttingDown("the app is shutting down; retry on another instance")
        if key in self._tasks:
            coro.close()
            raise ValueError(f"background task {key} already running")
        task = asyncio.create_task(coro, name=key)
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._finished(key, t))
        return task

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task crashed", task=key, error=repr(exc), exc_info=exc)

    def running(self, key: str) -> bool:
        return key in self._tasks

    def get(self, key: str) -> asyncio.Task[Any] | None:
        return self._tasks.get(key)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self, timeout_s: float = 15.0) -> None:
        """Cancel everything; each task gets ``timeout_s`` (in total) to clean up."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=timeout_s)
