"""Dataset records (what the repository stores) and the bodies of the ``/api/datasets`` routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, JsonValue

from corral.task_schemas import DatasetFormat, ResultColumn

DatasetColumn = ResultColumn
"""A column name and its DuckDB type; the same shape as result columns."""


class DatasetRecord(BaseModel):
    """One dataset: where its file is and what it holds (read at upload, never by user SQL)."""

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


class DatasetOut(DatasetSummary):
    columns: list[DatasetColumn]
    sample_rows: list[list[JsonValue]]
    description: str | None

    @classmethod
    def of(cls, record: DatasetRecord) -> DatasetOut:
        return cls.model_validate(record.model_dump(exclude={"owner_id", "key"}))


def summary_of(record: DatasetRecord) -> DatasetSummary:
    return DatasetSummary.model_validate(
        record.model_dump(exclude={"owner_id", "key", "columns", "sample_rows", "description"})
    )
