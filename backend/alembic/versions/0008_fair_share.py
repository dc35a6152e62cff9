"""task runs: fair share's waiting backlog (the held send) and its lookup index

Revision ID: 0008_fair_share
Revises: 0007_purged_records

"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008_fair_share"
down_revision: str | Sequence[str] | None = "0007_purged_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(
            sa.Column(
                "pending",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch.create_index("ix_task_runs_owner_queue_state", ["owner_id", "queue", "state"])


def downgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_index("ix_task_runs_owner_queue_state")
        batch.drop_column("pending")
