"""API models of ``POST /api/llm/generate``: the task's input and output plus call options."""

from __future__ import annotations

from pydantic import BaseModel, Field

from corral.task_schemas import LLMGenerateInput, LLMGenerateOutput


class GenerateRequest(LLMGenerateInput):
    urgent: bool = Field(default=False, description="Jump the llm_q queue (message priority).")
    timeout_s: float = Field(
        default=120.0, gt=0, description="How long to wait; the task id allows following on."
    )

    def task_input(self) -> LLMGenerateInput:
        return LLMGenerateInput.model_validate(
            self.model_dump(exclude={"urgent", "timeout_s"}, exclude_unset=True)
        )


class GenerateResponse(LLMGenerateOutput):
    task_id: str


class GenerateError(BaseModel):
    error_type: str
    message: str
    task_id: str | None = None
