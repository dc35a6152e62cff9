"""The app's tables. Every row that belongs to someone carries ``owner_id`` (or reaches it
through its thread), and every read filters on it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from corral.app.db.base import Base, IdColumn, JSONType, UTCDateTime, new_id, utcnow

# SQLite only auto-increments INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class User(Base):
    """Created the first time a token with this subject is seen; ``id`` is the token's ``sub``."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """A long-lived bearer key; only its SHA-256 is stored (the key is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(IdColumn(), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Thread(Base):
    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_owner_updated", "owner_id", "updated_at"),)

    id: Mapped[str] = mapped_column(IdColumn(), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Message(Base):
    """One chat message in OpenAI's shape; ``seq`` orders a thread."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("thread_id", "seq"),)

    id: Mapped[str] = mapped_column(IdColumn(), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    tool_call_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="complete")
    model: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ToolCallRecord(Base):
    """A tool the model asked for in one assistant message, and how it ended."""

    __tablename__ = "tool_calls"

    id: Mapped[str] = mapped_column(IdColumn(), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    call_id: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[Any] = mapped_column(JSONType)
    task_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("task_runs.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="started")
    result: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TaskRun(Base):
    """Every task the app sends; the id is the Celery task id. Written before the send."""

    __tablename__ = "task_runs"
    __table_args__ = (
        Index("ix_task_runs_owner_created", "owner_id", "created_at"),
        Index("ix_task_runs_state", "state"),
        # Idempotent sends: one run per user and key (app/idempotency.py).
        Index("ux_task_runs_owner_idempotency", "owner_id", "idempotency_key", unique=True),
        # Fair share counts a user's runs per queue and state (app/fairshare).
        Index("ix_task_runs_owner_queue_state", "owner_id", "queue", "state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    thread_id: Mapped[str | None] = mapped_column(
        ForeignKey("threads.id", ondelete="SET NULL"), index=True
    )
    task_name: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(32))
    tool: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_id: Mapped[str | None] = mapped_column(String(48))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    output_refs: Mapped[list[str] | None] = mapped_column(JSONType)
    usage_recorded: Mapped[bool] = mapped_column(Boolean, default=False)
    # Outcomes that arrived after the first one (which wins), e.g. a `done` after `lost`.
    ignored_outcomes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # Fair share: a `waiting` run's held send (input, priority) until it is released.
    pending: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The trace the run was sent in (OpenTelemetry, 32 hex): history cards show it after reload.
    trace_id: Mapped[str | None] = mapped_column(String(32))
    # Budget ledger (app/budgets): what the run spent, written with its outcome.
    cpu_s: Mapped[float | None] = mapped_column(Float)
    rows_scanned: Mapped[int | None] = mapped_column(BigInteger)


class Artifact(Base):
    """An object-store object a task produced for someone (figures, files)."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(IdColumn(), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    thread_id: Mapped[str | None] = mapped_column(
        ForeignKey("threads.id", ondelete="CASCADE"), index=True
    )
    task_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("task_runs.id", ondelete="SET NULL"), index=True
    )
    key: Mapped[str] = mapped_column(String(400), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    content_type: Mapped[str | None] = mapped_column(String(200))
    size: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Dataset(Base):
    """An uploaded table for circuit analysis; mirrors ``datasets.schemas.DatasetRecord``.

    ``key`` is the file as uploaded; a circuit_q ``circuit.ingest`` task reads it and writes
    ``parquet_key`` (what analysis reads), then the app records what it found: ``status`` goes
    ``processing`` -> ``ready`` | ``failed`` (``error_type``/``error``)."""

    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_owner_created", "owner_id", "created_at"),
        Index("ix_datasets_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(400), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    population: Mapped[str | None] = mapped_column(String(200))
    populations: Mapped[list[str]] = mapped_column(JSONType)
    row_count: Mapped[int] = mapped_column(BigInteger)
    columns: Mapped[Any] = mapped_column(JSONType)
    sample_rows: Mapped[Any] = mapped_column(JSONType)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), server_default="ready")
    error_type: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64))
    parquet_key: Mapped[str | None] = mapped_column(String(400))
    parquet_size: Mapped[int | None] = mapped_column(BigInteger)
    ingest_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    declared_format: Mapped[str | None] = mapped_column(String(16))
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PipelineRunRow(Base):
    """A pipeline run (its steps are ``PipelineStepRow``s); ``pipelines.schemas.PipelineRun``."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (Index("ix_pipeline_runs_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    definition: Mapped[Any] = mapped_column(JSONType)
    usage: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PipelineStepRow(Base):
    """One step of a pipeline run: its state, task ids, output, usage, error and timings."""

    __tablename__ = "pipeline_steps"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("pipeline_runs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    task_ids: Mapped[list[str]] = mapped_column(JSONType)
    output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[Any] = mapped_column(JSONType, nullable=True)
    model: Mapped[str | None] = mapped_column(String(64))
    usage: Mapped[Any] = mapped_column(JSONType, nullable=True)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PurgedRecord(Base):
    """A tombstone: a record retention deleted, so the API answers 410 ``purged``, not 404."""

    __tablename__ = "purged_records"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TokenUsageRow(Base):
    """One model call's tokens: the agent's own calls and those made inside tasks."""

    __tablename__ = "token_usage"
    __table_args__ = (Index("ix_token_usage_owner_day", "owner_id", "day"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    thread_id: Mapped[str | None] = mapped_column(
        ForeignKey("threads.id", ondelete="SET NULL"), index=True
    )
    task_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("task_runs.id", ondelete="SET NULL"), index=True
    )
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    provider_model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)
    day: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Turn(Base):
    """One assistant turn in a thread (its event stream lives in Redis, its record here).

    At most one turn per thread is ``running`` (a partial unique index); with the ``enqueue``
    double-texting policy later ones wait as ``queued`` with their message in ``content``.
    """

    __tablename__ = "turns"
    __table_args__ = (
        Index("ix_turns_thread_created", "thread_id", "created_at"),
        Index("ux_turns_owner_idempotency", "owner_id", "idempotency_key", unique=True),
        Index("ix_turns_status", "status"),
        Index(
            "uq_turns_thread_running",
            "thread_id",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(IdColumn(), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))
    content: Mapped[str | None] = mapped_column(Text)
    user_message_id: Mapped[str] = mapped_column(IdColumn())
    final_message_id: Mapped[str | None] = mapped_column(IdColumn())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_holder: Mapped[str | None] = mapped_column(String(100))
    resumes: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ResearchSession(Base):
    """A stateful Python session: its process lives on one python_q worker (``worker``), its
    state in the object store (``snapshot_key``); this row is the record of both."""

    __tablename__ = "research_sessions"
    __table_args__ = (
        Index("ix_research_sessions_owner_created", "owner_id", "created_at"),
        Index("ux_research_sessions_owner_idempotency", "owner_id", "idempotency_key", unique=True),
        Index(
            "uq_research_sessions_thread_active",
            "thread_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    id: Mapped[str] = mapped_column(IdColumn(), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    thread_id: Mapped[str | None] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(255))
    snapshot_key: Mapped[str | None] = mapped_column(String(400))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    cells: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    variables: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    input_files: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    limits: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    restores: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_call_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
