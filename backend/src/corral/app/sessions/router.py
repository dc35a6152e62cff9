"""``/api/sessions``: stateful Python sessions (state kept between calls, portable)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from corral.app.deps import CurrentUser, ServicesDep
from corral.app.idempotency import IdempotencyKey
from corral.app.params import ResourceId
from corral.app.problems import ProblemError, problem_responses
from corral.app.sessions import service
from corral.app.sessions.schemas import (
    SessionCreate,
    SessionOut,
    SessionRunRequest,
    SessionRunResponse,
)

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionOut,
    responses=problem_responses(401, 404, 409, 422),
)
async def create_session(
    body: SessionCreate,
    user: CurrentUser,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> SessionOut:
    """A new session; its sandbox starts on the first call (warm: forked from a zygote).
    With an `Idempotency-Key`, a retry (same user and key, within 24 h) returns the session
    the first request created."""
    row = await service.create(services, user, body, idempotency_key)
    return await service.describe(services, row)


@router.post(
    "/{session_id}/run",
    response_model=SessionRunResponse,
    responses=problem_responses(401, 404, 409, 422, 429, 503),
)
async def run_in_session(
    session_id: ResourceId, body: SessionRunRequest, user: CurrentUser, services: ServicesDep
) -> SessionRunResponse:
    """Run code in the session: globals persist between calls. Calls of one session run one at
    a time, in order. The output is run_python's plus the worker, notes and variables."""
    timeout_s = min(body.timeout_s, services.settings.max_invoke_timeout_s)
    return await service.run(
        services,
        user,
        session_id,
        body.code,
        want_svg=body.want_svg,
        restart=body.restart,
        timeout_s=timeout_s,
    )


@router.get("/{session_id}", response_model=SessionOut, responses=problem_responses(401, 404, 410))
async def get_session(
    session_id: ResourceId, user: CurrentUser, services: ServicesDep
) -> SessionOut:
    """State (live, suspended), worker and the variables summary of the last call. A closed
    session (deleted, its thread deleted, or ended with its MCP session) is gone: 410
    `session-closed`."""
    row = await service.get_row(services, user, session_id)
    if row.state == "closed":
        raise ProblemError(
            410,
            "session-closed",
            f"session {session_id} is closed; create a new one (POST /api/sessions)",
            extra={"session_id": session_id, "state": "closed"},
        )
    return await service.describe(services, row)


@router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404),
)
async def delete_session(
    session_id: ResourceId, user: CurrentUser, services: ServicesDep
) -> Response:
    """Close the session: its process stops and its snapshot is deleted."""
    await service.close(services, user, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
