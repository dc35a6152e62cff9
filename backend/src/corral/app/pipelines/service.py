"""Starting, reading, listing and cancelling the caller's pipeline runs."""

from __future__ import annotations

import asyncio
import uuid

from corral.app.clock import now
from corral.app.llm.service import NoModelConfigured
from corral.app.pipelines.dag import validate
from corral.app.pipelines.repository import PipelineRunRepository
from corral.app.pipelines.runner import PipelineRunner
from corral.app.pipelines.schemas import (
    CancelOut,
    PipelineRun,
    PipelineRunRequest,
    PipelineRunSummary,
    StepError,
    StepState,
)
from corral.app.records import retention
from corral.app.services import Services
from corral.app.task_runs import service as task_runs
from corral.task_schemas import CancelledEvent

CANCEL_WAIT_S = 5.0
"""How long DELETE waits for the scheduler to record the cancellation before answering."""


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"pipeline run {run_id} not found")


class RunAlreadyFinished(RuntimeError):
    pass


KIND = "pipeline_run"
"""Its name in retention settings and tombstones."""


def repository(services: Services) -> PipelineRunRepository:
    return PipelineRunRepository(services.db, services.redis, services.settings.streams)


def _scheduler_key(run_id: str) -> str:
    return f"pipeline:{run_id}"


async def start_run(services: Services, owner_id: str, request: PipelineRunRequest) -> PipelineRun:
    """Validate (``PipelineInvalid`` lists every problem), record, and start the scheduler."""
    llm = services.settings.llm
    if not llm.names():
        raise NoModelConfigured()
    validate(request, models=llm.names(), default_model=llm.default_name)
    run = PipelineRun(
        run_id=str(uuid.uuid4()),
        owner_id=owner_id,
        created_at=now(),
        steps=[StepState(name=s.name, kind=s.kind) for s in request.steps],
        definition=request,
    )
    repo = repository(services)
    await repo.create(run)
    runner = PipelineRunner(services, repo, run.model_copy(deep=True))
    services.background.spawn(_scheduler_key(run.run_id), runner.execute())
    return run


async def get_owned(services: Services, run_id: str, owner_id: str) -> PipelineRun:
    """The run, or ``RunNotFound``; 410 ``purged`` if retention deleted it."""
    run = await repository(services).get(run_id)
    if run is None or run.owner_id != owner_id:
        await retention.raise_if_purged(services, KIND, run_id, owner_id, f"pipeline run {run_id}")
        raise RunNotFound(run_id)
    return run


async def list_runs(services: Services, owner_id: str, limit: int) -> list[PipelineRunSummary]:
    runs = await repository(services).list_for_owner(owner_id, limit)
    return [
        PipelineRunSummary(
            run_id=r.run_id,
            status=r.status,
            created_at=r.created_at,
            finished_at=r.finished_at,
            steps={s.name: s.status for s in r.steps},
        )
        for r in runs
    ]


async def cancel_run(services: Services, run_id: str, owner_id: str) -> CancelOut:
    """Raise the flag, then cancel every step task (read after the flag, so none is missed)."""
    run = await get_owned(services, run_id, owner_id)
    if run.status != "running":
        raise RunAlreadyFinished(f"pipeline run {run_id} already finished ({run.status})")
    repo = repository(services)
    await repo.request_cancel(run_id)
    run = await get_owned(services, run_id, owner_id)
    cancelled = 0
    for step in run.steps:
        if step.terminal:
            continue
        for task_id in step.task_ids:
            try:
                await task_runs.cancel(services, task_id, owner_id)
                cancelled += 1
            except (task_runs.TaskAlreadyFinished, task_runs.TaskNotFound):
                pass
    scheduler = services.background.get(_scheduler_key(run_id))
    if scheduler is not None:
        await asyncio.wait({scheduler}, timeout=CANCEL_WAIT_S)
    else:
        # No scheduler in this process (it died with an earlier one): record the end here.
        for step in run.steps:
            if not step.terminal:
                step.status = "cancelled" if step.task_ids else "skipped"
                step.error = StepError(type="Cancelled", message="cancelled by user")
                step.finished_at = now()
        run.status, run.error, run.finished_at = "cancelled", "cancelled by user", now()
        await repo.save(run)
        await repo.publish(run_id, CancelledEvent(reason="cancelled by user"))
    final = await get_owned(services, run_id, owner_id)
    return CancelOut(run_id=run_id, status=final.status, cancelled_tasks=cancelled)
