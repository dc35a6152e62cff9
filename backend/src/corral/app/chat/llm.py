"""The agent's own model calls: official ``openai`` async client, streamed, with tool calls.

One ``AsyncOpenAI`` per configured model, reused for the process. (The workers have their own
copy of the option splitting in ``corral.tasks.llm.clients``; the packages never import each
other.)
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionChunk

from corral.config import LLMSettings, ModelConfig
from corral.task_schemas import TokenUsage

_CREATE_PARAMS: frozenset[str] = frozenset(
    p
    for p in inspect.signature(openai.resources.chat.AsyncCompletions.create).parameters
    if p != "self"
)


def split_options(options: dict[str, Any]) -> dict[str, Any]:
    """Known options as keyword arguments; provider-specific ones (``top_k``...) in extra_body."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = dict(options.get("extra_body") or {})
    for key, value in options.items():
        if key == "extra_body":
            continue
        if key in _CREATE_PARAMS:
            kwargs[key] = value
        else:
            extra[key] = value
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


@dataclass
class ToolCallRequest:
    """A function call assembled from streamed fragments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class Completion:
    text: str = ""
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    usage: TokenUsage | None = None
    finish_reason: str | None = None
    provider_model: str | None = None


@dataclass
class TextDelta:
    text: str


class ModelError(RuntimeError):
    """The provider refused or failed; the message is fit for the user."""


class AgentModels:
    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    def config(self, name: str | None) -> ModelConfig | None:
        name = name or self._settings.default_name
        return self._settings.get(name) if name else None

    def client(self, config: ModelConfig) -> openai.AsyncOpenAI:
        client = self._clients.get(config.name)
        if client is None:
            client = openai.AsyncOpenAI(
                api_key=config.api_key.get_secret_value(),
                base_url=config.base_url,
                timeout=config.timeout_s,
                max_retries=max(0, self._settings.retry_attempts - 1),
            )
            self._clients[config.name] = client
        return client

    async def stream(
        self,
        config: ModelConfig,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        tool_choice: str | None = None,
    ) -> AsyncIterator[TextDelta | Completion]:
        """Yield text as it arrives, then one ``Completion`` with the calls and usage."""
        kwargs = split_options(dict(config.options))
        if tools:
            kwargs["tools"] = tools
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice
        if config.stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        result = Completion()
        calls: dict[int, ToolCallRequest] = {}
        try:
            stream: openai.AsyncStream[ChatCompletionChunk] = await self.client(
                config
            ).chat.completions.create(
                model=config.model, messages=cast(Any, messages), stream=True, **kwargs
            )
            async for chunk in stream:
                result.provider_model = chunk.model or result.provider_model
                if chunk.usage is not None:
                    details = chunk.usage.prompt_tokens_details
                    result.usage = TokenUsage(
                        prompt_tokens=chunk.usage.prompt_tokens or 0,
                        completion_tokens=chunk.usage.completion_tokens or 0,
                        cached_tokens=(details.cached_tokens or 0) if details else 0,
                        total_tokens=chunk.usage.total_tokens or 0,
                    )
                for choice in chunk.choices:
                    delta = choice.delta
                    if choice.finish_reason:
                        result.finish_reason = choice.finish_reason
                    if delta is None:
                        continue
                    if delta.content:
                        result.text += delta.content
                        yield TextDelta(delta.content)
                    for part in delta.tool_calls or []:
                        call = calls.setdefault(part.index, ToolCallRequest(index=part.index))
                        if part.id:
                            call.id = part.id
                        if part.function is not None:
                            call.name += part.function.name or ""
                            call.arguments += part.function.arguments or ""
        except openai.APIStatusError as exc:
            raise ModelError(
                f"model {config.name} answered {exc.status_code}: {_message(exc)}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise ModelError(f"model {config.name} is unreachable: {exc}") from exc
        except openai.APIError as exc:
            raise ModelError(f"model {config.name} failed: {exc}") from exc
        result.tool_calls = [calls[i] for i in sorted(calls)]
        for call in result.tool_calls:
            call.id = call.id or f"call_{call.index}"
        yield result

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
    return str(exc.message)[:500]
