"""The ``llm.generate`` algorithm: cache lookup, model chain with retries, JSON repair, streaming.

Order of events for one request:
1. The chain is the primary model then its fallbacks. Each model gets up to
   ``retry_attempts`` requests while failures are transient (429, 5xx, timeouts, connection
   errors; exponential backoff with jitter, at least the provider's ``Retry-After``, capped).
   401/403/404 mean the model itself is unusable: straight on to the next one. Any other 4xx is
   the request's fault: the task fails at once (``ProviderRejected``), no retry, no fallback.
2. In JSON mode an answer that does not parse is sent back with a repair request, up to
   ``max_patching_attempts`` times, to the model that produced it (its fallbacks after it).
3. Streamed text is published as progress ``{"delta": text}``, batched; when a retry, fallback
   or repair starts the text over, ``{"reset": true}`` tells readers to drop what they showed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import openai
import structlog
from openai import Stream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from corral.config import LLMSettings, ModelConfig
from corral.task_schemas import LLMGenerateInput, LLMGenerateOutput, TokenUsage
from corral.tasks.llm.cache import ResponseCache, cache_key
from corral.tasks.llm.clients import client_for, resolve_chain, split_options
from corral.tasks.llm.errors import (
    InvalidJSON,
    ProviderRejected,
    ProviderUnavailable,
    describe,
    is_transient,
    is_unusable_model,
    retry_after_s,
)
from corral.tasks.llm.jsonfix import NotJSON, parse_answer, repair_messages
from corral.tasks.llm.streaming import TextBatcher
from corral.telemetry import tracer

log = structlog.get_logger(__name__)

Progress = Callable[[str, Any], None]
"""``progress(message, data)``: publishes one progress event of the task."""


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    usage: TokenUsage
    config: ModelConfig
    provider_model: str


def _usage(raw: CompletionUsage | None) -> TokenUsage:
    if raw is None:
        return TokenUsage()
    details = raw.prompt_tokens_details
    return TokenUsage(
        prompt_tokens=raw.prompt_tokens or 0,
        completion_tokens=raw.completion_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
        total_tokens=raw.total_tokens or 0,
    )


def _retryable(exc: BaseException) -> bool:
    # A provider's in-stream error event (an APIError without a status) is treated as transient.
    return is_transient(exc) or (
        isinstance(exc, openai.APIError)
        and not isinstance(exc, openai.APIStatusError | openai.APIConnectionError)
    )


def build_messages(params: LLMGenerateInput) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if params.system_prompt:
        messages.append({"role": "system", "content": params.system_prompt})
    if params.prompt is not None:
        messages.append({"role": "user", "content": params.prompt})
    else:
        messages.extend(m.model_dump(mode="json", exclude_none=True) for m in params.messages or [])
    return messages


def effective_options(config: ModelConfig, params: LLMGenerateInput) -> dict[str, Any]:
    """The model's configured options overridden by the request's; JSON mode's response format."""
    options = {**config.options, **params.options.model_dump(mode="json", exclude_none=True)}
    if params.json_mode and "response_format" not in options:
        options["response_format"] = {"type": "json_object"}
    return options


def cache_wanted(params: LLMGenerateInput, primary: ModelConfig) -> bool:
    """Explicit ``cache`` wins; otherwise only deterministic requests (temperature 0 or a seed)."""
    if params.cache is not None:
        return params.cache
    options = effective_options(primary, params)
    return options.get("temperature") == 0 or options.get("seed") is not None


@dataclass
class Generation:
    settings: LLMSettings
    params: LLMGenerateInput
    progress: Progress
    cache: ResponseCache | None
    owner_id: str
    attempts: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.batcher = TextBatcher(
            lambda text: self.progress("generating", {"delta": text}),
            self.settings.stream_flush_s,
            self.settings.stream_flush_chars,
        )

    # -- the whole request ---------------------------------------------------------------------

    def run(self) -> LLMGenerateOutput:
        params = self.params
        chain = resolve_chain(self.settings, params.model, params.fallback_models)
        messages = build_messages(params)
        key = None
        if self.cache is not None and cache_wanted(params, chain[0]):
            key = cache_key(self._cache_material(chain, messages))
            hit = self.cache.get(key)
            if hit is not None:
                return self._from_cache(hit)

        completion = self._call_chain(chain, messages)
        parsed: Any = None
        patches = 0
        while params.json_mode:
            try:
                parsed = parse_answer(completion.text)
                break
            except NotJSON as exc:
                if patches >= params.max_patching_attempts:
                    raise InvalidJSON(
                        f"{completion.config.name} did not answer valid JSON ({exc}) after "
                        f"{patches} repair attempt(s)"
                    ) from None
                patches += 1
                messages = [*messages, *repair_messages(completion.text, str(exc))]
                self._restart(f"asking {completion.config.name} to repair invalid JSON ({exc})")
                completion = self._call_chain(chain[chain.index(completion.config) :], messages)

        output = LLMGenerateOutput(
            response=completion.text,
            parsed=parsed,
            model=completion.config.name,
            provider_model=completion.provider_model,
            attempts=self.attempts,
            patching_attempts=patches,
            usage=self.usage,
            execution_time_s=round(time.monotonic() - self._started, 4),
            cache_hit=False,
            finish_reason=completion.finish_reason,
        )
        if key is not None and self.cache is not None:
            self.cache.put(
                key,
                output.model_dump(
                    mode="json",
                    include={"response", "parsed", "model", "provider_model", "finish_reason"},
                ),
            )
        return output

    def _cache_material(self, chain: list[ModelConfig], messages: list[dict[str, Any]]) -> Any:
        params = self.params
        return {
            "models": [
                {"name": c.name, "base_url": c.base_url, "model": c.model, "options": c.options}
                for c in chain
            ],
            "messages": messages,
            "options": params.options.model_dump(mode="json", exclude_none=True),
            "json_mode": params.json_mode,
            "max_patching_attempts": params.max_patching_attempts if params.json_mode else None,
            "owner": None if self.settings.cache_shared else self.owner_id,
        }

    def _from_cache(self, hit: dict[str, Any]) -> LLMGenerateOutput:
        output = LLMGenerateOutput.model_validate(
            {
                **hit,
                "attempts": 0,
                "patching_attempts": 0,
                "usage": TokenUsage(),
                "execution_time_s": round(time.monotonic() - self._started, 4),
                "cache_hit": True,
            }
        )
        if self.params.stream and output.response:
            self.progress("from cache", {"delta": output.response})
        return output

    # -- one model chain -----------------------------------------------------------------------

    def _call_chain(self, chain: list[ModelConfig], messages: list[dict[str, Any]]) -> Completion:
        failures: list[str] = []
        for position, config in enumerate(chain):
            if position:
                self._restart(f"falling back to {config.name} ({failures[-1]})")
            try:
                return self._call_with_retries(config, messages)
            except openai.APIError as exc:
                if _retryable(exc) or is_unusable_model(exc):
                    failures.append(f"{config.name}: {describe(exc)}")
                    log.warning("llm model failed", model=config.name, error=describe(exc))
                    continue
                raise ProviderRejected(
                    f"{config.name} rejected the request ({describe(exc)})"
                ) from exc
        raise ProviderUnavailable("no model could answer: " + "; ".join(failures))

    def _call_with_retries(self, config: ModelConfig, messages: list[dict[str, Any]]) -> Completion:
        backoff = wait_exponential_jitter(
            initial=self.settings.retry_backoff_s,
            max=self.settings.retry_backoff_max_s,
            jitter=self.settings.retry_backoff_s,
        )
        cap = max(self.settings.retry_backoff_max_s, self.settings.retry_backoff_s)

        def wait(state: RetryCallState) -> float:
            hinted = retry_after_s(state.outcome.exception() if state.outcome else None) or 0.0
            return min(max(backoff(state), hinted), cap)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._restart(
                f"retrying {config.name} (attempt {state.attempt_number + 1} of "
                f"{self.settings.retry_attempts}) after {describe(exc) if exc else 'an error'}"
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.retry_attempts),
            wait=wait,
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                self.attempts += 1
                with tracer().start_as_current_span("model call") as span:
                    span.set_attribute("llm.model", config.model)
                    completion = self._call_once(config, messages)
                    usage = completion.usage
                    span.set_attribute("llm.prompt_tokens", usage.prompt_tokens)
                    span.set_attribute("llm.completion_tokens", usage.completion_tokens)
                    span.set_attribute("llm.cached_tokens", usage.cached_tokens)
                from corral.tasks.observability import record_tokens

                record_tokens(config.name, usage.prompt_tokens, usage.completion_tokens)
                return completion
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _call_once(self, config: ModelConfig, messages: list[dict[str, Any]]) -> Completion:
        client = client_for(config)
        kwargs = split_options(effective_options(config, self.params))
        kwargs["messages"] = messages  # plain dicts, validated by our ChatMessage model
        if not self.params.stream:
            response = cast(
                ChatCompletion, client.chat.completions.create(model=config.model, **kwargs)
            )
            usage = _usage(response.usage)
            self.usage = self.usage + usage
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content or choice.message.refusal or "") if choice else ""
            return Completion(
                text=text,
                finish_reason=choice.finish_reason if choice else None,
                usage=usage,
                config=config,
                provider_model=response.model or config.model,
            )

        if config.stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        finish_reason: str | None = None
        raw_usage: CompletionUsage | None = None
        provider_model = config.model
        stream = cast(
            Stream[ChatCompletionChunk],
            client.chat.completions.create(model=config.model, stream=True, **kwargs),
        )
        with stream:
            for chunk in stream:
                provider_model = chunk.model or provider_model
                if chunk.usage is not None:
                    raw_usage = chunk.usage
                for part in chunk.choices:
                    if part.index != 0:
                        continue
                    delta = part.delta.content if part.delta is not None else None
                    if delta:
                        parts.append(delta)
                        self.batcher.add(delta)
                    if part.finish_reason:
                        finish_reason = part.finish_reason
        self.batcher.flush()
        usage = _usage(raw_usage)
        self.usage = self.usage + usage
        return Completion(
            text="".join(parts),
            finish_reason=finish_reason,
            usage=usage,
            config=config,
            provider_model=provider_model,
        )

    def _restart(self, message: str) -> None:
        """Tell readers the text starts over (only if some was shown) and why."""
        self.batcher.flush()
        self.progress(message, {"reset": True} if self.batcher.published_any else None)
        self.batcher.published_any = False
