"""The app's wall clock, injectable: tests move time (a run "from 3 days ago") without waiting.

``now()`` is ``datetime.now(UTC)`` plus an offset that only ``shifted`` changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def now() -> datetime:
    return datetime.now(UTC) + _offset


@contextmanager
def shifted(by: timedelta) -> Iterator[None]:
    """Within the block, ``now()`` is ``by`` later (negative: earlier) than the real time."""
    global _offset
    before = _offset
    _offset = before + by
    try:
        yield
    finally:
        _offset = before
