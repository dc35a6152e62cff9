"""The task registry and the event-stream format: the contract between app and workers.

One ``TaskSpec`` per task declares its stable name, queues, input and output models, time
limits and retry policy. The app sends by name with routing taken from here; the worker
registers the same name and validates its input with the same model. No task or queue name is
written anywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, model_validator


class Queue(StrEnum):
    """One queue per workload, each with its own worker command."""

    PYTHON = "python_q"
    CIRCUIT = "circuit_q"
    LLM = "llm_q"


ALL_QUEUES: tuple[Queue, ...] = tuple(Queue)

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)


class RetryPolicy(BaseModel):
    """Automatic retries for transient infrastructure errors (never for user errors)."""

    model_config = ConfigDict(frozen=True)

    max_retries: int = Field(default=0, ge=0, le=20)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    jitter: bool = True


@dataclass(frozen=True)
class TaskSpec(Generic[InputT, OutputT]):
    """Everything both sides need to know about one task."""

    name: str
    queues: tuple[Queue, ...]
    input_model: type[InputT]
    output_model: type[OutputT]
    description: str
    soft_time_limit_s: float = 60.0
    time_limit_s: float = 75.0
    expires_s: float = 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.queues:
            raise ValueError(f"{self.name}: at least one queue")
        if self.time_limit_s <= self.soft_time_limit_s:
            raise ValueError(f"{self.name}: hard time limit must exceed the soft one")

    @property
    def default_queue(self) -> Queue:
        return self.queues[0]


# ---------------------------------------------------------------------------------------------
# Message format
# ---------------------------------------------------------------------------------------------


def message_kwargs(task_input: BaseModel, owner_id: str) -> dict[str, Any]:
    """The kwargs of every Corral task message: the validated input and who asked for it."""
    return {"input": task_input.model_dump(mode="json"), "owner_id": owner_id}


# ---------------------------------------------------------------------------------------------
# Built-in system tasks (health checks and benchmarks; consumed on every queue)
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

REGISTRY: dict[str, TaskSpec[Any, Any]] = {}


def register(*specs: TaskSpec[Any, Any]) -> None:
    for spec in specs:
        if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
            raise ValueError(f"task {spec.name} declared twice")
        REGISTRY[spec.name] = spec


register(SYSTEM_ECHO, SYSTEM_FAIL)


def get_spec(name: str) -> TaskSpec[Any, Any]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(REGISTRY)}") from None


# ---------------------------------------------------------------------------------------------
# The event stream of a task: key ``task:{task_id}:events``, flat string fields
# ---------------------------------------------------------------------------------------------


def task_events_key(task_id: str) -> str:
    return f"task:{task_id}:events"


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


TERMINAL_EVENT_TYPES = frozenset({EventType.DONE, EventType.ERROR, EventType.CANCELLED})


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class QueuedEvent(_Event):
    type: Literal["queued"] = "queued"
    task_name: str
    queue: str


class StartedEvent(_Event):
    type: Literal["started"] = "started"
    worker: str = ""
    attempt: int = 1


class ProgressEvent(_Event):
    type: Literal["progress"] = "progress"
    current: float | None = None
    total: float | None = None
    message: str = ""
    data: str | None = Field(
        default=None, description="Optional JSON text (e.g. a chunk of generated tokens)."
    )


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    result: str | None = Field(
        default=None, description="The result as JSON when small; else read the backend."
    )


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error_type: str
    message: str
    traceback: str | None = None


class CancelledEvent(_Event):
    type: Literal["cancelled"] = "cancelled"
    reason: str = "cancelled by user"


TaskEvent = Annotated[
    QueuedEvent | StartedEvent | ProgressEvent | DoneEvent | ErrorEvent | CancelledEvent,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)


def encode_event(event: _Event) -> dict[str, str]:
    """Flatten an event into Redis stream fields (strings only, ``None`` fields left out)."""
    out: dict[str, str] = {}
    for key, value in event.model_dump(mode="json", exclude_none=True).items():
        out[key] = value if isinstance(value, str) else json.dumps(value)
    return out


def decode_event(fields: dict[str, str] | dict[bytes, bytes]) -> TaskEvent:
    """Parse a stream entry back into its typed event."""
    flat = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    return _EVENT_ADAPTER.validate_python(flat)


def is_terminal(event: TaskEvent) -> bool:
    return event.type in TERMINAL_EVENT_TYPES


# ---------------------------------------------------------------------------------------------
# Language models on llm_q: ``llm.generate``
# ---------------------------------------------------------------------------------------------

# Message priorities on the Redis broker. kombu keeps one list per step and polls them in
# ascending order, so a LOWER number is consumed first. The app client and the workers both set
# ``broker_transport_options["priority_steps"] = PRIORITY_STEPS``; every message the app sends
# carries an explicit priority (a message without one would land in the most urgent list).
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
PRIORITY_URGENT = 0
PRIORITY_NORMAL = 6


def message_priority(urgent: bool) -> int:
    return PRIORITY_URGENT if urgent else PRIORITY_NORMAL


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

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
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
    json_mode: bool = Field(default=False, description="The answer must be JSON; parsed.")
    max_patching_attempts: int = Field(
        default=2, ge=0, le=5, description="JSON mode: times the model is asked to fix bad JSON."
    )
    cache: bool | None = Field(
        default=None, description="Response cache; default on only if temperature=0 or seed set."
    )
    stream: bool = Field(
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


# ---------------------------------------------------------------------------------------------
# Python code on python_q: ``python.run``
# ---------------------------------------------------------------------------------------------

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

    wall_s: float | None = Field(default=None, gt=0, le=600, description="Wall-clock seconds.")
    cpu_s: int | None = Field(default=None, ge=1, le=600, description="CPU seconds.")
    memory_mb: int | None = Field(default=None, ge=64, le=16_384)
    max_file_mb: int | None = Field(default=None, ge=1, le=4096)
    stdout_max_bytes: int | None = Field(default=None, ge=1024, le=64_000_000)


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


# ---------------------------------------------------------------------------------------------
# Circuit population analysis on circuit_q: ``circuit.analyze``
# ---------------------------------------------------------------------------------------------

NEURONS_TABLE = "neurons"
"""Inside DuckDB the dataset is always this table."""

CSV_READ_OPTIONS = "header = true, sample_size = 100000"
"""How both sides read a CSV with DuckDB's ``read_csv``: the app validates an upload with exactly
the options the worker loads it with, so a file the app accepted always loads."""


class DatasetFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    SONATA = "sonata"
    """A SONATA nodes HDF5 file; one population is read."""


class CircuitAnalyzeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_url: str = Field(
        min_length=8,
        max_length=8192,
        pattern=r"^https?://",
        description="Presigned URL the worker downloads the dataset from.",
    )
    dataset_format: DatasetFormat
    population: str | None = Field(
        default=None,
        max_length=200,
        description="SONATA: the node population to read; CSV/Parquet: keep only rows whose "
        "`population` column equals it.",
    )
    question: str = Field(min_length=1, max_length=4000)
    sql: str | None = Field(
        default=None, min_length=1, max_length=20_000, description="Run this SELECT; no model."
    )
    model: str | None = Field(default=None, description="Configured model name; default model.")
    max_rows: int = Field(default=1000, ge=1, le=1_000_000, description="Row cap of the result.")


class ResultColumn(BaseModel):
    name: str
    type: str = Field(description="DuckDB type, e.g. BIGINT, DOUBLE, VARCHAR.")


class AnalysisError(BaseModel):
    """Why no table came back. A normal result: token usage is still reported beside it."""

    type: Literal["UnsafeSQL", "SQLError", "QueryTimeout", "ModelError", "InvalidModelAnswer"]
    message: str


class SQLAttempt(BaseModel):
    sql: str
    source: Literal["caller", "model", "repair"]
    error: AnalysisError | None = None


class AnalysisTimings(BaseModel):
    download_s: float = 0.0
    load_s: float = 0.0
    profile_s: float = Field(
        default=0.0, description="Column stats and sample rows for the prompt."
    )
    model_s: float = 0.0
    query_s: float = 0.0
    upload_s: float = 0.0
    total_s: float = 0.0


class CircuitAnalyzeOutput(BaseModel):
    question: str
    sql: str | None = Field(default=None, description="The SQL that ran (or last failed).")
    explanation: str | None = None
    columns: list[ResultColumn] = Field(default_factory=list)
    rows: list[list[JsonValue]] = Field(
        default_factory=list, description="The result, or its first rows when `result_key` is set."
    )
    row_count: int = Field(default=0, description="Rows in the result (at most max_rows).")
    truncated: bool = Field(default=False, description="The query had more than max_rows rows.")
    result_key: str | None = Field(
        default=None, description="Parquet of the whole (capped) result when it is large."
    )
    dataset_rows: int = 0
    error: AnalysisError | None = None
    attempts: list[SQLAttempt] = Field(default_factory=list)
    model: str | None = Field(
        default=None, description="Configured name of the model asked (none when `sql` given)."
    )
    provider_model: str | None = None
    llm_requests: int = Field(default=0, description="Provider requests, including the repair.")
    usage: TokenUsage = Field(
        default_factory=TokenUsage,
        description="Tokens of every model request (input = prompt_tokens, cached input = "
        "cached_tokens), reported even when the query failed; the same shape as llm.generate.",
    )
    timings: AnalysisTimings = Field(default_factory=AnalysisTimings)


CIRCUIT_ANALYZE: TaskSpec[CircuitAnalyzeInput, CircuitAnalyzeOutput] = TaskSpec(
    name="circuit.analyze",
    queues=(Queue.CIRCUIT,),
    input_model=CircuitAnalyzeInput,
    output_model=CircuitAnalyzeOutput,
    description="Answer a question about a neuron population with one model-written DuckDB "
    "SELECT, run read-only with a time limit and a row cap.",
    soft_time_limit_s=300.0,
    time_limit_s=330.0,
    expires_s=3600.0,
    retry=RetryPolicy(max_retries=2, backoff_s=2.0, backoff_max_s=20.0),
)

register(CIRCUIT_ANALYZE)


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


SYSTEM_PURGE_SCRATCH: TaskSpec[PurgeScratchInput, PurgeScratchOutput] = TaskSpec(
    name="system.purge_scratch",
    queues=(Queue.CIRCUIT, Queue.LLM, Queue.PYTHON),
    input_model=PurgeScratchInput,
    output_model=PurgeScratchOutput,
    description="Delete scratch objects older than their time to live from the object store.",
    soft_time_limit_s=1800.0,
    time_limit_s=1860.0,
    expires_s=3600.0,
)

register(SYSTEM_PURGE_SCRATCH)
