"""task runs: ignored late outcomes and idempotency keys

Revision ID: 0003_task_run_delivery
Revises: 0002_turns

"""

from collections.abc import Sequence

import sqlalchemy as sa

from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0003_task_run_delivery"
down_revision: str | Sequence[str] | None = "0002_turns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(
            sa.Column(
                "ignored_outcomes",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.create_index(
            "ux_task_runs_owner_idempotency", ["owner_id", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_index("ux_task_runs_owner_idempotency")
        batch.drop_column("idempotency_key")
        batch.drop_column("ignored_outcomes")
