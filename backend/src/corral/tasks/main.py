"""Celery entry point: ``celery -A corral.tasks.main worker -Q <queue>``.

Importing this module registers every task (each worker knows every name, but consumes only the
queues given with ``-Q``) and the lifecycle signal handlers.
"""

from __future__ import annotations

from corral.tasks import (  # noqa: F401  (imported for registration)
    circuit_analysis_task,
    circuit_ingest_task,
    circuit_sample_task,
    lifecycle,
    llm_generate_task,
    observability,
    purge_scratch_task,
    purge_task,
    python_tool_task,
    run_clock,
    session_close_task,  # after python_tool_task: its start-up check runs first
    session_run_task,
    system_echo_task,
    system_fail_task,
    warmup,
)
from corral.tasks.celery_app import app

__all__ = ["app"]
