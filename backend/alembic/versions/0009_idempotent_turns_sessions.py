"""turns and research sessions: Idempotency-Key, unique per owner (like task_runs)

Revision ID: 0009_idempotent_creation
Revises: 0008_fair_share

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009_idempotent_creation"
down_revision: str | Sequence[str] | None = "0008_fair_share"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("turns", "research_sessions")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
            batch.create_index(
                f"ux_{table}_owner_idempotency", ["owner_id", "idempotency_key"], unique=True
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ux_{table}_owner_idempotency")
            batch.drop_column("idempotency_key")
