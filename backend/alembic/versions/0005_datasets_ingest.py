"""datasets: ingestion status, the Parquet copy, the ingest task

Revision ID: 0005_datasets_ingest
Revises: 0004_research_sessions
Create Date: 2026-12-03 08:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005_datasets_ingest"
down_revision: str | Sequence[str] | None = "0004_research_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), server_default="ready", nullable=False)
        )
        batch_op.add_column(sa.Column("error_type", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("task_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("parquet_key", sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column("parquet_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("ingest_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("declared_format", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_datasets_status", ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_datasets_status")
        for name in (
            "updated_at", "declared_format", "ingest_attempts", "parquet_size", "parquet_key",
            "task_id", "error", "error_type", "status",
        ):  # fmt: skip
            batch_op.drop_column(name)
