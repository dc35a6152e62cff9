"""Language models on llm_q: ``llm.generate``."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from corral.task_schemas.registry import Queue, TaskSpec, register


class ChatMessage(BaseModel):
    """One OpenAI-style chat message."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = Field(default=None, max_length=2_000_000)
    name: str | None = Field(default=None, max_length=64)
    tool_call_id: str | None = Field(default=None, max_length=200)
    tool_calls: list[dict[str, JsonValue]] | None = None


class GenerationOptions(BaseModel):
    """Request options; unset ones fall back to the model's configured ``options``."""

    model_config = ConfigDict(extra="forbid")

    temperature: StrictFloat | None = Field(default=None, ge=0, le=2)
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    top_p: StrictFloat | None = Field(default=None, gt=0, le=1)
    stop: list[str] | None = Field(default=None, max_length=4)
    response_format: dict[str, JsonValue] | None = Field(
        default=None,
        description='e.g. {"type": "json_schema", "json_schema": {...}}; json_mode sets '
        '{"type": "json_object"} when this is unset.',
    )


class LLMGenerateInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Configured model name; default model.")
    prompt: str | None = Field(default=None, min_length=1, max_length=2_000_000)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=1000)
    system_prompt: str | None = Field(default=None, max_length=200_000)
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    fallback_models: list[str] = Field(
        default_factory=list, max_length=5, description="Tried in order when a model is down."
    )
    json_mode: StrictBool = Field(default=False, description="The answer must be JSON; parsed.")
    max_patching_attempts: StrictInt = Field(
        default=2, ge=0, le=5, description="JSON mode: times the model is asked to fix bad JSON."
    )
    cache: StrictBool | None = Field(
        default=None, description="Response cache; default on only if temperature=0 or seed set."
    )
    stream: StrictBool = Field(
        default=True,
        description='Publish text as it arrives: progress data {"delta": text} (and '
        '{"reset": true} when a retry or repair starts over).',
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> LLMGenerateInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = Field(default=0, description="Prompt tokens the provider had cached.")
    total_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class LLMGenerateOutput(BaseModel):
    response: str
    parsed: JsonValue = Field(default=None, description="The parsed JSON in json_mode.")
    model: str = Field(description="Configured name of the model that answered.")
    provider_model: str
    attempts: int = Field(description="Provider requests made (retries, fallbacks, repairs).")
    patching_attempts: int = 0
    usage: TokenUsage = Field(description="Summed over attempts; zero on a cache hit.")
    execution_time_s: float
    cache_hit: bool
    finish_reason: str | None = None


LLM_GENERATE: TaskSpec[LLMGenerateInput, LLMGenerateOutput] = TaskSpec(
    name="llm.generate",
    queues=(Queue.LLM,),
    input_model=LLMGenerateInput,
    output_model=LLMGenerateOutput,
    description="Call a configured language model with retries, fallbacks, JSON repair, cache.",
    soft_time_limit_s=900.0,
    time_limit_s=930.0,
    expires_s=3600.0,
)

register(LLM_GENERATE)
