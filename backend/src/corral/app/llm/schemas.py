"""API models of ``POST /api/llm/generate``: the task's input and output plus call options."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat

from corral.task_schemas import LLMGenerateInput, LLMGenerateOutput


class GenerateRequest(LLMGenerateInput):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prompt": "Name three cortical layers", "options": {"max_tokens": 64}}]
        },
    )

    urgent: StrictBool = Field(
        default=False, description="Jump the llm_q queue (message priority)."
    )
    timeout_s: StrictFloat = Field(
        default=120.0,
        gt=0,
        le=600,
        description="How long to wait (at most the deployment's max_invoke_timeout_s); "
        "past it the answer is 202 with the task id to follow.",
    )

    def task_input(self) -> LLMGenerateInput:
        return LLMGenerateInput.model_validate(
            self.model_dump(exclude={"urgent", "timeout_s"}, exclude_unset=True)
        )


class GenerateResponse(LLMGenerateOutput):
    task_id: str


class GenerateAccepted(BaseModel):
    """Still running when ``timeout_s`` ran out: follow it by task id."""

    task_id: str
    status: str = Field(description="The task's state, e.g. STARTED")
    events_url: str
    detail: str
