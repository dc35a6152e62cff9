"""Built-in system tasks: health checks, benchmarks and housekeeping."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from corral.task_schemas.registry import ALL_QUEUES, Queue, TaskSpec, register

# ---------------------------------------------------------------------------------------------
# Health checks and benchmarks (consumed on every queue): ``system.echo``, ``system.fail``
# ---------------------------------------------------------------------------------------------


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: JsonValue = Field(default=None, description="Returned unchanged.")
    sleep_s: float = Field(default=0.0, ge=0.0, le=600.0, description="Total time to sleep.")
    steps: int = Field(
        default=1, ge=1, le=1000, description="Progress events reported while sleeping."
    )


class EchoOutput(BaseModel):
    payload: JsonValue
    steps: int
    worker: str


class FailInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(default="failure requested", max_length=2000)
    sleep_s: float = Field(default=0.0, ge=0.0, le=600.0)


class FailOutput(BaseModel):
    """Never produced: ``system.fail`` always raises ``DeliberateFailure``."""


SYSTEM_ECHO: TaskSpec[EchoInput, EchoOutput] = TaskSpec(
    name="system.echo",
    queues=ALL_QUEUES,
    input_model=EchoInput,
    output_model=EchoOutput,
    description="Return the payload after an optional sleep, reporting progress each step.",
    soft_time_limit_s=620.0,
    time_limit_s=640.0,
    expires_s=900.0,
)

SYSTEM_FAIL: TaskSpec[FailInput, FailOutput] = TaskSpec(
    name="system.fail",
    queues=ALL_QUEUES,
    input_model=FailInput,
    output_model=FailOutput,
    description="Raise a typed error (DeliberateFailure) after an optional sleep.",
    soft_time_limit_s=620.0,
    time_limit_s=640.0,
    expires_s=900.0,
)


register(SYSTEM_ECHO, SYSTEM_FAIL)


# ---------------------------------------------------------------------------------------------
# Housekeeping, scheduled by Celery beat: ``system.purge_scratch``
# ---------------------------------------------------------------------------------------------

SCRATCH_KIND = "scratch"
"""Object kind for temporary files (``{owner}/scratch/{name}``); purged once expired."""


class PurgeScratchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_age_s: int | None = Field(
        default=None, ge=0, description="Delete older objects; default: the worker's setting."
    )
    dry_run: bool = Field(default=False, description="Count what would go; delete nothing.")


class PurgeScratchOutput(BaseModel):
    kinds: list[str]
    max_age_s: int
    scanned: int
    deleted: int
    deleted_bytes: int
    errors: int = 0
    complete: bool = Field(default=True, description="False: stopped at its time budget.")


SYSTEM_PURGE_SCRATCH: TaskSpec[PurgeScratchInput, PurgeScratchOutput] = TaskSpec(
    name="system.purge_scratch",
    queues=(Queue.CIRCUIT, Queue.LLM, Queue.PYTHON),
    input_model=PurgeScratchInput,
    output_model=PurgeScratchOutput,
    description="Delete scratch objects older than their time to live from the object store.",
    # Short on purpose: it shares queues whose Redis redelivery bound (visibility timeout) is
    # derived from their longest hard limit. A big store is purged over several runs, each
    # stopping after a time budget below the soft limit (``complete`` says whether it finished).
    soft_time_limit_s=240.0,
    time_limit_s=270.0,
    expires_s=3600.0,
)

register(SYSTEM_PURGE_SCRATCH)


# ---------------------------------------------------------------------------------------------
# Retention, scheduled by Celery beat: ``system.purge``
# ---------------------------------------------------------------------------------------------

RETENTION_KINDS = ("dataset", "pipeline_run", "task_run")
"""Record kinds with a retention setting (``TASKS_RETENTION__<KIND>_DAYS``, default: keep)."""


class PurgeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    now: AwareDatetime | None = Field(
        default=None, description="Purge as if it were this time (tests move the clock)."
    )
    dry_run: bool = Field(default=False, description="Count what would go; delete nothing.")


class PurgeKindResult(BaseModel):
    kind: str
    keep_days: float | None = Field(description="None: kept forever (the default).")
    deleted: int = 0
    objects_deleted: int = 0
    errors: int = 0


class PurgeOutput(BaseModel):
    kinds: list[PurgeKindResult]
    complete: bool = Field(default=True, description="False: stopped at its time budget.")
    skipped: str | None = Field(
        default=None, description="Why nothing was looked at (no database configured)."
    )


SYSTEM_PURGE: TaskSpec[PurgeInput, PurgeOutput] = TaskSpec(
    name="system.purge",
    queues=(Queue.CIRCUIT, Queue.LLM, Queue.PYTHON),
    input_model=PurgeInput,
    output_model=PurgeOutput,
    description="Delete user records older than their kind's retention (default: keep) together "
    "with their objects, leaving a tombstone so the API answers 410 purged.",
    # Short, like purge_scratch: a time budget below the soft limit, the next run continues.
    soft_time_limit_s=240.0,
    time_limit_s=270.0,
    expires_s=3600.0,
)

register(SYSTEM_PURGE)
