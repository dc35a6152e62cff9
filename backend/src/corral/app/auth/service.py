"""Verifying bearer tokens locally: HS256 dev tokens, or OIDC tokens against the issuer's JWKS."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import jwt
import jwt.types

from corral.app.settings import AuthSettings

DEV_ISSUER = "corral-dev"
DEV_AUDIENCE = "corral"


class InvalidToken(Exception):
    """The token is missing, malformed, expired, or not for us; the message says which."""


@dataclass(frozen=True)
class User:
    id: str
    claims: dict[str, object]
    api_key_id: str | None = None
    """Set when the caller authenticated with an API key instead of a token."""


def issue_dev_token(settings: AuthSettings, *, ttl_s: int = 30 * 86_400) -> str:
    assert settings.dev_secret is not None
    now = int(time.time())
    claims = {
        "sub": settings.dev_user_id,
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, settings.dev_secret.get_secret_value(), algorithm="HS256")


class TokenVerifier:
    """Verifies bearer tokens; a token verified once is trusted from memory for a short while.

    Every API call carries the same token, and a full verification (HS256 key preparation or a
    JWKS lookup, then every claim check) was ~3 % of the app's CPU per request (issue 16). A hit
    still honours ``exp``; entries live at most ``CACHE_TTL_S`` so a rotated OIDC key or a changed
    dev secret takes effect within a minute.
    """

    CACHE_TTL_S = 60.0
    CACHE_SIZE = 4096

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, float, User]] = OrderedDict()
        self._jwks = (
            jwt.PyJWKClient(settings.oidc_jwks_url, cache_keys=True, lifespan=300, timeout=5)
            if settings.mode == "oidc" and settings.oidc_jwks_url
            else None
        )

    async def verify(self, token: str) -> User:
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            fresh_until, expires_at, user = cached
            if now >= expires_at + self._settings.leeway_s:
                del self._cache[token]
                raise InvalidToken("token expired; sign in again")
            if now < fresh_until:
                self._cache.move_to_end(token)
                return user
            del self._cache[token]
        user = await self._verify(token)
        expires_at = float(str(user.claims["exp"]))
        self._cache[token] = (now + self.CACHE_TTL_S, expires_at, user)
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return user

    async def _verify(self, token: str) -> User:
        settings = self._settings
        options: jwt.types.Options = {"require": ["exp", "sub", "iss", "aud"]}
        try:
            if settings.mode == "dev":
                assert settings.dev_secret is not None
                claims = jwt.decode(
                    token,
                    settings.dev_secret.get_secret_value(),
                    algorithms=["HS256"],
                    audience=DEV_AUDIENCE,
                    issuer=DEV_ISSUER,
                    leeway=settings.leeway_s,
                    options=options,
                )
            else:
                assert self._jwks is not None
                jwks = self._jwks
                signing_key = await anyio.to_thread.run_sync(
                    lambda: jwks.get_signing_key_from_jwt(token)
                )
                claims = jwt.decode(
                    token,
                    signing_key.key,
                    algorithms=settings.algorithms,
                    audience=settings.oidc_audience,
                    issuer=settings.oidc_issuer,
                    leeway=settings.leeway_s,
                    options=options,
                )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired; sign in again") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("token audience is not this service") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("token issuer is not trusted") from exc
        except jwt.PyJWKClientError as exc:
            raise InvalidToken(f"token signing key not found: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from exc
        return User(id=str(claims["sub"]), claims=claims)
