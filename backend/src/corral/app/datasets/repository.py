"""Dataset records in SQL (the ``datasets`` table): the system of record for every dataset.

Callers check ownership; the repository only stores. Owners must exist as users first (``add``
makes sure). State changes of an ingest are compare-and-set on the ingest's task id, so two app
processes finishing (or re-sending) the same ingest never both win.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from corral.app.auth.users import ensure_user_in
from corral.app.datasets.schemas import DatasetRecord
from corral.app.db import Database
from corral.app.db.base import utcnow
from corral.app.db.models import Dataset


def to_row(record: DatasetRecord) -> Dataset:
    data = record.model_dump(mode="json")
    return Dataset(
        id=record.id,
        owner_id=record.owner_id,
        name=record.name,
        format=data["format"],
        key=record.key,
        size=record.size,
        population=record.population,
        populations=data["populations"],
        row_count=record.row_count,
        columns=data["columns"],
        sample_rows=data["sample_rows"],
        description=record.description,
        created_at=record.created_at,
        status=record.status,
        error_type=record.error.type if record.error else None,
        error=record.error.message if record.error else None,
        task_id=record.task_id,
        parquet_key=record.parquet_key,
        parquet_size=record.parquet_size,
        ingest_attempts=record.ingest_attempts,
        declared_format=data["declared_format"],
        updated_at=utcnow(),
    )


def to_record(row: Dataset) -> DatasetRecord:
    return DatasetRecord.model_validate(
        {
            "id": row.id,
            "owner_id": row.owner_id,
            "name": row.name,
            "format": row.format,
            "key": row.key,
            "size": row.size,
            "population": row.population,
            "populations": row.populations or [],
            "row_count": row.row_count,
            "columns": row.columns or [],
            "sample_rows": row.sample_rows or [],
            "description": row.description,
            "read_only": row.owner_id == _SYSTEM,
            "created_at": row.created_at,
            "status": row.status,
            "error": {"type": row.error_type or "IngestFailed", "message": row.error or ""}
            if row.status == "failed"
            else None,
            "task_id": row.task_id,
            "parquet_key": row.parquet_key,
            "parquet_size": row.parquet_size,
            "declared_format": row.declared_format,
            "ingest_attempts": row.ingest_attempts or 0,
            "updated_at": row.updated_at,
        }
    )


_SYSTEM = "system"


class DatasetRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: DatasetRecord) -> None:
        async with self._db.session() as session:
            await ensure_user_in(session, record.owner_id)
            session.add(to_row(record))

    async def add_missing(self, records: list[DatasetRecord]) -> int:
        """Insert the records whose id is not stored yet (idempotent import); returns how many."""
        if not records:
            return 0
        async with self._db.session() as session:
            ids = [r.id for r in records]
            known = set(await session.scalars(select(Dataset.id).where(Dataset.id.in_(ids))))
            keys = set(
                await session.scalars(
                    select(Dataset.key).where(Dataset.key.in_([r.key for r in records]))
                )
            )
            added = 0
            for record in records:
                if record.id in known or record.key in keys:
                    continue
                await ensure_user_in(session, record.owner_id)
                session.add(to_row(record))
                added += 1
        return added

    async def get(self, dataset_id: str) -> DatasetRecord | None:
        async with self._db.session() as session:
            row = await session.get(Dataset, dataset_id)
        return None if row is None else to_record(row)

    async def list_for_owner(self, owner_id: str, limit: int) -> list[DatasetRecord]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(Dataset)
                .where(Dataset.owner_id == owner_id)
                .order_by(Dataset.created_at.desc(), Dataset.id)
                .limit(limit)
            )
            return [to_record(r) for r in rows]

    async def processing(self, limit: int = 1000) -> list[DatasetRecord]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(Dataset)
                .where(Dataset.status == "processing")
                .order_by(Dataset.created_at)
                .limit(limit)
            )
            return [to_record(r) for r in rows]

    async def delete(self, record: DatasetRecord) -> None:
        async with self._db.session() as session:
            row = await session.get(Dataset, record.id)
            if row is not None and row.owner_id == record.owner_id:
                await session.delete(row)

    async def update_if_task(
        self, dataset_id: str, expected_task: str | None, **values: Any
    ) -> bool:
        """Apply ``values`` if the dataset is still processing under ``expected_task``."""
        values["updated_at"] = utcnow()
        async with self._db.session() as session:
            result: Any = await session.execute(
                update(Dataset)
                .where(
                    Dataset.id == dataset_id,
                    Dataset.status == "processing",
                    Dataset.task_id.is_(None)
                    if expected_task is None
                    else Dataset.task_id == expected_task,
                )
                .values(**values)
            )
        return bool(result.rowcount)

    async def reset(self, dataset_id: str, **values: Any) -> None:
        """Unconditional update (the sample's rebuild)."""
        values["updated_at"] = utcnow()
        async with self._db.session() as session:
            await session.execute(update(Dataset).where(Dataset.id == dataset_id).values(**values))
