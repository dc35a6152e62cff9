"""Helpers for the assistant tests: app instances on a chosen database, users, chat streams."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from httpx_sse import aconnect_sse

from corral.app.auth.service import DEV_AUDIENCE, DEV_ISSUER
from tests.support.procs import UvicornThread, env_vars, free_port


def dev_token(sub: str, secret: str, *, ttl_s: int = 3600, **claims: Any) -> str:
    """A dev-mode token for any subject (the app creates the user on first sight)."""
    now = int(time.time())
    body = {"sub": sub, "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "iat": now, "exp": now + ttl_s}
    return jwt.encode(body | claims, secret, algorithm="HS256")


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@dataclass
class AssistantApp:
    url: str
    secret: str
    database_url: str
    server: UvicornThread
    dialect: str

    def headers(self, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {dev_token(sub, self.secret)}"}

    def client(self, sub: str | None = None, timeout: float = 60) -> httpx.AsyncClient:
        headers = self.headers(sub) if sub else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    @property
    def services(self) -> Any:
        return self.server.server.config.app.state.services


@contextmanager
def assistant_app(
    stack_env: dict[str, str],
    database_url: str,
    dialect: str,
    *,
    no_model: bool = False,
    **overrides: str,
) -> Iterator[AssistantApp]:
    """A real app server (own port, own database and rate-limit keys) on the shared stack;
    ``no_model``: as deployed before any language model is configured."""
    from corral.app.main import create_app
    from corral.app.settings import AppSettings

    port = free_port()
    env = {
        **stack_env,
        "CORRAL_DATABASE__URL": database_url,
        "CORRAL_DATASETS__WORKER_BASE_URL": f"http://127.0.0.1:{port}",
        "CORRAL_RATE_LIMITS__KEY_PREFIX": f"rl-{uuid.uuid4().hex[:8]}",
        **overrides,
    }
    with env_vars(env):
        settings = AppSettings()  # type: ignore[call-arg]
    if no_model:
        from corral.config import LLMSettings

        settings.llm = LLMSettings()
    with UvicornThread(create_app(settings), port=port) as server:
        secret = env["CORRAL_AUTH__DEV_SECRET"]
        yield AssistantApp(server.url, secret, database_url, server, dialect)


@dataclass
class Sse:
    event: str
    data: Any
    at: float = field(default_factory=time.monotonic)
    id: str = ""


async def chat(
    client: httpx.AsyncClient,
    thread_id: str,
    content: str,
    *,
    stop_when: Any = None,
    timeout: float = 90,
    headers_out: dict[str, str] | None = None,
) -> list[Sse]:
    """POST a message and read the SSE turn; ``stop_when(events)`` closes the stream early."""
    events: list[Sse] = []
    async with aconnect_sse(
        client,
        "POST",
        f"/api/threads/{thread_id}/messages",
        json={"content": content},
        timeout=timeout,
    ) as source:
        assert source.response.status_code == 200, await source.response.aread()
        if headers_out is not None:
            headers_out.update(source.response.headers)
        async for sse in source.aiter_sse():
            events.append(Sse(sse.event, json.loads(sse.data) if sse.data else None, id=sse.id))
            if stop_when is not None and stop_when(events):
                break
    return events


async def send(client: httpx.AsyncClient, thread_id: str, content: str) -> dict[str, Any]:
    """POST a message the way the web app does: ``202 {turn_id, message_id, events_url}``."""
    resp = await client.post(f"/api/threads/{thread_id}/messages", json={"content": content})
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def follow(
    client: httpx.AsyncClient,
    turn_id: str,
    *,
    last_event_id: str | None = None,
    stop_when: Any = None,
    timeout: float = 90,
) -> list[Sse]:
    """Read a turn's events (from the start, or after ``last_event_id``) until its end or
    until ``stop_when(events)``; leaving early never stops the turn."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Sse] = []
    async with aconnect_sse(
        client, "GET", f"/api/turns/{turn_id}/events", headers=headers, timeout=timeout
    ) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            events.append(Sse(sse.event, json.loads(sse.data) if sse.data else None, id=sse.id))
            if stop_when is not None and stop_when(events):
                break
    return events


def kinds(events: list[Sse]) -> list[str]:
    return [e.event for e in events]


def text_of(events: list[Sse]) -> str:
    return "".join(e.data["delta"] for e in events if e.event == "text")
