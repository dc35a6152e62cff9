"""Threads, ownership, API keys, users, rate limits and token checks over real HTTP, on SQLite
and PostgreSQL (the app under test has its own database; Redis and workers are shared)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.assistant import AssistantApp, assistant_app, chat, new_user, text_of
from tests.support.circuit import upload
from tests.support.db import PostgresServer, new_sqlite_database
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.jwks import LocalIssuer

pytestmark = pytest.mark.usefixtures("workers")

LIMITS = {
    "CORRAL_RATE_LIMITS__CHAT": "2/minute",
    "CORRAL_RATE_LIMITS__TOOLS": "3/minute",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest,
    stack_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AssistantApp]:
    if request.param == "sqlite":
        url = new_sqlite_database(tmp_path_factory.mktemp("api-db"))
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database()
    with assistant_app(stack_env, url, request.param, **LIMITS) as live:
        yield live


def rows(app: AssistantApp, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Look at the app's rows directly (``:name`` parameters), on either database."""
    if app.dialect == "sqlite":
        import sqlite3

        with sqlite3.connect(app.database_url.split(":///", 1)[1]) as conn:
            return conn.execute(sql, params).fetchall()
    import asyncpg

    for i, name in enumerate(params, 1):
        sql = sql.replace(f":{name}", f"${i}")

    async def query() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(app.database_url.replace("+asyncpg", ""))
        try:
            return [tuple(r) for r in await conn.fetch(sql, *params.values())]
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the test's loop is running
        return pool.submit(asyncio.run, query()).result()


# -- threads -----------------------------------------------------------------------------------


async def test_thread_crud_search_and_validation(app: AssistantApp) -> None:
    async with app.client(new_user()) as client:
        made = []
        for title in ["Cortex layers", "Python plots", "layer 5 morphologies"]:
            resp = await client.post("/api/threads", json={"title": title})
            assert resp.status_code == 201
            made.append(resp.json())
        listed = (await client.get("/api/threads")).json()
        assert [t["title"] for t in listed] == [
            "layer 5 morphologies",
            "Python plots",
            "Cortex layers",
        ]
        found = (await client.get("/api/threads", params={"q": "LAYER"})).json()
        assert {t["title"] for t in found} == {"Cortex layers", "layer 5 morphologies"}
        assert (await client.get("/api/threads", params={"q": "%"})).json() == []
        page = (await client.get("/api/threads", params={"limit": 1, "offset": 1})).json()
        assert [t["title"] for t in page] == ["Python plots"]

        thread_id = made[0]["id"]
        patched = await client.patch(f"/api/threads/{thread_id}", json={"title": "Renamed"})
        assert patched.status_code == 200 and patched.json()["title"] == "Renamed"
        assert (await client.get("/api/threads")).json()[0]["id"] == thread_id  # now newest
        bad_model = await client.patch(f"/api/threads/{thread_id}", json={"model": "gpt-99"})
        assert bad_model.status_code == 422 and "gpt-99" in bad_model.json()["detail"]
        ok_model = await client.patch(f"/api/threads/{thread_id}", json={"model": "backup"})
        assert ok_model.json()["model"] == "backup"
        assert (await client.post("/api/threads", json={"title": ""})).status_code == 422
        assert (await client.post("/api/threads", json={"colour": "red"})).status_code == 422
        assert (await client.delete(f"/api/threads/{thread_id}")).status_code == 204
        assert (await client.get(f"/api/threads/{thread_id}")).status_code == 404
        assert (await client.delete(f"/api/threads/{thread_id}")).status_code == 404


async def test_messages_are_paginated_oldest_first(app: AssistantApp, fake_llm: FakeOpenAI) -> None:
    fake_llm.respond_with(lambda req: Reply(text=f"re: {req.prompt}"))
    user = new_user()
    async with app.client(user) as client:
        thread_id = (await client.post("/api/threads", json={})).json()["id"]
        for i in range(2):  # the chat limit is 2 per minute
            assert text_of(await chat(client, thread_id, f"m{i}")) == f"re: m{i}"
        page = (await client.get(f"/api/threads/{thread_id}/messages", params={"limit": 3})).json()
        assert [m["content"] for m in page["items"]] == ["re: m0", "m1", "re: m1"]
        assert [m["seq"] for m in page["items"]] == [2, 3, 4]
        older = await client.get(
            f"/api/threads/{thread_id}/messages", params={"before": page["next_before"]}
        )
        assert [m["content"] for m in older.json()["items"]] == ["m0"]
        assert older.json()["next_before"] is None


# -- ownership ---------------------------------------------------------------------------------


async def test_user_b_cannot_reach_anything_of_user_a(
    app: AssistantApp, fake_llm: FakeOpenAI
) -> None:
    from tests.support.fake_openai import ToolCall

    alice, bob = new_user(), new_user()
    fake_llm.respond_with(
        lambda req: (
            Reply(text="ok")
            if any(m.get("role") == "tool" for m in req.messages)
            else Reply(
                tool_calls=[
                    ToolCall(
                        "run_python", {"code": "import matplotlib.pyplot as plt; plt.plot([1, 3])"}
                    )
                ]
            )
        )
    )
    async with app.client(alice) as a, app.client(bob) as b:
        thread_id = (await a.post("/api/threads", json={"title": "secret"})).json()["id"]
        events = await chat(a, thread_id, "plot")
        result = next(e.data for e in events if e.event == "tool_result")
        task_id, key = result["task_id"], result["output"]["figures"][0]["key"]
        artifact_id = ""
        for _ in range(50):
            listed = (await a.get("/api/artifacts")).json()
            if listed:
                artifact_id = listed[0]["id"]
                break
            await asyncio.sleep(0.1)
        assert artifact_id
        dataset = await upload(a, b"node_id,layer\n1,L1\n", "mine.csv")
        assert dataset.status_code == 201, dataset.text
        dataset_id = dataset.json()["id"]
        key_id = (await a.post("/api/api-keys", json={"name": "ci"})).json()["id"]

        for method, path, body in [
            ("GET", f"/api/threads/{thread_id}", None),
            ("PATCH", f"/api/threads/{thread_id}", {"title": "mine now"}),
            ("DELETE", f"/api/threads/{thread_id}", None),
            ("GET", f"/api/threads/{thread_id}/messages", None),
            ("POST", f"/api/threads/{thread_id}/messages", {"content": "hi"}),
            ("GET", f"/api/artifacts/{artifact_id}", None),
            ("GET", f"/api/tasks/{task_id}", None),
            ("GET", f"/api/tasks/{task_id}/events", None),
            ("POST", f"/api/tasks/{task_id}/cancel", None),
            ("GET", f"/api/storage/{key}", None),
            ("GET", f"/api/datasets/{dataset_id}", None),
            ("DELETE", f"/api/datasets/{dataset_id}", None),
            ("DELETE", f"/api/api-keys/{key_id}", None),
        ]:
            resp = await b.request(method, path, json=body)
            assert resp.status_code == 404, (method, path, resp.status_code, resp.text)
        assert (await b.get("/api/threads")).json() == []
        assert (await b.get("/api/artifacts")).json() == []
        assert (await b.get("/api/tasks")).json() == []
        assert (await b.get("/api/api-keys")).json() == []
        assert (await b.get("/api/usage")).json()["totals"]["calls"] == 0
        assert (await b.get("/api/tasks", params={"thread_id": thread_id})).json() == []
        # ... and all of it is still there for alice.
        assert (await a.get(f"/api/threads/{thread_id}")).json()["title"] == "secret"
        assert (await a.get(f"/api/tasks/{task_id}")).json()["state"] == "done"
        assert (await a.get(f"/api/datasets/{dataset_id}")).status_code == 200
        assert (await a.get("/api/usage")).json()["totals"]["calls"] == 2


# -- users and API keys ------------------------------------------------------------------------


async def test_users_are_created_on_first_sight(app: AssistantApp) -> None:
    user = new_user()
    assert rows(app, "SELECT id FROM users WHERE id = :id", id=user) == []
    async with app.client(user) as client:
        me = (await client.get("/api/me")).json()
        assert me["id"] == user and me["auth"] == "token"
        assert (await client.get("/api/me")).json()["created_at"] == me["created_at"]
    assert rows(app, "SELECT id FROM users WHERE id = :id", id=user) == [(user,)]


async def test_api_keys_are_shown_once_stored_hashed_and_revocable(app: AssistantApp) -> None:
    user = new_user()
    async with app.client(user) as client:
        created = await client.post("/api/api-keys", json={"name": "laptop"})
        assert created.status_code == 201
        body = created.json()
        key = body["key"]
        assert key.startswith("ck_") and len(key) > 40 and body["prefix"] == key[:10]
        listed = (await client.get("/api/api-keys")).json()
        assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0]
        stored = rows(app, "SELECT key_hash FROM api_keys WHERE id = :id", id=body["id"])
        assert stored == [(hashlib.sha256(key.encode()).hexdigest(),)]
        assert key not in str(rows(app, "SELECT * FROM api_keys"))

    by_key = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=app.url, headers=by_key, timeout=30) as keyed:
        me = (await keyed.get("/api/me")).json()
        assert (me["id"], me["auth"]) == (user, "api_key")
        thread = await keyed.post("/api/threads", json={"title": "from a script"})
        assert thread.status_code == 201
        denied = await keyed.post("/api/api-keys", json={"name": "another"})
        assert denied.status_code == 403 and "sign-in token" in denied.json()["detail"]
        invoke = await keyed.post("/api/tools/echo/invoke", json={"arguments": {"payload": 5}})
        assert invoke.json()["output"]["payload"] == 5
    async with app.client(user) as client:
        listed = (await client.get("/api/api-keys")).json()
        assert listed[0]["last_used_at"] is not None
        assert (await client.delete(f"/api/api-keys/{body['id']}")).status_code == 204
        titles = [t["title"] for t in (await client.get("/api/threads")).json()]
        assert titles == ["from a script"]
    async with httpx.AsyncClient(base_url=app.url, headers=by_key, timeout=30) as keyed:
        revoked = await keyed.get("/api/me")
        assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
        forged = await keyed.get("/api/me", headers={"Authorization": "Bearer ck_" + "A" * 43})
        assert forged.status_code == 401
    assert (
        await httpx.AsyncClient(base_url=app.url).post("/api/api-keys", json={"name": "x"})
    ).status_code == 401
    async with app.client(user) as client:
        assert (await client.post("/api/api-keys", json={"name": ""})).status_code == 422


# -- rate limits -------------------------------------------------------------------------------


async def test_tool_invocations_past_the_limit_get_429_with_headers(app: AssistantApp) -> None:
    user, other = new_user(), new_user()
    async with app.client(user) as client:
        remaining = []
        for i in range(3):
            resp = await client.post("/api/tools/echo/invoke", json={"arguments": {"payload": i}})
            assert resp.status_code == 200
            assert resp.headers["X-RateLimit-Limit"] == "3"
            remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
            reset = int(resp.headers["X-RateLimit-Reset"])
            assert time.time() < reset <= time.time() + 61
        assert remaining == [2, 1, 0]
        refused = await client.post("/api/tools/echo/invoke", json={"arguments": {}})
        assert refused.status_code == 429
        assert "3 per 1 minute" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        state = (await client.get("/api/rate-limit")).json()
        assert state["enabled"] is True and state["strategy"] == "moving-window"
        assert state["groups"]["tools"]["remaining"] == 0
        assert state["groups"]["tools"]["amount"] == 3
        assert state["groups"]["chat"]["remaining"] == 2
    async with app.client(other) as client:  # per user
        resp = await client.post("/api/tools/echo/invoke", json={"arguments": {}})
        assert resp.status_code == 200 and resp.headers["X-RateLimit-Remaining"] == "2"


async def test_chat_turns_past_the_limit_get_429(app: AssistantApp, fake_llm: FakeOpenAI) -> None:
    fake_llm.respond_with(lambda req: Reply(text="fine"))
    async with app.client(new_user()) as client:
        thread_id = (await client.post("/api/threads", json={})).json()["id"]
        for left in (1, 0):
            headers: dict[str, str] = {}
            assert text_of(await chat(client, thread_id, "again", headers_out=headers)) == "fine"
            assert headers["x-ratelimit-limit"] == "2"
            assert headers["x-ratelimit-remaining"] == str(left)
        refused = await client.post(f"/api/threads/{thread_id}/messages", json={"content": "x"})
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        items = (await client.get(f"/api/threads/{thread_id}/messages")).json()["items"]
        assert len(items) == 4  # the refused message was not saved
    assert len(fake_llm.requests()) == 2


# -- tokens ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oidc_app(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AssistantApp, LocalIssuer]]:
    issuer = LocalIssuer()
    env = {
        "CORRAL_AUTH__MODE": "oidc",
        "CORRAL_AUTH__OIDC_ISSUER": issuer.issuer,
        "CORRAL_AUTH__OIDC_AUDIENCE": issuer.audience,
        "CORRAL_AUTH__OIDC_JWKS_URL": issuer.jwks_url,
        "CORRAL_AUTH__LEEWAY_S": "5",
    }
    url = new_sqlite_database(tmp_path_factory.mktemp("oidc-db"))
    try:
        with assistant_app(stack_env, url, "sqlite", **env) as live:
            yield live, issuer
    finally:
        issuer.close()


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("expired", "expired"),
        ("forged", "invalid"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("dev_token_in_oidc_mode", "signing key"),
    ],
)
async def test_bad_jwts_are_401(
    oidc_app: tuple[AssistantApp, LocalIssuer], case: str, expect: str
) -> None:
    app, issuer = oidc_app
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = {
        "expired": lambda: issuer.token("alice", exp=int(time.time()) - 60, iat=0),
        "forged": lambda: issuer.token("alice", key=other_key),
        "wrong_audience": lambda: issuer.token("alice", aud="someone-else"),
        "wrong_issuer": lambda: issuer.token("alice", iss="https://evil.test"),
        "dev_token_in_oidc_mode": lambda: app.headers("alice")["Authorization"].split()[1],
    }[case]()
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
        for path in ("/api/threads", "/api/me", "/api/usage", "/api/api-keys"):
            resp = await http.get(path, headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, (path, resp.text)
            assert expect in resp.json()["detail"].lower()
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert rows(app, "SELECT id FROM users WHERE id = 'alice'") == []  # no user made


async def test_oidc_user_is_created_with_profile_claims(
    oidc_app: tuple[AssistantApp, LocalIssuer],
) -> None:
    app, issuer = oidc_app
    token = issuer.token("auth0|42", email="ada@example.com", name="Ada")
    async with httpx.AsyncClient(
        base_url=app.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        me = (await http.get("/api/me")).json()
        assert (me["id"], me["email"], me["name"]) == ("auth0|42", "ada@example.com", "Ada")
        skewed = issuer.token("auth0|42", exp=int(time.time()) - 2)  # within the 5 s leeway
        ok = await http.get("/api/me", headers={"Authorization": f"Bearer {skewed}"})
        assert ok.status_code == 200
