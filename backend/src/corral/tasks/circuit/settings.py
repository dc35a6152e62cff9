"""circuit_q settings: ``TASKS_CIRCUIT__...`` (nested under ``TasksSettings``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CircuitSettings(BaseModel):
    """Limits of one analysis. Every field has a ceiling so a typo cannot disable a limit."""

    model_config = ConfigDict(extra="forbid")

    max_download_bytes: int = Field(
        default=2 * 1024**3, ge=1024, le=64 * 1024**3, description="Dataset size cap."
    )
    download_connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    download_read_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="Longest silence while downloading."
    )
    download_timeout_s: float = Field(
        default=240.0, gt=0, le=3600, description="Whole download, then it is abandoned."
    )
    query_timeout_s: float = Field(default=30.0, gt=0, le=600, description="Per SQL statement.")
    max_rows: int = Field(
        default=100_000, ge=1, le=1_000_000, description="Ceiling for the caller's max_rows."
    )
    inline_rows: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Results with more rows go to the object store as Parquet; this many "
        "first rows ride inline.",
    )
    inline_cell_chars: int = Field(
        default=2000, ge=16, le=1_000_000, description="Longer strings are cut in inline rows."
    )
    memory_limit_mb: int = Field(default=2048, ge=64, le=262_144, description="DuckDB memory.")
    threads: int = Field(default=2, ge=1, le=256, description="DuckDB threads per analysis.")
    spill_limit_mb: int = Field(
        default=4096,
        ge=0,
        le=1_048_576,
        description="DuckDB's max_temp_directory_size: disk a query may spill to, then it is "
        "stopped with QueryLimitExceeded.",
    )
    prompt_sample_rows: int = Field(default=5, ge=0, le=50)
    prompt_stats_columns: int = Field(
        default=40, ge=0, le=500, description="Columns described with min/max/distinct."
    )
    prompt_full_scan_rows: int = Field(
        default=1_000_000,
        ge=0,
        description="Larger tables get distinct counts for the prompt from a 10 % sample.",
    )
    prompt_max_categories: int = Field(
        default=25, ge=0, le=200, description="Distinct values listed for a text column."
    )
    model_max_tokens: int = Field(default=1024, ge=64, le=32_000)
