"""The HTTP API contract: one problem+json error model, bounded inputs, a documented OpenAPI.

Against the real app process of the session stack (real Redis, workers, SQLite), plus a second
app built with no language model configured.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.conftest import LiveApp
from tests.support.procs import UvicornThread, env_vars, free_port

PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["type"] == f"/errors/{kind}", body
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


async def test_validation_errors_are_problems_with_errors(api: httpx.AsyncClient) -> None:
    thread = (await api.post("/api/threads", json={})).json()
    huge = await api.get(
        f"/api/threads/{thread['id']}/messages", params={"before": "45007182786388136296448"}
    )
    body = assert_problem(huge, 422, "validation-error")
    assert body["errors"][0]["loc"] == ["query", "before"]
    assert "before" in body["detail"]

    too_long = await api.post("/api/tools/echo/invoke", json={"timeout_s": 10_000})
    body = assert_problem(too_long, 422, "validation-error")
    assert body["errors"][0]["loc"] == ["body", "timeout_s"]

    bad_id = await api.get("/api/tasks/" + "x" * 300)
    assert_problem(bad_id, 422, "validation-error")
    bad_cursor = await api.get("/api/tasks/abc/events", headers={"Last-Event-ID": "'; DROP"})
    assert_problem(bad_cursor, 422, "validation-error")
    coerced = await api.post("/api/llm/generate", json={"prompt": "hi", "json_mode": 1})
    assert_problem(coerced, 422, "validation-error")
    not_json = await api.post(
        "/api/threads", content=b"\xff\xfe", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code in (400, 422)
    assert not_json.headers["content-type"].startswith(PROBLEM)


async def test_auth_not_found_and_conflict_are_problems(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=live_app.url) as anon:
        body = assert_problem(await anon.get("/api/tools"), 401, "unauthorized")
        assert "bearer" in body["detail"].lower()
    assert_problem(await api.get("/api/tasks/no-such-task"), 404, "not-found")
    assert_problem(await api.post("/api/tools/nope/invoke", json={}), 404, "unknown-tool")
    done = await api.post("/api/tools/echo/invoke", json={"arguments": {"payload": 1}})
    task_id = done.json()["task_id"]
    assert_problem(await api.post(f"/api/tasks/{task_id}/cancel"), 409, "conflict")


def _raw_post(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[bytes, float]:
    """Send a request's head (and ``body``, maybe far less than declared); return the reply."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply, time.monotonic() - started


def test_a_60mb_body_is_refused_before_it_is_read(live_app: LiveApp) -> None:
    port = int(live_app.url.rsplit(":", 1)[1])
    declared = 60 * 1024 * 1024
    # Only the head is sent: a server that read the body first would wait for 60 MB.
    reply, took = _raw_post(
        port,
        "/api/tools/echo/invoke",
        {
            "Authorization": f"Bearer {live_app.token}",
            "Content-Type": "application/json",
            "Content-Length": str(declared),
        },
        b'{"arguments": {"payload": "',
    )
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 413 " in status_line, reply[:300]
    assert took < 5
    assert b"application/problem+json" in rest
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["type"] == "/errors/payload-too-large"
    assert body["limit_bytes"] == 1024 * 1024 and "1048576 bytes" in body["detail"]


def test_a_chunked_body_over_the_cap_is_refused(live_app: LiveApp) -> None:
    port = int(live_app.url.rsplit(":", 1)[1])
    chunk = b"x" * 65536
    payload = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    reply, _ = _raw_post(
        port,
        "/api/threads",
        {
            "Authorization": f"Bearer {live_app.token}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
        payload,
    )
    assert b" 413 " in reply.partition(b"\r\n")[0], reply[:300]
    assert b"/errors/payload-too-large" in reply


async def test_a_body_under_the_cap_still_works(api: httpx.AsyncClient) -> None:
    payload = "y" * 500_000
    resp = await api.post("/api/tools/echo/invoke", json={"arguments": {"payload": payload}})
    assert resp.status_code == 200 and resp.json()["output"]["payload"] == payload


async def test_rate_limited_is_a_problem_with_retry_after(
    stack_env: dict[str, str], workers: object
) -> None:
    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings

    env = {**stack_env, "CORRAL_RATE_LIMITS__TOOLS": "2/minute"}
    with env_vars(env):
        settings = AppSettings()  # type: ignore[call-arg]
    with UvicornThread(create_app(settings), port=free_port()) as server:
        headers = {"Authorization": f"Bearer {issue_dev_token(settings.auth)}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:
            # A fresh user id per run is not possible with the dev token: use up what is left.
            for _ in range(3):
                resp = await c.post("/api/llm/generate", json={"prompt": "hi", "timeout_s": 20})
                if resp.status_code == 429:
                    break
            body = assert_problem(resp, 429, "rate-limited")
            assert body["retry_after_s"] > 0 and int(resp.headers["Retry-After"]) >= 1


@pytest.fixture(scope="module")
def no_model_app(stack_env: dict[str, str], workers: object) -> Iterator[tuple[str, str]]:
    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings

    env = {k: v for k, v in stack_env.items() if not k.startswith("CORRAL_LLM__")}
    env["CORRAL_LLM__MODELS"] = "[]"
    with env_vars(env):
        settings = AppSettings()  # type: ignore[call-arg]
    assert settings.llm.names() == []
    with UvicornThread(create_app(settings), port=free_port()) as server:
        yield server.url, issue_dev_token(settings.auth)


async def test_no_model_configured_is_one_problem_everywhere(
    no_model_app: tuple[str, str],
) -> None:
    url, token = no_model_app
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
        thread = (await c.post("/api/threads", json={})).json()
        answers = await asyncio.gather(
            c.post("/api/llm/generate", json={"prompt": "hi"}),
            c.post("/api/pipelines/runs", json={"steps": [{"name": "a", "prompt_template": "x"}]}),
            c.post(f"/api/threads/{thread['id']}/messages", json={"content": "hello"}),
            c.post("/api/tools/llm_generate/invoke", json={"arguments": {"prompt": "hi"}}),
        )
    for resp in answers:
        body = assert_problem(resp, 503, "no-model-configured")
        assert "retry_after_s" not in body and "Retry-After" not in resp.headers
        assert "CORRAL_LLM__MODELS" in body["detail"]


async def test_openapi_documents_every_status_as_problem_json(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    validate(doc)
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    assert "Problem" in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary") and op.get("description"), f"{where}: summary/description"
            responses = op["responses"]
            errors = {int(s) for s in responses if int(s) >= 400}
            if path not in ("/api/healthz", "/api/auth/config"):
                assert errors, where
            for status in errors:
                content = responses[str(status)]["content"]
                assert content == {PROBLEM: {"schema": problem_ref}}, (where, status)
            if any(p["in"] == "path" for p in op.get("parameters", [])):
                assert 404 in errors and 422 in errors, where
            if "requestBody" in op and "application/json" in op["requestBody"]["content"]:
                assert {400, 413, 422} <= errors, where
            for param in op.get("parameters", []):
                schema = param["schema"]
                variants = schema.get("anyOf", [schema])
                for v in variants:
                    if v.get("type") == "integer":
                        assert "maximum" in v, f"{where}: unbounded integer {param['name']}"
                    if v.get("type") == "string" and "enum" not in v and "format" not in v:
                        assert "maxLength" in v, f"{where}: unbounded string {param['name']}"


def _param_schema(doc: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    params = doc["paths"][path][method]["parameters"]
    schema: dict[str, Any] = next(p["schema"] for p in params if p["name"] == name)
    return schema


async def test_documented_key_and_cursor_patterns_are_what_the_api_accepts(
    api: httpx.AsyncClient,
) -> None:
    """A generated client validates against these patterns: what they allow must get past the
    API's own checks (a key it handed out, an event id it sent), and what they refuse must be
    refused by the API too, with a message that says what a valid value looks like."""
    doc = (await api.get("/openapi.json")).json()
    key_pattern = _param_schema(doc, "/api/storage/{key}", "get", "key")["pattern"]
    assert key_pattern == _param_schema(doc, "/api/storage/{key}", "delete", "key")["pattern"]
    uploaded = await api.post("/api/storage", files={"file": ("a.txt", b"x", "text/plain")})
    key = uploaded.json()["key"]
    assert re.search(key_pattern, key), (key_pattern, key)
    assert (await api.get(f"/api/storage/{key}")).status_code == 307
    for bad in ("a/B/c", "a/b/-c", "-a/b/c"):
        assert not re.search(key_pattern, bad), bad
        body = assert_problem(await api.get(f"/api/storage/{bad}"), 422, "validation-error")
        assert "expected '<owner>/<kind>/<name>'" in body["detail"], body

    resp = await api.post("/api/tools/echo/invoke", json={"arguments": {"payload": 1}})
    task_id = resp.json()["task_id"]
    ids = []
    async with api.stream("GET", f"/api/tasks/{task_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("id:"):
                ids.append(line.removeprefix("id:").strip())
    assert ids
    events = f"/api/tasks/{task_id}/events"
    for where in ("header", "query"):
        documented = (
            _param_schema(doc, "/api/tasks/{task_id}/events", "get", "last-event-id")
            if where == "header"
            else _param_schema(doc, "/api/tasks/{task_id}/events", "get", "after")
        )
        assert documented["type"] == "string"  # optional, never null: no `Last-Event-ID: null`
        for event_id in ids:
            assert re.search(documented["pattern"], event_id), (where, event_id)
        # Unicode digits are digits to Python's and pydantic's \\d, not to Redis.
        for bad in ("99999999999999-0", "1-99999999999999999999", "1-", "\u0be7-0", "1-\u0968"):
            assert not re.search(documented["pattern"], bad), bad
            kw: dict[str, Any] = (
                {"headers": {"Last-Event-ID": bad.encode()}}
                if where == "header"
                else {"params": {"after": bad}}
            )
            assert_problem(await api.get(events, **kw), 422, "validation-error")
