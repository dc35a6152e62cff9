"""Who is calling ``/mcp``: the same bearer tokens and API keys as the HTTP API.

Every HTTP request to the endpoint (POST messages, the GET stream, DELETE) is authenticated
with ``corral.app.deps.get_current_user`` — the very function the HTTP routes depend on — before
the MCP transport sees it. A refused request gets the API's 401 problem (``WWW-Authenticate:
Bearer``). The caller is handed to the MCP handlers in the ASGI scope, and also as the SDK's
``scope["user"]``, so the transport binds each MCP session to the principal that opened it: a
request for another user's session id is answered like an unknown session (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from corral.app.auth.service import User
from corral.app.deps import get_current_user
from corral.app.problems import problem_response
from corral.app.services import Services

SCOPE_KEY = "corral.mcp.caller"
ISSUER = "corral"


@dataclass(frozen=True)
class Caller:
    """The authenticated user of one MCP HTTP request and the app's services."""

    user: User
    services: Services


def caller_of(request: Any) -> Caller:
    """The caller of the HTTP request that carried an MCP message (``ctx.request``)."""
    scope = getattr(request, "scope", None)
    caller = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    if not isinstance(caller, Caller):  # never reached through the authenticated endpoint
        raise RuntimeError("MCP message without an authenticated caller")
    return caller


def _bearer(scope: Scope) -> HTTPAuthorizationCredentials | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token.strip())
            return None
    return None


async def authenticate(scope: Scope, receive: Receive, send: Send) -> Scope | None:
    """The scope with the caller attached, or ``None`` after answering 401 (or 503)."""
    services: Services | None = getattr(scope["app"].state, "services", None)
    if services is None:
        response = problem_response(
            Request(scope), 503, "service-unavailable", "the app is starting", retry_after_s=1
        )
        await response(scope, receive, send)
        return None
    try:
        user = await get_current_user(services, _bearer(scope))
    except HTTPException as exc:
        response = problem_response(
            Request(scope),
            exc.status_code,
            "unauthorized" if exc.status_code == 401 else "http-error",
            str(exc.detail),
            headers=exc.headers,
        )
        await response(scope, receive, send)
        return None
    principal = AccessToken(
        token="",  # identity only: the secret is not kept
        client_id=user.id,
        scopes=[],
        subject=user.id,
        claims={"iss": ISSUER},
    )
    return {**scope, "user": AuthenticatedUser(principal), SCOPE_KEY: Caller(user, services)}
