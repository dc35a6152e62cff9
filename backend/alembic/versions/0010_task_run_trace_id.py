"""task_runs.trace_id: the trace a run was sent in, for tool cards read back from history

Revision ID: 0010_task_run_trace_id
Revises: 0009_idempotent_creation

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010_task_run_trace_id"
down_revision: str | Sequence[str] | None = "0009_idempotent_creation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("trace_id")
