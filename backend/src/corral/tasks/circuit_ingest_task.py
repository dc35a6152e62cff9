"""``circuit.ingest``: an uploaded dataset read, validated and converted to Parquet on circuit_q.

See ``corral.tasks.circuit.ingest``. The web process only streams the upload to the object store
and records what this task reports, so parsing a 2 GB SONATA file never runs where requests are
served.
"""

from __future__ import annotations

from corral.task_schemas import CIRCUIT_INGEST, CircuitIngestInput, CircuitIngestOutput
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.celery_app import settings
from corral.tasks.object_store import get_object_store


@corral_task(CIRCUIT_INGEST)
def circuit_ingest(ctx: TaskContext, params: CircuitIngestInput) -> CircuitIngestOutput:
    """Progress: fetching, reading (per SONATA population), describing, storing."""
    from corral.tasks.circuit.ingest import ingest

    def progress(current: float | None, total: float | None, message: str) -> None:
        ctx.progress(current, total, message)

    return ingest(params, get_object_store(settings.storage), settings.circuit, progress)
