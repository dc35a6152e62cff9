"""purged_records: tombstones of records retention deleted (the API answers 410)

Revision ID: 0007_purged_records
Revises: 0006_pipeline_steps
Create Date: 2026-12-03 08:32:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007_purged_records"
down_revision: str | Sequence[str] | None = "0006_pipeline_steps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "purged_records",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "record_id", name=op.f("pk_purged_records")),
    )
    with op.batch_alter_table("purged_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_purged_records_owner_id"), ["owner_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("purged_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_purged_records_owner_id"))
    op.drop_table("purged_records")
