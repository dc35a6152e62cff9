"""``session.close``: stop a session's process on the worker that holds it."""

from __future__ import annotations

from corral.task_schemas import SESSION_CLOSE, SessionCloseInput, SessionCloseOutput
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.python_tool_task import SandboxError
from corral.tasks.sessions.client import HostUnavailable, call_host


@corral_task(SESSION_CLOSE)
def session_close(ctx: TaskContext, params: SessionCloseInput) -> SessionCloseOutput:
    """Drop the session from the host's memory (its snapshots are the app's to delete)."""
    request = {"op": "close", "session_id": params.session_id, "owner_id": ctx.owner_id}
    try:
        answer = call_host(request, timeout_s=20)
    except HostUnavailable as exc:
        raise SandboxError(str(exc)) from exc
    return SessionCloseOutput(
        session_id=params.session_id,
        worker=str(answer.get("worker") or ""),
        was_live=bool(answer.get("was_live")),
    )
