"""Dataset records (what the repository stores) and the bodies of the ``/api/datasets`` routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, JsonValue

from corral.task_schemas import DatasetFormat, ResultColumn

DatasetColumn = ResultColumn
"""A column name and its DuckDB type; the same shape as result columns."""

DatasetStatus = Literal["processing", "ready", "failed"]


class IngestError(BaseModel):
    type: str = Field(description="e.g. DatasetInvalid, DatasetTooLarge, IngestFailed")
    message: str


class DatasetRecord(BaseModel):
    """One dataset: where its files are and what it holds (found by the ``circuit.ingest``
    worker task, never by user SQL)."""

    id: str
    owner_id: str
    name: str
    format: DatasetFormat
    key: str = Field(description="Object key of the file.")
    size: int
    population: str | None = Field(
        default=None, description="SONATA: the population read by default."
    )
    populations: list[str] = Field(default_factory=list, description="SONATA: all populations.")
    row_count: int
    columns: list[DatasetColumn]
    sample_rows: list[list[JsonValue]] = Field(default_factory=list)
    description: str | None = None
    read_only: bool = False
    created_at: datetime
    status: DatasetStatus = "ready"
    error: IngestError | None = None
    task_id: str | None = Field(default=None, description="The ingest task (its event stream).")
    parquet_key: str | None = Field(default=None, description="The Parquet analysis reads.")
    parquet_size: int | None = None
    declared_format: DatasetFormat | None = None
    ingest_attempts: int = 0
    updated_at: datetime | None = None


class DatasetSummary(BaseModel):
    id: str
    name: str
    format: DatasetFormat
    size: int
    row_count: int
    population: str | None
    populations: list[str]
    read_only: bool = Field(description="The shared sample: visible to everyone, not deletable.")
    created_at: datetime
    status: DatasetStatus = Field(
        description="processing: the circuit_q worker is reading it (follow GET "
        "/api/tasks/{task_id}/events); ready: analysable; failed: see `error`."
    )
    error: IngestError | None = None
    task_id: str | None = None


class DatasetOut(DatasetSummary):
    columns: list[DatasetColumn]
    sample_rows: list[list[JsonValue]]
    description: str | None

    @classmethod
    def of(cls, record: DatasetRecord) -> DatasetOut:
        return cls.model_validate(record.model_dump(exclude=_PRIVATE))


_PRIVATE = {
    "owner_id", "key", "parquet_key", "parquet_size", "declared_format", "ingest_attempts",
    "updated_at",
}  # fmt: skip


def summary_of(record: DatasetRecord) -> DatasetSummary:
    return DatasetSummary.model_validate(
        record.model_dump(exclude=_PRIVATE | {"columns", "sample_rows", "description"})
    )
