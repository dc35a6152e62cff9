"""research sessions

Revision ID: 0004_research_sessions
Revises: 0003_task_run_delivery
Create Date: 2026-12-03 08:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004_research_sessions"
down_revision: str | Sequence[str] | None = "0003_task_run_delivery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "research_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("thread_id", sa.String(length=36), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("snapshot_key", sa.String(length=400), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("cells", JSON, nullable=False),
        sa.Column("variables", JSON, nullable=False),
        sa.Column("input_files", JSON, nullable=False),
        sa.Column("limits", JSON, nullable=False),
        sa.Column("restores", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_call_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_research_sessions_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_research_sessions_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_research_sessions")),
    )
    with op.batch_alter_table("research_sessions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_research_sessions_owner_created", ["owner_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "uq_research_sessions_thread_active",
            ["thread_id"],
            unique=True,
            sqlite_where=sa.text("state = 'active'"),
            postgresql_where=sa.text("state = 'active'"),
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("research_sessions", schema=None) as batch_op:
        batch_op.drop_index("uq_research_sessions_thread_active")
        batch_op.drop_index("ix_research_sessions_owner_created")
    op.drop_table("research_sessions")
