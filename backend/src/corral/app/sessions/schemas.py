"""Request and response bodies of ``/api/sessions``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat

from corral.app.params import ID_PATTERN
from corral.task_schemas import PythonInputFile, PythonLimitOverrides, VariableInfo

SessionState = Literal["live", "suspended", "closed"]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"thread_id": None}]})

    thread_id: str | None = Field(
        default=None, max_length=64, pattern=ID_PATTERN, description="One session per thread."
    )
    input_files: list[str | PythonInputFile] = Field(
        default_factory=list,
        max_length=20,
        description="Your object keys (or {key, name}), read-only at /input/<name>.",
    )
    datasets: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Your dataset ids, read-only at /input/<id>.<format> (csv, parquet, h5).",
    )
    limits: PythonLimitOverrides = Field(default_factory=PythonLimitOverrides)


class SessionRunRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"code": "import numpy as np\nx = np.arange(10)\nx.mean()"}]
        },
    )

    code: str = Field(min_length=1, max_length=200_000, description="Python source to run.")
    want_svg: StrictBool = Field(default=False, description="Also save figures as SVG.")
    restart: StrictBool = Field(default=False, description="Start from an empty namespace.")
    timeout_s: StrictFloat = Field(
        default=120.0, gt=0, le=600, description="How long to wait for the result."
    )


class SessionRunError(BaseModel):
    type: str
    message: str


class SessionRunResponse(BaseModel):
    session_id: str
    task_id: str
    status: Literal["done", "error", "timeout"]
    output: dict[str, Any] | None = Field(
        default=None,
        description="As run_python's output plus worker, restored, notes (e.g. 'session "
        "restored on <worker>'), variables; figures carry short-lived URLs.",
    )
    error: SessionRunError | None = None


class SessionOut(BaseModel):
    id: str
    thread_id: str | None
    state: SessionState = Field(
        description="live: in a worker's memory; suspended: only in its snapshot (the next "
        "call restores it); closed."
    )
    worker: str | None = Field(description="The python_q worker that holds (or last held) it.")
    calls: int
    cells: int = Field(description="Successful cells recorded (replayed if a snapshot fails).")
    variables: list[VariableInfo]
    input_files: list[str] = Field(description="Names under /input.")
    has_snapshot: bool
    restores: int
    created_at: datetime
    last_call_at: datetime | None
