"""Following dataset ingestion: ``circuit.ingest`` (and ``circuit.build_sample``) on circuit_q.

The app never reads an uploaded file. It records the dataset as ``processing`` with the id of
the task it is about to send, sends it, and follows the task's outcome (``long_poll_celery_result``
from the stream's start, so a task that finished first is not missed):

- ``done``: the worker's findings (columns, types, rows, populations, first rows, the Parquet
  key) are written and the dataset is ``ready``;
- an error of the file (``INGEST_USER_ERRORS``): ``failed`` with that typed error;
- anything else (a lost worker or message, a flushed Redis): the ingest is sent again, up to
  ``max_ingest_attempts``; the source file is still in the object store, so nothing is lost.

Every state change is a compare-and-set on the task id in SQL, so app processes that follow the
same dataset (after a restart every process picks up every ``processing`` row) agree.
A periodic check (``check_forever``) covers what no waiter sees: a task whose stream vanished
with a Redis flush, or a restart.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import structlog

from corral.app.celery_client import BrokerUnavailable
from corral.app.datasets.repository import DatasetRepository
from corral.app.datasets.schemas import DatasetRecord
from corral.app.db.base import utcnow
from corral.app.services import Services
from corral.app.streams import (
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskTimedOut,
    long_poll_celery_result,
)
from corral.app.streams.long_poll import outcome_from_backend
from corral.app.task_runs import service as task_runs
from corral.task_schemas import (
    CIRCUIT_BUILD_SAMPLE,
    CIRCUIT_INGEST,
    INGEST_USER_ERRORS,
    PRIORITY_NORMAL,
    SAMPLE_DATASET_ID,
    CircuitIngestInput,
    CircuitIngestOutput,
    CircuitSampleInput,
    TaskSpec,
    task_events_key,
)

log = structlog.get_logger(__name__)


def repository(services: Services) -> DatasetRepository:
    return DatasetRepository(services.db)


def _watch_key(dataset_id: str) -> str:
    return f"dataset-ingest:{dataset_id}"


def _spec_and_input(services: Services, record: DatasetRecord) -> tuple[TaskSpec[Any, Any], Any]:
    preview = services.settings.datasets.preview_rows
    if record.id == SAMPLE_DATASET_ID:
        return CIRCUIT_BUILD_SAMPLE, CircuitSampleInput(preview_rows=preview)
    assert record.parquet_key is not None
    return CIRCUIT_INGEST, CircuitIngestInput(
        source_key=record.key,
        parquet_key=record.parquet_key,
        filename=record.name[:255],
        declared_format=record.declared_format,
        population=record.population,
        preview_rows=preview,
        max_bytes=max(services.settings.datasets.max_upload_bytes, record.size),
    )


async def send(services: Services, record: DatasetRecord, *, previous_task: str | None) -> bool:
    """Claim the dataset for a new task id (compare-and-set on ``previous_task``), then send.

    Returns False if another process claimed it first or it is no longer processing."""
    repo = repository(services)
    attempts = record.ingest_attempts + 1
    if attempts > services.settings.datasets.max_ingest_attempts:
        await repo.update_if_task(
            record.id,
            previous_task,
            status="failed",
            error_type="IngestFailed",
            error=f"the ingest task was lost {record.ingest_attempts} times (workers or the "
            "broker restarted while it ran); upload the file again",
        )
        return False
    task_id = str(uuid.uuid4())
    if not await repo.update_if_task(
        record.id, previous_task, task_id=task_id, ingest_attempts=attempts
    ):
        return False
    spec, task_input = _spec_and_input(services, record)
    try:
        await task_runs.submit(
            services,
            spec,
            task_input,
            owner_id=record.owner_id,
            tool="datasets",
            priority=PRIORITY_NORMAL,
            task_id=task_id,
        )
    except BrokerUnavailable as exc:
        # The record keeps the task id; the periodic check sends it again later.
        log.warning("could not send dataset ingest", dataset_id=record.id, error=str(exc))
        return True
    watch(services, record.id, task_id)
    return True


def watch(services: Services, dataset_id: str, task_id: str) -> None:
    key = _watch_key(dataset_id)
    if services.background.running(key):
        return
    try:
        services.background.spawn(key, _follow(services, dataset_id, task_id))
    except Exception as exc:  # shutting down: the next process picks it up
        log.info("not following dataset ingest", dataset_id=dataset_id, error=str(exc))


def _timeout_s(services: Services, spec: TaskSpec[Any, Any]) -> float:
    return task_runs.watch_timeout_s(services, spec)


async def _follow(services: Services, dataset_id: str, task_id: str) -> None:
    spec = CIRCUIT_BUILD_SAMPLE if dataset_id == SAMPLE_DATASET_ID else CIRCUIT_INGEST
    outcome = await long_poll_celery_result(
        task_id, timeout_s=_timeout_s(services, spec), hub=services.hub, backend=services.results
    )
    await apply(services, dataset_id, task_id, outcome)


async def apply(services: Services, dataset_id: str, task_id: str, outcome: Any) -> None:
    repo = repository(services)
    match outcome:
        case TaskDone(output=output):
            found = CircuitIngestOutput.model_validate(output)
            values: dict[str, Any] = {
                "status": "ready",
                "format": found.format.value,
                "parquet_key": found.parquet_key,
                "parquet_size": found.parquet_size,
                "row_count": found.row_count,
                "columns": [c.model_dump() for c in found.columns],
                "sample_rows": found.sample_rows,
                "populations": found.populations,
                "population": found.population,
                "error_type": None,
                "error": None,
            }
            if found.description is not None:
                values["description"] = found.description
            if dataset_id == SAMPLE_DATASET_ID:
                values["size"] = found.parquet_size
            if await repo.update_if_task(dataset_id, task_id, **values):
                log.info("dataset ready", dataset_id=dataset_id, rows=found.row_count)
        case TaskFailed(error_type=error_type, message=message) if error_type in INGEST_USER_ERRORS:
            await repo.update_if_task(
                dataset_id, task_id, status="failed", error_type=error_type, error=message[:10_000]
            )
        case TaskFailed() | TaskCancelled():
            record = await repo.get(dataset_id)
            if record is not None and record.status == "processing" and record.task_id == task_id:
                log.warning("dataset ingest lost; sending again", dataset_id=dataset_id)
                await send(services, record, previous_task=task_id)
        case TaskTimedOut():
            pass  # the periodic check decides (the task may still be queued behind others)


async def _stream_exists(services: Services, task_id: str) -> bool:
    return bool(await services.redis.exists(task_events_key(task_id)))


async def check_once(services: Services) -> int:
    """Follow every processing dataset; send again those whose task is gone. Returns how many
    were sent again."""
    settings = services.settings.datasets
    resent = 0
    for record in await repository(services).processing():
        task_id = record.task_id
        if task_id is None:
            resent += await send(services, record, previous_task=None)
            continue
        if await _stream_exists(services, task_id):
            watch(services, record.id, task_id)
            continue
        outcome = await outcome_from_backend(services.results, task_id)
        if isinstance(outcome, TaskDone | TaskFailed | TaskCancelled):
            await apply(services, record.id, task_id, outcome)
            continue
        # No stream (the app writes `queued` when it sends), no result: lost with Redis, or
        # never sent. Give a fresh send a moment, then stop waiting for it and send again.
        changed = record.updated_at or record.created_at
        if utcnow() - changed >= timedelta(seconds=settings.ingest_lost_after_s):
            waiter = services.background.get(_watch_key(record.id))
            if waiter is not None:
                waiter.cancel()
                await asyncio.wait({waiter}, timeout=5)
            log.warning("dataset ingest lost; sending again", dataset_id=record.id)
            resent += await send(services, record, previous_task=task_id)
    return resent


async def check_forever(services: Services) -> None:
    interval = services.settings.datasets.ingest_check_interval_s
    while True:
        try:
            await check_once(services)
        except Exception as exc:
            log.error("dataset ingest check failed", error=repr(exc))
        await asyncio.sleep(interval)
