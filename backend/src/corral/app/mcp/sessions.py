"""One research session per MCP session: ``run_python`` keeps its state between calls.

The first ``run_python`` call of an MCP session (streamable HTTP with an ``Mcp-Session-Id``)
creates a research session (``corral.app.sessions``) owned by the caller; later calls of that
MCP session run in it, one at a time. When the MCP session ends (the client's DELETE, idle
expiry, app shutdown) the research session is closed. Calls without an MCP session (the
stateless 2026 wire) or with ``_meta: {"corral/session": false}`` run in a fresh sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from corral.app.auth.service import User
from corral.app.db.models import ResearchSession
from corral.app.services import Services
from corral.app.sessions import service as sessions
from corral.app.sessions.schemas import SessionCreate

log = logging.getLogger(__name__)

SESSION_META_KEY = "corral/session"


def wants_session(meta: Any) -> bool:
    """False when the call's ``_meta`` opts out of the MCP session's research session."""
    if meta is None:
        return True
    value = meta.get(SESSION_META_KEY) if isinstance(meta, dict) else None
    if value is None:
        extra = getattr(meta, "model_extra", None) or {}
        value = extra.get(SESSION_META_KEY)
    return value is not False


@dataclass
class McpResearchSessions:
    """MCP session id → research session id, for this app process."""

    _by_mcp: dict[str, str] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def _lock(self, mcp_session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(mcp_session_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def hold(
        self, services: Services, user: User, mcp_session_id: str, connection: Any
    ) -> AsyncIterator[ResearchSession]:
        """The MCP session's research session (made on first use), held for one call."""
        async with self._lock(mcp_session_id):
            row = None
            known = self._by_mcp.get(mcp_session_id)
            if known is not None:
                row = await sessions.get_row(services, user, known)
                if row.state != "active":
                    row = None
            if row is None:
                row = await sessions.create(services, user, SessionCreate())
                first = known is None
                self._by_mcp[mcp_session_id] = row.id
                stack = getattr(connection, "exit_stack", None)
                if first and stack is not None:
                    stack.push_async_callback(self._close, services, user, mcp_session_id)
            yield row

    async def _close(self, services: Services, user: User, mcp_session_id: str) -> None:
        self._locks.pop(mcp_session_id, None)
        session_id = self._by_mcp.pop(mcp_session_id, None)
        if session_id is None:
            return
        try:
            await sessions.close(services, user, session_id)
        except Exception:  # the session is closed lazily by its worker anyway
            log.warning("closing research session %s failed", session_id, exc_info=True)

    def session_of(self, mcp_session_id: str) -> str | None:
        return self._by_mcp.get(mcp_session_id)
