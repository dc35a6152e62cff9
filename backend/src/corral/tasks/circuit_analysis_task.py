"""``circuit.analyze``: a question about a neuron population answered with one safe DuckDB query.

See ``corral.tasks.circuit.analysis`` for the steps and ``corral.tasks.circuit.sql_guard`` for
what SQL may run.
"""

from __future__ import annotations

from corral.task_schemas import CIRCUIT_ANALYZE, CircuitAnalyzeInput, CircuitAnalyzeOutput
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.celery_app import settings
from corral.tasks.circuit.analysis import Deps, run_analysis


@corral_task(CIRCUIT_ANALYZE)
def circuit_analyze(ctx: TaskContext, params: CircuitAnalyzeInput) -> CircuitAnalyzeOutput:
    """Progress: downloading, loading, asking model, running query (and repair steps)."""

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
