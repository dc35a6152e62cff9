"""``circuit.analyze``: a question about a neuron population answered with one safe DuckDB query.

See ``corral.tasks.circuit.analysis`` for the steps and ``corral.tasks.circuit.sql_guard`` for
what SQL may run. DuckDB, pyarrow and h5py (~140 MB, seconds to import) are loaded only by
workers that consume circuit_q, once in the parent before the pool forks.
"""

from __future__ import annotations

import importlib
from typing import Any

from celery.signals import worker_init

from corral.task_schemas import CIRCUIT_ANALYZE, CircuitAnalyzeInput, CircuitAnalyzeOutput, Queue
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.celery_app import settings

_ANALYSIS = "corral.tasks.circuit.analysis"


@worker_init.connect
def _preload_on_circuit_workers(sender: Any = None, **_: Any) -> None:
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    if queues is not None and Queue.CIRCUIT.value in (queues.consume_from or {}):
        importlib.import_module(_ANALYSIS)


@corral_task(CIRCUIT_ANALYZE)
def circuit_analyze(ctx: TaskContext, params: CircuitAnalyzeInput) -> CircuitAnalyzeOutput:
    """Progress: downloading, loading, asking model, running query (and repair steps)."""
    from corral.tasks.circuit.analysis import Deps, run_analysis

    def progress(current: float | None, total: float | None, message: str) -> None:
        ctx.progress(current, total, message)

    deps = Deps(
        circuit=settings.circuit,
        llm=settings.llm,
        storage=settings.storage,
        owner_id=ctx.owner_id,
        progress=progress,
    )
    return run_analysis(params, deps)
