"""The scripted provider speaks the protocol the official client expects (it backs many tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import openai
import pytest
from openai import Stream
from openai.types.chat import ChatCompletionChunk

from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="k-123") as server:
        yield server


def client(fake: FakeOpenAI, key: str = "k-123") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=fake.base_url, max_retries=0, timeout=5)


def test_tool_calls_plain_and_streamed(fake: FakeOpenAI) -> None:
    call = ToolCall("run_python", {"code": "print(1)"}, id="call_1")
    fake.script("m", Reply(tool_calls=[call]), Reply(text="", tool_calls=[call]))
    c = client(fake)
    msg = [{"role": "user", "content": "go"}]
    plain = c.chat.completions.create(model="m", messages=msg)  # type: ignore[arg-type]
    (got,) = plain.choices[0].message.tool_calls or []
    assert plain.choices[0].finish_reason == "tool_calls"
    assert got.id == "call_1" and got.function.name == "run_python"  # type: ignore[union-attr]
    assert json.loads(got.function.arguments) == {"code": "print(1)"}  # type: ignore[union-attr]

    stream = c.chat.completions.create(model="m", messages=msg, stream=True)  # type: ignore[arg-type]
    calls = [
        tc
        for chunk in cast(Stream[ChatCompletionChunk], stream)
        for ch in chunk.choices
        for tc in ch.delta.tool_calls or []
    ]
    assert [(tc.id, tc.function.name) for tc in calls] == [("call_1", "run_python")]  # type: ignore[union-attr]


def test_usage_errors_auth_and_recording(fake: FakeOpenAI) -> None:
    fake.script("m", Reply(text="hi", prompt_tokens=7, completion_tokens=2, cached_tokens=5),
                Reply.fail(429, "slow down", headers={"retry-after": "1"}))  # fmt: skip
    c = client(fake)
    out = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert out.usage is not None and out.usage.prompt_tokens == 7
    assert out.usage.prompt_tokens_details.cached_tokens == 5  # type: ignore[union-attr]
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.APIStatusError) as unscripted:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert unscripted.value.status_code == 418 and "nothing scripted" in str(unscripted.value)
    with pytest.raises(openai.AuthenticationError):
        client(fake, key="wrong").chat.completions.create(model="m", messages=[])
    assert [r.status for r in fake.requests()] == [200, 429, 418, 401]
    assert fake.requests()[0].prompt == "x"
    fake.reset()
    assert fake.requests() == [] and fake.pending() == 0
