"""The HTTP surface of the foundation over real HTTP: tools, tasks, SSE, auth, readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from httpx_sse import aconnect_sse

from corral.app.main import create_app
from corral.app.settings import AppSettings
from tests.conftest import LiveApp
from tests.support.jwks import LocalIssuer
from tests.support.procs import UvicornThread, env_vars, start_redis


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/healthz")).json() == {"status": "ok"}
    ready = await api.get("/api/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["redis"] == "ok"
    assert all(body["queues"][q] for q in ("python_q", "circuit_q", "llm_q"))


async def test_tools_are_listed_with_json_schemas(api: httpx.AsyncClient) -> None:
    tools = {t["name"]: t for t in (await api.get("/api/tools")).json()}
    assert {"echo", "fail"} <= set(tools)
    schema = tools["echo"]["parameters"]
    assert {"payload", "sleep_s", "steps", "queue"} <= set(schema["properties"])
    assert schema["$defs"]["Queue"]["enum"] == ["python_q", "circuit_q", "llm_q"]
    # Built once per tool, handed out as copies: a caller changing its copy changes nothing.
    from corral.app.tools.registry import TOOLS

    mine = TOOLS["echo"].parameters_schema()
    assert mine == schema
    mine["properties"].clear()
    assert TOOLS["echo"].parameters_schema() == schema


@pytest.mark.parametrize("queue", ["python_q", "circuit_q", "llm_q"])
async def test_invoke_echo_on_every_queue(api: httpx.AsyncClient, queue: str) -> None:
    resp = await api.post(
        "/api/tools/echo/invoke", json={"arguments": {"payload": queue, "queue": queue}}
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "done" and body["output"]["payload"] == queue
    task = (await api.get(f"/api/tasks/{body['task_id']}")).json()
    assert task["queue"] == queue and task["state"] == "done"
    assert [e["type"] for e in task["events"]] == ["queued", "started", "done"]


async def test_invoke_fail_returns_typed_error(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/tools/fail/invoke", json={"arguments": {"message": "nope"}})
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "error"
    assert body["error"] == {"type": "DeliberateFailure", "message": "nope"}


async def test_invoke_timeout_then_follow(api: httpx.AsyncClient) -> None:
    resp = await api.post(
        "/api/tools/echo/invoke",
        json={"arguments": {"sleep_s": 2, "steps": 2}, "timeout_s": 0.5},
    )
    body = resp.json()
    assert body["status"] == "timeout"
    assert body["task_id"] in body["error"]["message"]


async def _row(stack_env: dict[str, str], task_id: str) -> dict[str, object]:
    """A run's row straight from SQL (an API read would first sync it from the stream)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(stack_env["CORRAL_DATABASE__URL"])
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT state, started_at, finished_at, attempts, worker FROM task_runs"
                        " WHERE id = :id"
                    ),
                    {"id": task_id},
                )
            ).one()
    finally:
        await engine.dispose()
    return dict(row._mapping)


async def _row_when(
    stack_env: dict[str, str], task_id: str, state: str, timeout_s: float = 20
) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (row := await _row(stack_env, task_id))["state"] != state:
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.05)
    return row


async def test_invoke_records_its_own_run(
    api: httpx.AsyncClient, stack_env: dict[str, str]
) -> None:
    """The request that waited records the run's end with its start in one write (no tracker
    follows it); one whose caller got ``timeout`` is handed to the tracker and still ends
    recorded. Both read straight from SQL."""
    body = (await api.post("/api/tools/echo/invoke", json={"arguments": {"payload": 1}})).json()
    assert body["status"] == "done", body
    row = await _row_when(stack_env, body["task_id"], "done")
    assert row["started_at"] and row["finished_at"] and row["attempts"] == 1 and row["worker"]

    failed = await api.post("/api/tools/fail/invoke", json={"arguments": {"message": "x"}})
    row = await _row_when(stack_env, failed.json()["task_id"], "error")
    assert row["started_at"] and row["attempts"] == 1, row

    late = await api.post(
        "/api/tools/echo/invoke", json={"arguments": {"sleep_s": 1.0}, "timeout_s": 0.2}
    )
    assert late.json()["status"] == "timeout"
    row = await _row_when(stack_env, late.json()["task_id"], "done")
    assert row["started_at"] and row["attempts"] == 1 and row["worker"], row


async def test_bad_requests_get_clear_4xx(api: httpx.AsyncClient) -> None:
    unknown = await api.post("/api/tools/nope/invoke", json={})
    assert unknown.status_code == 404 and "echo" in unknown.json()["detail"]
    bad = await api.post("/api/tools/echo/invoke", json={"arguments": {"steps": 0}})
    assert bad.status_code == 422
    assert bad.json()["type"] == "/errors/invalid-arguments"
    assert bad.json()["errors"][0]["loc"] == ["steps"]
    extra = await api.post("/api/tools/echo/invoke", json={"arguments": {"stepz": 2}})
    assert extra.status_code == 422
    bad_queue = await api.post("/api/tools/echo/invoke", json={"arguments": {"queue": "gpu_q"}})
    assert bad_queue.status_code == 422
    too_long = await api.post("/api/tools/echo/invoke", json={"timeout_s": 10_000})
    assert too_long.status_code == 422 and "timeout_s" in too_long.json()["detail"]
    missing = await api.get("/api/tasks/does-not-exist")
    assert missing.status_code == 404
    bad_cursor = await api.get("/api/tasks/x/events", headers={"Last-Event-ID": "zzz"})
    # A malformed cursor is refused by the schema before any lookup: it reveals nothing.
    assert bad_cursor.status_code == 422 and bad_cursor.json()["errors"][0]["loc"] == [
        "header",
        "last-event-id",
    ]


async def test_auth_is_required(live_app: LiveApp) -> None:
    async with httpx.AsyncClient(base_url=live_app.url) as anon:
        resp = await anon.get("/api/tasks")
        assert resp.status_code == 401 and "bearer" in resp.json()["detail"].lower()
        resp = await anon.get("/api/tasks", headers={"Authorization": "Bearer not-a-jwt"})
        assert resp.status_code == 401


async def newest_task_since(api: httpx.AsyncClient, since: datetime, states: set[str]) -> str:
    for _ in range(200):
        tasks = (await api.get("/api/tasks", params={"limit": 1})).json()
        if (
            tasks
            and datetime.fromisoformat(tasks[0]["created_at"]) >= since
            and tasks[0]["state"] in states
        ):
            return str(tasks[0]["task_id"])
        await asyncio.sleep(0.05)
    raise AssertionError("the invoked task never showed up")


async def test_cancel_over_http_returns_cancelled_to_waiting_invoke(
    api: httpx.AsyncClient,
) -> None:
    since = datetime.now(UTC)
    invoke = asyncio.create_task(
        api.post(
            "/api/tools/echo/invoke",
            json={"arguments": {"sleep_s": 20, "steps": 20, "queue": "llm_q"}, "timeout_s": 30},
        )
    )
    task_id = await newest_task_since(api, since, {"running"})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await api.post(f"/api/tasks/{task_id}/cancel")
    assert resp.status_code == 200
    body = (await invoke).json()
    assert body["status"] == "cancelled" and body["task_id"] == task_id
    assert loop.time() - t0 < 1.0
    again = await api.post(f"/api/tasks/{task_id}/cancel")
    assert again.status_code == 409


async def test_task_list_newest_first_with_state_filter(api: httpx.AsyncClient) -> None:
    ids = []
    for i in range(3):
        body = (await api.post("/api/tools/echo/invoke", json={"arguments": {"payload": i}})).json()
        ids.append(body["task_id"])
    await api.post("/api/tools/fail/invoke", json={})
    listed = (await api.get("/api/tasks", params={"limit": 10})).json()
    listed_ids = [t["task_id"] for t in listed]
    assert listed_ids.index(ids[2]) < listed_ids.index(ids[1]) < listed_ids.index(ids[0])
    errors = (await api.get("/api/tasks", params={"state": "error"})).json()
    assert errors and all(t["state"] == "error" for t in errors)


async def test_sse_resume_with_last_event_id_misses_nothing_and_repeats_nothing(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    since = datetime.now(UTC)
    invoke = asyncio.create_task(
        api.post(
            "/api/tools/echo/invoke",
            json={"arguments": {"sleep_s": 1.5, "steps": 6, "queue": "circuit_q"}},
        )
    )
    task_id = await newest_task_since(api, since, {"queued", "running"})
    received: list[tuple[str, str]] = []
    async with (
        live_app.client() as client,
        aconnect_sse(client, "GET", f"/api/tasks/{task_id}/events") as source,
    ):
        async for sse in source.aiter_sse():
            received.append((sse.id, sse.event))
            if len(received) == 3:
                break  # drop the connection mid-task
    last_id = received[-1][0]
    async with (
        live_app.client() as client,
        aconnect_sse(
            client, "GET", f"/api/tasks/{task_id}/events", headers={"Last-Event-ID": last_id}
        ) as source,
    ):
        async for sse in source.aiter_sse():
            received.append((sse.id, sse.event))
    await invoke
    detail = (await api.get(f"/api/tasks/{task_id}")).json()
    assert [e["id"] for e in detail["events"]] == [eid for eid, _ in received]
    assert len({eid for eid, _ in received}) == len(received)
    assert received[-1][1] == "done"
    assert [e for _, e in received].count("progress") == 6


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    iss = LocalIssuer()
    yield iss
    iss.close()


@pytest.fixture(scope="module")
def oidc_app(
    stack_env: dict[str, str],
    workers: object,
    issuer: LocalIssuer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    env = {k: v for k, v in stack_env.items() if not k.startswith("CORRAL_AUTH")}
    ui = tmp_path_factory.mktemp("ui")
    (ui / "index.html").write_text("<!doctype html><title>corral-ui</title>")
    with env_vars(env):
        settings = AppSettings(
            auth={
                "mode": "oidc",
                "oidc_issuer": issuer.issuer,
                "oidc_audience": issuer.audience,
                "oidc_jwks_url": issuer.jwks_url,
                "oidc_client_id": "corral-web",
                "leeway_s": 5,
            },
            frontend_dir=ui,
        )
    with UvicornThread(create_app(settings)) as server:
        yield server.url


async def test_auth_config_is_public(live_app: LiveApp, oidc_app: str, issuer: LocalIssuer) -> None:
    """The UI learns at run time whether it can offer single sign-on, before anyone signs in."""
    async with httpx.AsyncClient(timeout=10) as anon:
        dev = await anon.get(f"{live_app.url}/api/auth/config")
        oidc = await anon.get(f"{oidc_app}/api/auth/config")
    assert dev.status_code == 200, dev.text
    assert dev.json() == {
        "mode": "dev",
        "oidc_issuer": None,
        "oidc_client_id": None,
        "oidc_scopes": "openid profile email",
    }
    assert oidc.status_code == 200, oidc.text
    assert oidc.json() == {
        "mode": "oidc",
        "oidc_issuer": issuer.issuer,
        "oidc_client_id": "corral-web",
        "oidc_scopes": "openid profile email",
    }


async def test_spa_deep_links_get_index_but_api_404s_stay(oidc_app: str) -> None:
    """The IdP redirects to ``/auth/callback``: a real path the built UI must answer."""
    async with httpx.AsyncClient(base_url=oidc_app, timeout=10) as anon:
        page = await anon.get("/auth/callback", params={"code": "c", "state": "s"})
        assert page.status_code == 200 and "corral-ui" in page.text
        assert "corral-ui" in (await anon.get("/")).text
        missing = await anon.get("/api/no-such-route")
        assert missing.status_code == 404 and missing.json()["type"] == "/errors/not-found"


async def test_oidc_tokens_and_ownership(oidc_app: str, issuer: LocalIssuer) -> None:
    alice = {"Authorization": f"Bearer {issuer.token('alice')}"}
    bob = {"Authorization": f"Bearer {issuer.token('bob')}"}
    async with httpx.AsyncClient(base_url=oidc_app, timeout=30) as http:
        body = (await http.post("/api/tools/echo/invoke", json={}, headers=alice)).json()
        task_id = body["task_id"]
        assert body["status"] == "done"
        assert (await http.get(f"/api/tasks/{task_id}", headers=alice)).status_code == 200
        for method, path in [
            ("GET", f"/api/tasks/{task_id}"),
            ("GET", f"/api/tasks/{task_id}/events"),
            ("POST", f"/api/tasks/{task_id}/cancel"),
        ]:
            resp = await http.request(method, path, headers=bob)
            assert resp.status_code == 404, (method, path)
        assert task_id not in [
            t["task_id"] for t in (await http.get("/api/tasks", headers=bob)).json()
        ]


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("expired", "expired"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("forged", "invalid"),
        ("no_exp", "invalid"),
    ],
)
async def test_bad_oidc_tokens_are_401(
    oidc_app: str, issuer: LocalIssuer, case: str, expect: str
) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = {
        "expired": lambda: issuer.token("alice", exp=1_000_000, iat=999_000),
        "wrong_audience": lambda: issuer.token("alice", aud="someone-else"),
        "wrong_issuer": lambda: issuer.token("alice", iss="https://evil.test"),
        "forged": lambda: issuer.token("alice", key=other_key),
        "no_exp": lambda: issuer.token("alice", exp=None),
    }[case]()
    async with httpx.AsyncClient(base_url=oidc_app) as http:
        resp = await http.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert expect in resp.json()["detail"].lower()


async def test_readiness_names_the_missing_part(stack_env: dict[str, str]) -> None:
    lonely = start_redis()  # a Redis nobody consumes from
    try:
        env = stack_env | {"CORRAL_REDIS__URL": lonely.url}
        with env_vars(env):
            settings = AppSettings(readiness_timeout_s=0.5)
        with UvicornThread(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                resp = await http.get("/api/readyz")
                assert resp.status_code == 503
                assert "no worker consuming python_q" in resp.json()["problems"]
                lonely.stop()
                await asyncio.sleep(settings.readiness_cache_s + 0.1)
                resp = await http.get("/api/readyz")
                assert resp.status_code == 503
                assert resp.json()["redis"] == "unreachable"
    finally:
        lonely.stop()
