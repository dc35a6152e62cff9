"""Batching streamed text into progress events, so Redis is not written once per token."""

from __future__ import annotations

import time
from collections.abc import Callable


class TextBatcher:
    """Buffers deltas; flushes when ``flush_chars`` are waiting or ``flush_s`` has passed."""

    def __init__(self, publish: Callable[[str], None], flush_s: float, flush_chars: int) -> None:
        self._publish = publish
        self._flush_s = flush_s
        self._flush_chars = flush_chars
        self._buffer: list[str] = []
        self._size = 0
        self._last = time.monotonic()
        self.published_any = False

    def add(self, text: str) -> None:
        if not text:
            return
        self._buffer.append(text)
        self._size += len(text)
        if self._size >= self._flush_chars or time.monotonic() - self._last >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._publish("".join(self._buffer))
            self.published_any = True
            self._buffer.clear()
            self._size = 0
        self._last = time.monotonic()
