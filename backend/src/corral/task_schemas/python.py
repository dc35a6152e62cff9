"""Python code on python_q: ``python.run``."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from corral.task_schemas.registry import Queue, TaskSpec, register

FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class FigureFormat(StrEnum):
    PNG = "png"
    SVG = "svg"


class PythonInputFile(BaseModel):
    """An object the caller owns, copied read-only into the sandbox at ``/input/<name>``."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=3, max_length=400, description="Object key from POST /api/storage")
    name: str | None = Field(
        default=None,
        pattern=FILE_NAME_PATTERN,
        description="File name under /input; default: the key's last part.",
    )

    @property
    def file_name(self) -> str:
        return self.name or self.key.rsplit("/", 1)[-1]


class PythonLimitOverrides(BaseModel):
    """Per-call limits; the worker clamps each to its configured ceiling."""

    model_config = ConfigDict(extra="forbid")

    wall_s: StrictFloat | None = Field(
        default=None, gt=0, le=600, description="Wall-clock seconds."
    )
    cpu_s: StrictInt | None = Field(default=None, ge=1, le=600, description="CPU seconds.")
    memory_mb: StrictInt | None = Field(default=None, ge=64, le=16_384)
    max_file_mb: StrictInt | None = Field(default=None, ge=1, le=4096)
    stdout_max_bytes: StrictInt | None = Field(default=None, ge=1024, le=64_000_000)


class PythonRunInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=200_000, description="Python source to run.")
    input_files: list[PythonInputFile] = Field(default_factory=list, max_length=20)
    limits: PythonLimitOverrides = Field(default_factory=PythonLimitOverrides)
    figure_formats: list[FigureFormat] = Field(
        default_factory=lambda: [FigureFormat.PNG],
        min_length=1,
        max_length=2,
        description="Formats matplotlib figures left open are saved in.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> PythonRunInput:
        names = [f.file_name for f in self.input_files]
        if len(names) != len(set(names)):
            raise ValueError("input_files: two files would get the same name under /input")
        return self


class PythonError(BaseModel):
    """An exception in the user's code, or a limit that stopped it: a normal result."""

    type: str
    message: str
    line: int | None = None


class FigureRef(BaseModel):
    key: str
    name: str = Field(description="File name the code (or the figure saver) gave it.")
    content_type: str
    size: int


class PythonRunOutput(BaseModel):
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    last_expr: str | None = Field(default=None, description="repr of the last expression.")
    error: PythonError | None = None
    figures: list[FigureRef] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="Files skipped and why.")
    duration_s: float
    backend: str


PYTHON_RUN: TaskSpec[PythonRunInput, PythonRunOutput] = TaskSpec(
    name="python.run",
    queues=(Queue.PYTHON,),
    input_model=PythonRunInput,
    output_model=PythonRunOutput,
    description="Run Python in a sandbox; return stdout, the last expression and figures.",
    soft_time_limit_s=660.0,
    time_limit_s=700.0,
    expires_s=3600.0,
)

register(PYTHON_RUN)


# -- what a python_q worker's sandbox enforces, published to Redis at start ----------------------

SANDBOX_WORKERS_KEY = "corral:sandbox:workers"
"""Redis hash (streams DB): worker name → ``SandboxCapabilities`` JSON, set when its self-test
passes, removed when it stops. Readiness shows the live workers' entries."""


class SandboxCapabilities(BaseModel):
    """The isolation layers a python_q worker's sandbox has (found by its start-up self-test)."""

    backend: str = Field(description="bwrap or wasm.")
    seccomp: bool = Field(default=False, description="bwrap: the seccomp filter is loaded.")
    cgroups: str = Field(
        default="none", description="v2, v1, or none (rlimits only) for per-run cgroup limits."
    )
    cgroup_controllers: list[str] = Field(default_factory=list, description="e.g. memory, pids.")
    cgroup_reason: str = Field(default="", description="Why there are no cgroups, when none.")
    published_at: float = Field(default=0.0, description="Unix time the worker published this.")
