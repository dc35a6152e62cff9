"""``/api/auth/config`` (public), ``/api/me`` and ``/api/api-keys`` (create, list, revoke)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from corral.app.auth import api_keys
from corral.app.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, AuthConfigOut, MeOut
from corral.app.db.models import ApiKey
from corral.app.db.models import User as UserRow
from corral.app.deps import CurrentUser, ServicesDep, SessionDep
from corral.app.observability.router import is_admin
from corral.app.params import ResourceId
from corral.app.problems import problem_responses

router = APIRouter(tags=["auth"])

MAX_KEYS_PER_USER = 50


def _out(row: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )


@router.get("/auth/config", response_model=AuthConfigOut)
async def auth_config(services: ServicesDep) -> AuthConfigOut:
    """Unauthenticated: lets the web UI offer OIDC sign-in without being rebuilt."""
    auth = services.settings.auth
    oidc = auth.mode == "oidc"
    return AuthConfigOut(
        mode=auth.mode,
        oidc_issuer=auth.oidc_issuer if oidc else None,
        oidc_client_id=auth.oidc_client_id if oidc else None,
        oidc_scopes=auth.oidc_scopes,
    )


@router.get("/me", response_model=MeOut)
async def me(user: CurrentUser, session: SessionDep, services: ServicesDep) -> MeOut:
    """Who the token belongs to: user id, token claims, and whether it is an API key."""
    row = await session.get(UserRow, user.id)
    if row is None:  # deleted while the request ran
        raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
    return MeOut(
        id=row.id,
        email=row.email,
        name=row.name,
        created_at=row.created_at,
        auth="api_key" if user.api_key_id else "token",
        admin=is_admin(services.settings, row.id),
    )


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=problem_responses(403, 409),
)
async def create_key(body: ApiKeyCreate, user: CurrentUser, session: SessionDep) -> ApiKeyCreated:
    """A new key, returned once. Keys cannot mint keys: sign in with a token to create one."""
    if user.api_key_id is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "API keys cannot create API keys; use a sign-in token"
        )
    if len(await api_keys.list_for(session, user.id)) >= MAX_KEYS_PER_USER:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"at most {MAX_KEYS_PER_USER} API keys; revoke one first",
        )
    row, key = await api_keys.create(session, user.id, body.name)
    return ApiKeyCreated(**_out(row).model_dump(), key=key)


@router.get("/api-keys", response_model=list[ApiKeyOut])
async def list_keys(user: CurrentUser, session: SessionDep) -> list[ApiKeyOut]:
    """Your API keys (names and ids; the secret is shown only once, when created)."""
    return [_out(r) for r in await api_keys.list_for(session, user.id)]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_key(key_id: ResourceId, user: CurrentUser, session: SessionDep) -> Response:
    """Revoke at once: the next request with this key gets 401."""
    if not await api_keys.revoke(session, user.id, key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"API key {key_id} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
