"""Verifying bearer tokens locally: HS256 dev tokens, or OIDC tokens against the issuer's JWKS."""

from __future__ import annotations

import time
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
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._jwks = (
            jwt.PyJWKClient(settings.oidc_jwks_url, cache_keys=True, lifespan=300, timeout=5)
            if settings.mode == "oidc" and settings.oidc_jwks_url
            else None
        )

    async def verify(self, token: str) -> User:
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
