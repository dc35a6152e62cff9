"""Bearer-token verification and its short-lived cache: a cached token is still a checked token.

The verifier remembers a token it verified for a minute (issue 16: full verification was ~3 % of
the app's CPU per request). These tests move the verifier's clock instead of waiting: a cached
token expires on time, a token never verified is never served from the cache, and a changed
secret takes effect once the entry is older than the cache's lifetime.
"""

from __future__ import annotations

import secrets
import time

import pytest

from corral.app.auth.service import InvalidToken, TokenVerifier, issue_dev_token
from corral.app.settings import AuthSettings


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def dev_settings(secret: str | None = None) -> AuthSettings:
    return AuthSettings(mode="dev", dev_secret=secret or secrets.token_hex(32), leeway_s=30)


async def test_cached_token_still_expires_on_time() -> None:
    settings = dev_settings()
    clock = Clock()
    verifier = TokenVerifier(settings, clock=clock)
    token = issue_dev_token(settings, ttl_s=120)

    first = await verifier.verify(token)
    assert first.id == settings.dev_user_id
    clock.now += 50
    assert (await verifier.verify(token)).id == first.id  # within exp: accepted
    clock.now += 120  # past exp + leeway, although PyJWT's own clock would still accept it
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


async def test_a_forged_token_is_refused_while_the_real_one_is_cached() -> None:
    settings = dev_settings()
    verifier = TokenVerifier(settings)
    token = issue_dev_token(settings)
    await verifier.verify(token)
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}AAAA"
    with pytest.raises(InvalidToken, match="invalid token"):
        await verifier.verify(forged)
    other = issue_dev_token(dev_settings())  # signed with another secret
    with pytest.raises(InvalidToken):
        await verifier.verify(other)


async def test_a_changed_secret_applies_once_the_cache_entry_is_old() -> None:
    settings = dev_settings()
    clock = Clock()
    verifier = TokenVerifier(settings, clock=clock)
    token = issue_dev_token(settings)
    await verifier.verify(token)
    verifier._settings = dev_settings()  # the secret rotated under a running process
    assert (await verifier.verify(token)).id == settings.dev_user_id
    clock.now += TokenVerifier.CACHE_TTL_S + 1
    with pytest.raises(InvalidToken, match="invalid token"):
        await verifier.verify(token)


async def test_the_cache_is_bounded() -> None:
    settings = dev_settings()
    verifier = TokenVerifier(settings)
    for i in range(TokenVerifier.CACHE_SIZE + 50):
        # `iat`/`exp` change each second only: make each token distinct through its lifetime.
        await verifier.verify(issue_dev_token(settings, ttl_s=3600 + i))
    assert len(verifier._cache) == TokenVerifier.CACHE_SIZE
