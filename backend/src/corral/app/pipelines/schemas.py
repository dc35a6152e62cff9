"""API models of pipelines: the definition a caller sends and the run state it reads back.

A run is a DAG of named steps. Each step renders its ``prompt_template`` with the run's
``input`` and its ancestors' outputs (``{query}``, ``{analysis}`` = that step's response text,
``{analysis[response]}``, ``{analysis[parsed][field]}``) and calls ``llm.generate``.
Step kinds:

- ``generate``: one call.
- ``group``: one call per ``variants`` item (each may override model, options, template), all
  in parallel; output ``responses`` (list), ``outputs`` and ``response`` (all joined).
- ``chord``: a group, then ``combine``: one more call whose template also sees ``{variants}``
  (the responses joined) and ``{variants[0]}``...; output as a group plus ``combine``, with
  ``response`` the combined answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from corral.app.pipelines.templates import check_template
from corral.task_schemas import GenerationOptions, TokenUsage

STEP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
Template = Annotated[str, AfterValidator(check_template)]
"""``{input}``, ``{step}``, ``{step[field]}``, ``{step[field][key]}`` only (templates.py)."""
VARIANTS = "variants"
"""What a chord's combine template calls the list of its variants' responses."""

StepKind = Literal["generate", "group", "chord"]
StepStatus = Literal["pending", "queued", "running", "done", "failed", "skipped", "cancelled"]
RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
TERMINAL_STEP: frozenset[str] = frozenset({"done", "failed", "skipped", "cancelled"})


class Variant(BaseModel):
    """One member of a group/chord; unset fields are the step's."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt_template: Template | None = Field(default=None, min_length=1, max_length=200_000)
    options: GenerationOptions | None = None


class Combine(BaseModel):
    """The chord's last call: its template sees ``{variants}`` besides input and ancestors."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt_template: Template = Field(min_length=1, max_length=200_000)
    system_prompt: str | None = Field(default=None, max_length=200_000)
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    json_mode: StrictBool = False


class StepDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STEP_NAME_PATTERN, description="Also its name in templates.")
    kind: StepKind = "generate"
    model: str | None = Field(default=None, description="Configured model; default model.")
    prompt_template: Template = Field(min_length=1, max_length=200_000)
    system_prompt: str | None = Field(default=None, max_length=200_000)
    depends_on: list[str] = Field(default_factory=list, max_length=50)
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    fallback_models: list[str] = Field(default_factory=list, max_length=5)
    optional: StrictBool = Field(
        default=False, description="If it fails, dependants still run (it renders as '')."
    )
    json_mode: StrictBool = False
    max_patching_attempts: StrictInt = Field(default=2, ge=0, le=5)
    cache: StrictBool | None = None
    variants: list[Variant] = Field(default_factory=list, max_length=20)
    combine: Combine | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> StepDef:
        if self.kind == "generate" and (self.variants or self.combine):
            raise ValueError(f"step {self.name}: `variants`/`combine` need kind group or chord")
        if self.kind in {"group", "chord"} and not self.variants:
            raise ValueError(f"step {self.name}: kind {self.kind} needs at least one variant")
        if self.kind == "group" and self.combine is not None:
            raise ValueError(f"step {self.name}: `combine` needs kind chord")
        if self.kind == "chord" and self.combine is None:
            raise ValueError(f"step {self.name}: kind chord needs `combine`")
        return self


class PipelineRunRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "steps": [
                        {"name": "summary", "prompt_template": "Summarise: {text}"},
                        {
                            "name": "title",
                            "prompt_template": "A title for: {summary[response]}",
                            "depends_on": ["summary"],
                        },
                    ],
                    "input": {"text": "Layer 5 pyramidal cells project to the thalamus."},
                }
            ]
        },
    )

    steps: list[StepDef] = Field(min_length=1, max_length=50)
    input: dict[str, JsonValue] = Field(default_factory=dict)
    urgent: StrictBool = Field(default=False, description="Every step jumps the llm_q queue.")
    step_timeout_s: StrictFloat = Field(default=300.0, gt=0, le=3600, description="Per step call.")


class StepError(BaseModel):
    type: str
    message: str


class StepState(BaseModel):
    name: str
    kind: StepKind
    status: StepStatus = "pending"
    task_ids: list[str] = Field(default_factory=list)
    output: dict[str, Any] | None = None
    error: StepError | None = None
    model: str | None = Field(default=None, description="Model that answered (last call).")
    usage: TokenUsage = Field(default_factory=TokenUsage)
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STEP


class PipelineRun(BaseModel):
    """The persisted record of one run (also what ``GET /runs/{id}`` returns)."""

    run_id: str
    owner_id: str
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    steps: list[StepState]
    definition: PipelineRunRequest

    def step(self, name: str) -> StepState:
        return next(s for s in self.steps if s.name == name)


class PipelineRunSummary(BaseModel):
    run_id: str
    status: RunStatus
    created_at: datetime
    finished_at: datetime | None
    steps: dict[str, StepStatus]


class CancelOut(BaseModel):
    run_id: str
    status: RunStatus
    cancelled_tasks: int
