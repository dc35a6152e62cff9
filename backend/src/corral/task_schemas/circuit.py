"""Circuit population analysis on circuit_q: ``circuit.analyze``."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from corral.task_schemas.llm import TokenUsage
from corral.task_schemas.registry import Queue, RetryPolicy, TaskSpec, register

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

    type: Literal[
        "UnsafeSQL",
        "SQLError",
        "QueryTimeout",
        "QueryLimitExceeded",
        "ModelError",
        "InvalidModelAnswer",
    ]
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
