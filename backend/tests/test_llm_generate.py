"""``llm.generate`` end to end: HTTP -> app -> Redis -> llm_q worker -> scripted OpenAI server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.llm_env import wait_worker_idle
from tests.support.procs import RedisServer, Worker

PROMPT = "Say hello"


@pytest.fixture(autouse=True)
def _idle_llm_worker(workers: dict[str, Worker], redis_server: RedisServer) -> None:
    wait_worker_idle(redis_server.url + "/0", workers["llm_q"])


async def generate(api: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("prompt", PROMPT)
    body.setdefault("timeout_s", 30)
    return await api.post("/api/llm/generate", json=body)


async def task_events(api: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/api/tasks/{task_id}")
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


def deltas(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(e["data"]["data"]) for e in events if e["data"].get("data")]


async def test_fallback_after_primary_returns_500s(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-primary", *[Reply.fail(500, "overloaded")] * 3)
    fake_llm.script("fake-backup", Reply(text="hello from backup"))

    resp = await generate(api, model="primary", fallback_models=["backup"])

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["response"] == "hello from backup"
    assert body["model"] == "backup" and body["provider_model"] == "fake-backup"
    assert body["attempts"] == 4  # three tries of the primary, one of the backup
    assert body["cache_hit"] is False
    assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 0
    assert [r.model for r in fake_llm.requests()] == ["fake-primary"] * 3 + ["fake-backup"]
    assert fake_llm.pending() == 0


async def test_connection_refused_is_transient_and_falls_back(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-backup", Reply(text="up"))
    resp = await generate(api, model="offline", fallback_models=["backup"])
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "backup"
    assert resp.json()["attempts"] == 4


async def test_rate_limit_retried_on_same_model(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script(
        "fake-primary",
        Reply.fail(429, "slow down", headers={"retry-after": "0.05"}),
        Reply(text="ok"),
    )
    resp = await generate(api, model="primary", fallback_models=["backup"])
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "primary" and resp.json()["attempts"] == 2
    assert fake_llm.requests("fake-backup") == []


async def test_no_retry_on_400(api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.script("fake-primary", Reply.fail(400, "max_tokens is too large for this model"))
    fake_llm.script("fake-backup", Reply(text="must not be used"))

    resp = await generate(api, model="primary", fallback_models=["backup"])

    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert problem["type"] == "/errors/provider-rejected"
    assert problem["error_type"] == "ProviderRejected"
    assert "max_tokens is too large" in problem["detail"] and "primary" in problem["detail"]
    assert problem["task_id"]
    assert len(fake_llm.requests()) == 1
    assert fake_llm.pending("fake-backup") == 1


async def test_unusable_model_moves_to_fallback(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-primary", Reply.fail(404, "model not found"))
    fake_llm.script("fake-backup", Reply(text="fine"))
    resp = await generate(api, model="primary", fallback_models=["backup"])
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "backup" and resp.json()["attempts"] == 2


async def test_every_model_down_is_503_naming_each(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-primary", *[Reply.fail(503, "primary down")] * 3)
    fake_llm.script("fake-backup", *[Reply.fail(502, "backup down")] * 3)
    resp = await generate(api, model="primary", fallback_models=["backup"])
    assert resp.status_code == 503, resp.text
    problem = resp.json()
    assert problem["type"] == "/errors/provider-unavailable" and problem["retry_after_s"] > 0
    assert "primary down" in problem["detail"] and "backup down" in problem["detail"]
    assert len(fake_llm.requests()) == 6


async def test_json_repaired_on_second_attempt(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    broken = 'Sure! {"city": "Paris", "population": 2100000,'
    fake_llm.script(
        "fake-primary", Reply(text=broken), Reply.json({"city": "Paris", "population": 2100000})
    )

    resp = await generate(api, model="primary", json_mode=True, max_patching_attempts=2)

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["parsed"] == {"city": "Paris", "population": 2100000}
    assert body["patching_attempts"] == 1 and body["attempts"] == 2
    first, second = fake_llm.requests()
    assert first.body["response_format"] == {"type": "json_object"}
    assert second.messages[-2] == {"role": "assistant", "content": broken}
    assert (
        second.messages[-1]["role"] == "user" and "not valid JSON" in second.messages[-1]["content"]
    )
    # The stream told readers to drop the broken text before the repaired one arrived.
    events = deltas(await task_events(api, body["task_id"]))
    reset_at = next(i for i, d in enumerate(events) if d.get("reset"))
    assert "".join(d.get("delta", "") for d in events[reset_at:]) == body["response"]


async def test_json_never_valid_fails_after_patching_attempts(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-primary", *[Reply(text="not json at all")] * 2)
    resp = await generate(api, model="primary", json_mode=True, max_patching_attempts=1)
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["type"] == "/errors/invalid-json" and "1 repair attempt" in problem["detail"]
    assert len(fake_llm.requests()) == 2


async def test_code_fenced_json_needs_no_repair(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-primary", Reply(text='```json\n{"ok": true}\n```'))
    resp = await generate(api, json_mode=True)
    assert resp.status_code == 200, resp.text
    assert resp.json()["parsed"] == {"ok": True} and resp.json()["patching_attempts"] == 0


async def test_cache_hit_on_second_identical_call_without_provider_request(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI, live_app: Any
) -> None:
    fake_llm.script("fake-primary", Reply(text="cached answer", cached_tokens=3))
    prompt = f"cache me {time.time_ns()}"

    first = await generate(api, prompt=prompt, options={"temperature": 0})
    second = await generate(api, prompt=prompt, options={"temperature": 0})

    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["cache_hit"] is False and first.json()["usage"]["cached_tokens"] == 3
    assert second.json()["cache_hit"] is True
    assert second.json()["response"] == "cached answer" and second.json()["attempts"] == 0
    assert second.json()["usage"]["total_tokens"] == 0
    assert len(fake_llm.requests()) == 1  # the second call never reached the provider


async def test_cache_rules(api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    """Off by default unless temperature is 0 or a seed is set; `cache` overrides both ways."""
    fake_llm.respond_with(lambda req: Reply(text=f"answer {time.time_ns()}"))
    prompt = f"rules {time.time_ns()}"
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"options": {"temperature": 0.7}}, False),
        ({"options": {"temperature": 0.7, "seed": 7}}, True),
        ({"options": {"temperature": 0}, "cache": False}, False),
        ({"options": {"temperature": 0.9}, "cache": True}, True),
    ]
    for extra, cached in cases:
        before = len(fake_llm.requests())
        a = await generate(api, prompt=prompt, **extra)
        b = await generate(api, prompt=prompt, **extra)
        assert a.status_code == 200 and b.status_code == 200
        assert b.json()["cache_hit"] is cached, extra
        assert len(fake_llm.requests()) - before == (1 if cached else 2), extra
        assert (a.json()["response"] == b.json()["response"]) is cached


async def test_streaming_progress_arrives_before_done(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 3
    fake_llm.script("fake-primary", Reply(text=text, chunk_size=5, chunk_delay_s=0.03))
    known = {t["task_id"] for t in (await api.get("/api/tasks", params={"limit": 200})).json()}
    call = asyncio.create_task(generate(api, prompt=f"stream {time.time()}"))

    task_id = None
    deadline = time.monotonic() + 10
    while task_id is None and time.monotonic() < deadline:
        listed = (await api.get("/api/tasks", params={"limit": 5})).json()
        new = [t["task_id"] for t in listed if t["task_id"] not in known]
        task_id = new[0] if new else None
        await asyncio.sleep(0.02)
    assert task_id, "the generate task never showed up in /api/tasks"

    seen: list[tuple[str, dict[str, Any], float]] = []
    async with api.stream("GET", f"/api/tasks/{task_id}/events", timeout=20) as resp:
        assert resp.status_code == 200
        event_type = None
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event_type = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event_type:
                seen.append((event_type, json.loads(line.split(":", 1)[1]), time.time()))
                if event_type in {"done", "error", "cancelled"}:
                    break
    result = await call
    assert result.status_code == 200, result.text

    types = [t for t, _, _ in seen]
    assert types[-1] == "done"
    chunks = [json.loads(d["data"]) for t, d, _ in seen if t == "progress" and d.get("data")]
    assert len(chunks) >= 3, "tokens should arrive in several batches"
    assert "".join(c["delta"] for c in chunks) == text
    first_delta_at = next(at for t, d, at in seen if t == "progress" and d.get("data"))
    (request,) = fake_llm.requests()
    assert request.stream and request.body["stream_options"] == {"include_usage": True}
    assert request.finished_at is not None and first_delta_at < request.finished_at
    # Batched: far fewer events than provider chunks.
    assert len(chunks) < len(text) / 5


async def test_stream_cut_mid_way_is_retried_with_reset(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script(
        "fake-primary",
        Reply(text="partial text that will be cut " * 4, chunk_size=30, cut_after_chunks=2),
        Reply(text="complete answer"),
    )
    resp = await generate(api)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["response"] == "complete answer" and body["attempts"] == 2
    events = deltas(await task_events(api, body["task_id"]))
    assert any(d.get("reset") for d in events)
    reset_at = max(i for i, d in enumerate(events) if d.get("reset"))
    assert "".join(d.get("delta", "") for d in events[reset_at:]) == "complete answer"


async def test_messages_system_prompt_and_options_reach_provider(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-third", Reply(text="ok"))
    resp = await generate(
        api,
        prompt=None,
        model="third",
        system_prompt="Be brief.",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        options={"temperature": 0.3, "max_tokens": 50, "stop": ["\n"]},
        stream=False,
    )
    assert resp.status_code == 200, resp.text
    (request,) = fake_llm.requests()
    assert request.messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in request.messages[1:]] == ["hi", "hello", "again"]
    assert request.body["temperature"] == 0.3 and request.body["max_tokens"] == 50
    assert request.body["stop"] == ["\n"] and not request.stream


async def test_validation_errors_are_422_saying_what_to_fix(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    both = await generate(api, messages=[{"role": "user", "content": "x"}])
    assert both.status_code == 422 and "exactly one of `prompt` or `messages`" in both.text
    unknown = await generate(api, model="gpt-nonexistent", fallback_models=["backup", "nope"])
    assert unknown.status_code == 422
    assert (
        "gpt-nonexistent" in unknown.text and "nope" in unknown.text and "primary" in unknown.text
    )
    hot = await generate(api, options={"temperature": 5})
    assert hot.status_code == 422 and "temperature" in hot.text
    extra = await generate(api, options={"temprature": 0})
    assert extra.status_code == 422 and "temprature" in extra.text
    long_wait = await generate(api, timeout_s=10_000)
    assert long_wait.status_code == 422 and "timeout_s" in long_wait.text
    assert fake_llm.requests() == []


async def test_tool_llm_generate(api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.script("fake-primary", Reply(text="tool answer"))
    tools = (await api.get("/api/tools")).json()
    assert "llm_generate" in {t["name"] for t in tools}
    resp = await api.post(
        "/api/tools/llm_generate/invoke", json={"arguments": {"prompt": "hi"}, "timeout_s": 20}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "done"
    assert resp.json()["output"]["response"] == "tool answer"
    bad = await api.post(
        "/api/tools/llm_generate/invoke", json={"arguments": {"prompt": "hi", "model": "zzz"}}
    )
    assert bad.status_code == 422 and "zzz" in bad.text
