from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat

from corral.task_schemas.python import SandboxCapabilities


class ToolOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]
    sandbox: dict[str, SandboxCapabilities] | None = Field(
        default=None,
        description="Tools running on python_q: each live worker's sandbox layers (backend, "
        "seccomp, cgroups v2 / v1 / none = rlimits only), as found by its start-up self-test.",
    )


class InvokeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"arguments": {"payload": "hi", "sleep_s": 2, "steps": 4}, "timeout_s": 30}
            ]
        },
    )

    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout_s: StrictFloat = Field(
        default=30.0,
        gt=0,
        le=600,
        description="How long to wait for the result (at most max_invoke_timeout_s).",
    )


class InvokeError(BaseModel):
    type: str
    message: str


class InvokeResponse(BaseModel):
    task_id: str
    status: Literal["done", "error", "cancelled", "timeout"]
    output: Any | None = None
    error: InvokeError | None = None
