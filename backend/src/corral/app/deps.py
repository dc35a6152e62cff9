"""Typed dependency aliases used by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from corral.app.auth import api_keys
from corral.app.auth.service import InvalidToken, User
from corral.app.ratelimit.service import Group, LimitState
from corral.app.services import Services

_bearer = HTTPBearer(
    auto_error=False, description="Dev token from `make up`, an OIDC JWT, or an API key (ck_...)"
)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_db_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: committed when the route returns, before the response is
    sent (``scope="function"``); rolled back if the route raises."""
    async with services.db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db_session, scope="function")]


def _unauthorized(message: str, error: str | None = None) -> HTTPException:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge}
    )


async def get_current_user(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None:
        raise _unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
    token = credentials.credentials
    if api_keys.is_api_key(token):
        try:
            key = await api_keys.authenticate(services.db, token)
        except api_keys.InvalidApiKey as exc:
            raise _unauthorized(str(exc), "invalid_token") from exc
        return User(id=key.user_id, claims={}, api_key_id=key.id)
    try:
        user = await services.verifier.verify(token)
    except InvalidToken as exc:
        raise _unauthorized(str(exc), "invalid_token") from exc
    await services.users.ensure(user.id, user.claims)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def rate_limited(group: Group) -> Callable[..., Awaitable[LimitState | None]]:
    """A dependency counting one request of ``group`` for the caller; 429 past the limit."""

    async def check(
        user: CurrentUser, services: ServicesDep, response: Response
    ) -> LimitState | None:
        limits = services.rate_limits
        if not limits.enabled:
            return None
        state = await limits.hit(group, user.id)
        if not state.allowed:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"rate limit for {group} reached ({state.limit}); retry in {state.retry_after_s}s",
                headers=state.headers(),
            )
        response.headers.update(state.headers())
        return state

    return check


ChatLimit = Annotated[LimitState | None, Depends(rate_limited("chat"))]
ToolsLimit = Annotated[LimitState | None, Depends(rate_limited("tools"))]
