"""A scripted OpenAI-protocol server for tests: real HTTP on 127.0.0.1, real SSE streaming.

Tests script what each model answers and read back every request the server received::

    with FakeOpenAI(api_key="k") as fake:          # or the fixture `fake_llm` (reset per test)
        fake.script("fake-primary", Reply.fail(500), Reply(text="hello"))
        fake.script("fake-backup", Reply.json({"a": 1}), Reply(tool_calls=[ToolCall("f", {})]))
        fake.respond_with(lambda req: Reply(text=req.prompt.upper()))   # when a queue is empty
        ...
        assert [r.model for r in fake.requests()] == ["fake-primary", "fake-primary"]

Endpoints: ``POST /v1/chat/completions`` (``stream`` true or false; with
``stream_options.include_usage`` a final usage chunk is sent; usage includes
``prompt_tokens_details.cached_tokens``) and ``GET /v1/models``. Replies are queued per request
``model`` field and consumed in order; when a model's queue is empty the ``respond_with``
function answers, and without one the server answers 418 "nothing scripted" (a 4xx, so clients
fail fast instead of retrying). With ``api_key`` set, any other bearer key gets 401.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.procs import UvicornThread, wait_until


@dataclass
class ToolCall:
    """A function call the model "decides" to make; ``arguments`` is sent as a JSON string."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")

    def as_openai(self, index: int) -> dict[str, Any]:
        args = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
        return {
            "index": index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": args},
        }


@dataclass
class Reply:
    """One scripted answer (or failure) to one request."""

    text: str = ""
    status: int = 200
    error: str | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    chunk_size: int = 4
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    cut_after_chunks: int | None = None
    model: str | None = None
    hold: threading.Event | None = None
    """Answer only once this is set (at most 30 s): lets a test decide when a call finishes."""

    @classmethod
    def json(cls, value: Any, **kwargs: Any) -> Reply:
        return cls(text=json.dumps(value), **kwargs)

    @classmethod
    def fail(cls, status: int, message: str | None = None, **kwargs: Any) -> Reply:
        return cls(status=status, error=message or f"scripted failure {status}", **kwargs)


@dataclass
class RecordedRequest:
    """What the server received, with wall-clock times (``time.time()``) for overlap checks."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float
    finished_at: float | None = None
    status: int | None = None
    first_content_at: float | None = None
    """``time.perf_counter()`` when the first text chunk of a streamed answer was sent."""

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body.get("messages") or []
        return messages

    @property
    def prompt(self) -> str:
        """The content of the last user message."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content") or "")
        return ""


Responder = Callable[[RecordedRequest], Reply]


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeOpenAI:
    def __init__(self, *, api_key: str | None = None, port: int | None = None) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {}
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        self._server = UvicornThread(app, port=port)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self._server.url}/v1"

    def start(self) -> FakeOpenAI:
        self._server.__enter__()
        return self

    def stop(self) -> None:
        self._server.__exit__(None, None, None)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------------------------

    def script(self, model: str, *replies: Reply) -> None:
        """Queue replies for requests naming ``model`` (appended after any still queued)."""
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(replies)

    def respond_with(self, responder: Responder | None) -> None:
        """Answer requests whose model has no queued reply (e.g. derived from the prompt)."""
        with self._lock:
            self._responder = responder

    def reset(self) -> None:
        """Forget scripts, the responder and recorded requests (between tests)."""
        with self._lock:
            self._scripts.clear()
            self._responder = None
            self._requests.clear()

    def pending(self, model: str | None = None) -> int:
        """Scripted replies not consumed yet."""
        with self._lock:
            queues = [self._scripts.get(model, deque())] if model else self._scripts.values()
            return sum(len(q) for q in queues)

    def requests(self, model: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if model is None or r.model == model]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        wait_until(lambda: len(self.requests()) >= count, timeout, f"{count} provider requests")
        return self.requests()

    # -- HTTP ----------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        with self._lock:
            names = sorted(self._scripts)
        return JSONResponse(
            {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}
        )

    def _next_reply(self, recorded: RecordedRequest) -> Reply:
        with self._lock:
            queue = self._scripts.get(recorded.model)
            if queue:
                return queue.popleft()
            responder = self._responder
        if responder is not None:
            return responder(recorded)
        return Reply.fail(418, f"fake_openai: nothing scripted for model {recorded.model!r}")

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        recorded = RecordedRequest(
            model=str(body.get("model", "")),
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            received_at=time.time(),
        )
        with self._lock:
            self._requests.append(recorded)
        if self.api_key is not None and recorded.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            return self._finish(recorded, self._error(401, "invalid api key", {}))
        reply = self._next_reply(recorded)
        if reply.hold is not None:
            await asyncio.to_thread(reply.hold.wait, 30)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status >= 400:
            return self._finish(recorded, self._error(reply.status, reply.error, reply.headers))
        if recorded.stream:
            return StreamingResponse(
                self._sse(recorded, reply),
                media_type="text/event-stream",
                headers=reply.headers,
            )
        return self._finish(
            recorded, JSONResponse(self._completion(recorded, reply), headers=reply.headers)
        )

    def _finish(self, recorded: RecordedRequest, response: Response) -> Response:
        recorded.finished_at = time.time()
        recorded.status = response.status_code
        return response

    @staticmethod
    def _error(status: int, message: str | None, headers: dict[str, str]) -> Response:
        return JSONResponse(
            {"error": {"message": message or "error", "type": "fake_error", "code": status}},
            status_code=status,
            headers=headers,
        )

    def _usage(self, recorded: RecordedRequest, reply: Reply) -> dict[str, Any]:
        prompt_text = "".join(str(m.get("content") or "") for m in recorded.messages)
        prompt = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else _estimate_tokens(prompt_text)
        )
        completion = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else _estimate_tokens(reply.text)
        )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        }

    def _head(self, recorded: RecordedRequest, reply: Reply, obj: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": obj,
            "created": int(time.time()),
            "model": reply.model or recorded.model,
        }

    def _finish_reason(self, reply: Reply) -> str:
        return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")

    def _completion(self, recorded: RecordedRequest, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {k: v for k, v in c.as_openai(i).items() if k != "index"}
                for i, c in enumerate(reply.tool_calls)
            ]
        return {
            **self._head(recorded, reply, "chat.completion"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": self._finish_reason(reply)}
            ],
            "usage": self._usage(recorded, reply),
        }

    async def _sse(self, recorded: RecordedRequest, reply: Reply) -> AsyncIterator[bytes]:
        def event(payload: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return event(
                {
                    **self._head(recorded, reply, "chat.completion.chunk"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        try:
            yield chunk({"role": "assistant", "content": ""})
            size = max(1, reply.chunk_size)
            pieces = [reply.text[i : i + size] for i in range(0, len(reply.text), size)]
            for sent, piece in enumerate(pieces):
                if reply.cut_after_chunks is not None and sent >= reply.cut_after_chunks:
                    raise ConnectionAbortedError("fake_openai: scripted cut mid-stream")
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
                if recorded.first_content_at is None:
                    recorded.first_content_at = time.perf_counter()
                yield chunk({"content": piece})
            for index, call in enumerate(reply.tool_calls):
                yield chunk({"tool_calls": [call.as_openai(index)]})
            yield chunk({}, self._finish_reason(reply))
            options = recorded.body.get("stream_options") or {}
            if options.get("include_usage"):
                yield event(
                    {
                        **self._head(recorded, reply, "chat.completion.chunk"),
                        "choices": [],
                        "usage": self._usage(recorded, reply),
                    }
                )
            yield b"data: [DONE]\n\n"
            recorded.status = 200
        finally:
            recorded.finished_at = time.time()
            if recorded.status is None:
                recorded.status = 599  # the stream was cut
