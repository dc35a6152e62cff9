"""task_runs.cpu_s and rows_scanned: each run's spend, the ledger daily budgets are checked on

Revision ID: 0011_task_run_spend
Revises: 0010_task_run_trace_id

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011_task_run_spend"
down_revision: str | Sequence[str] | None = "0010_task_run_trace_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(sa.Column("cpu_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rows_scanned", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("rows_scanned")
        batch.drop_column("cpu_s")
