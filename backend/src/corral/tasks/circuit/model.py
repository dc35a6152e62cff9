"""Asking the model for ``{"sql", "explanation"}`` through the shared LLM layer, counting tokens.

Each request goes through ``corral.tasks.llm.generate.Generation`` (retries, fallbacks, JSON
repair). Structured output is asked for with ``response_format`` ``json_schema``; a provider
that rejects that (a 4xx) is asked once more in plain JSON mode and is not asked for a schema
again in this analysis. Tokens are summed over every request, including failed ones, so usage is
reported even when no SQL comes back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.config import LLMSettings
from corral.task_schemas import (
    AnalysisError,
    ChatMessage,
    GenerationOptions,
    LLMGenerateInput,
    LLMGenerateOutput,
    TokenUsage,
)
from corral.tasks._base import TaskUserError
from corral.tasks.circuit.prompt import JSON_OBJECT_FORMAT, JSON_SCHEMA_FORMAT
from corral.tasks.llm.errors import InvalidJSON, ProviderRejected
from corral.tasks.llm.generate import Generation

_SQL_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


class ModelFailed(Exception):
    """No usable answer; ``error`` is what the caller sees."""

    def __init__(self, error: AnalysisError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Answer:
    sql: str
    explanation: str | None
    text: str


@dataclass
class SQLWriter:
    settings: LLMSettings
    model: str | None
    owner_id: str
    progress: Callable[[str, Any], None]
    max_tokens: int
    usage: TokenUsage = field(default_factory=TokenUsage)
    requests: int = 0
    answered_by: LLMGenerateOutput | None = None
    structured: bool = True

    def ask(self, messages: list[dict[str, str]]) -> Answer:
        output = self._generate(messages)
        self.answered_by = output
        parsed = output.parsed
        sql = parsed.get("sql") if isinstance(parsed, dict) else None
        if not isinstance(sql, str) or not sql.strip():
            raise ModelFailed(
                AnalysisError(
                    type="InvalidModelAnswer",
                    message='the model answered JSON without a non-empty "sql" string',
                )
            )
        explanation = parsed.get("explanation") if isinstance(parsed, dict) else None
        return Answer(
            sql=_unfence(sql),
            explanation=explanation if isinstance(explanation, str) else None,
            text=output.response,
        )

    def _generate(self, messages: list[dict[str, str]]) -> LLMGenerateOutput:
        try:
            if self.structured:
                try:
                    return self._once(messages, JSON_SCHEMA_FORMAT)
                except ProviderRejected:
                    self.structured = False
                    self.progress("model rejected json_schema; retrying in JSON mode", None)
            return self._once(messages, JSON_OBJECT_FORMAT)
        except InvalidJSON as exc:
            raise ModelFailed(AnalysisError(type="InvalidModelAnswer", message=str(exc))) from exc
        except TaskUserError as exc:
            raise ModelFailed(AnalysisError(type="ModelError", message=str(exc))) from exc

    def _once(
        self, messages: list[dict[str, str]], response_format: dict[str, Any]
    ) -> LLMGenerateOutput:
        params = LLMGenerateInput(
            model=self.model,
            messages=[ChatMessage.model_validate(m) for m in messages],
            options=GenerationOptions(
                temperature=0, max_tokens=self.max_tokens, response_format=response_format
            ),
            json_mode=True,
            max_patching_attempts=1,
            cache=False,
            stream=False,
        )
        generation = Generation(self.settings, params, self.progress, None, self.owner_id)
        try:
            return generation.run()
        finally:
            self.usage = self.usage + generation.usage
            self.requests += generation.attempts

    def report(self) -> dict[str, Any]:
        """The output's ``model``, ``provider_model``, ``llm_requests`` and ``usage`` fields."""
        answered = self.answered_by
        return {
            "model": answered.model if answered else (self.model or self.settings.default_name),
            "provider_model": answered.provider_model if answered else None,
            "llm_requests": self.requests,
            "usage": self.usage,
        }


def _unfence(sql: str) -> str:
    text = sql.strip()
    fenced = _SQL_FENCE.match(text)
    return fenced.group(1).strip() if fenced else text
