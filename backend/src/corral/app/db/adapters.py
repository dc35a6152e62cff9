"""SQL stores for records other domains still keep in Redis, behind their own interfaces.

``SqlDatasetRepository`` implements ``corral.app.datasets.repository.DatasetRepository`` over
the ``datasets`` table; switching is one line in ``corral.app.datasets.service.repository``
(``return SqlDatasetRepository(services.db)``). Owners must exist as users first (they do for
anyone who authenticated; ``add`` makes sure).
"""

from __future__ import annotations

from sqlalchemy import select

from corral.app.auth.users import ensure_user_in
from corral.app.datasets.schemas import DatasetRecord
from corral.app.db import Database
from corral.app.db.models import Dataset


def _row(record: DatasetRecord) -> Dataset:
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
    )


def _record(row: Dataset) -> DatasetRecord:
    return DatasetRecord.model_validate(
        {
            "id": row.id,
            "owner_id": row.owner_id,
            "name": row.name,
            "format": row.format,
            "key": row.key,
            "size": row.size,
            "population": row.population,
            "populations": row.populations,
            "row_count": row.row_count,
            "columns": row.columns,
            "sample_rows": row.sample_rows,
            "description": row.description,
            "created_at": row.created_at,
        }
    )


class SqlDatasetRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: DatasetRecord) -> None:
        async with self._db.session() as session:
            await ensure_user_in(session, record.owner_id)
            session.add(_row(record))

    async def get(self, dataset_id: str) -> DatasetRecord | None:
        async with self._db.session() as session:
            row = await session.get(Dataset, dataset_id)
        return None if row is None else _record(row)

    async def list_for_owner(self, owner_id: str, limit: int) -> list[DatasetRecord]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(Dataset)
                .where(Dataset.owner_id == owner_id)
                .order_by(Dataset.created_at.desc(), Dataset.id)
                .limit(limit)
            )
            return [_record(r) for r in rows]

    async def delete(self, record: DatasetRecord) -> None:
        async with self._db.session() as session:
            row = await session.get(Dataset, record.id)
            if row is not None and row.owner_id == record.owner_id:
                await session.delete(row)
