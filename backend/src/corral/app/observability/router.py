"""``GET /metrics`` (Prometheus) and ``GET /api/ops/overview`` (the Operations page, admins)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from corral.app.deps import CurrentUser, ServicesDep
from corral.app.observability import metrics
from corral.app.problems import ProblemError, problem_responses
from corral.app.settings import AppSettings

metrics_router = APIRouter(tags=["operations"])
router = APIRouter(prefix="/ops", tags=["operations"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@metrics_router.get(
    "/metrics",
    response_class=Response,
    include_in_schema=False,  # for Prometheus, not API clients
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus metrics (text format): queues, tasks, workers, waits; docs/operations.md."""
    return Response(await metrics.render(services), media_type=CONTENT_TYPE)


class QueueOut(BaseModel):
    name: str
    depth: int | None = Field(description="Messages waiting; null on a RabbitMQ broker.")
    workers: int = Field(description="Workers consuming it with a fresh heartbeat.")


class TaskCounts(BaseModel):
    task: str
    sent: float = 0
    started: float = 0
    succeeded: float = 0
    failed: float = 0
    lost: float = 0
    wait_count: float = 0
    wait_sum_s: float = 0
    run_count: float = 0
    run_sum_s: float = 0


class WorkerOut(BaseModel):
    name: str
    queues: list[str]
    active: int
    processed: int
    heartbeat_age_s: float
    healthy: bool


class FailureOut(BaseModel):
    task_id: str
    task_name: str
    error_type: str
    message: str
    trace_id: str = ""
    worker: str = ""
    at: float


class OpsOverview(BaseModel):
    at: float = Field(description="Server time (epoch seconds); rates are counter deltas / time.")
    queues: list[QueueOut]
    tasks: list[TaskCounts]
    workers: list[WorkerOut]
    failures: list[FailureOut]


def is_admin(settings: AppSettings, user_id: str) -> bool:
    """Listed in ``admin_user_ids``; with none listed, the dev mode's one local user is."""
    if settings.admin_user_ids:
        return user_id in settings.admin_user_ids
    return settings.auth.mode == "dev" and user_id == settings.auth.dev_user_id


def require_admin(settings: AppSettings, user_id: str) -> None:
    if not is_admin(settings, user_id):
        raise ProblemError(
            403,
            "forbidden",
            "the Operations view is for admins: add your user id to CORRAL_ADMIN_USER_IDS",
        )


@router.get("/overview", response_model=OpsOverview, responses=problem_responses(401, 403, 422))
async def overview(
    user: CurrentUser,
    services: ServicesDep,
    failures: int = Query(default=20, ge=0, le=100, description="Recent failures to list."),
) -> OpsOverview:
    """Queues (depth, workers), per-task counters, workers' health and recent failures with
    their trace ids. Admins only (``CORRAL_ADMIN_USER_IDS``)."""
    require_admin(services.settings, user.id)
    snap = await metrics.snapshot(services, failures=failures)
    queue_names = sorted({*(snap.depth or {}), *(q for w in snap.workers for q in w.queues)})
    queues = [
        QueueOut(
            name=q,
            depth=None if snap.depth is None else snap.depth.get(q, 0),
            workers=sum(1 for w in snap.workers if w.healthy and q in w.queues),
        )
        for q in queue_names
    ]
    names = sorted({t for per in snap.counts.values() for t in per})
    tasks = []
    for name in names:
        wait, run = snap.hist["wait"].get(name, {}), snap.hist["run"].get(name, {})
        tasks.append(
            TaskCounts(
                task=name,
                **{c: snap.counts[c].get(name, 0.0) for c in snap.counts},
                wait_count=wait.get("count", 0.0),
                wait_sum_s=wait.get("sum", 0.0),
                run_count=run.get("count", 0.0),
                run_sum_s=run.get("sum", 0.0),
            )
        )
    workers = [
        WorkerOut(
            name=w.name,
            queues=w.queues,
            active=w.active,
            processed=w.processed,
            heartbeat_age_s=round(w.age_s, 1),
            healthy=w.healthy,
        )
        for w in snap.workers
    ]
    failed = [FailureOut.model_validate(f) for f in snap.failures if isinstance(f, dict)]
    return OpsOverview(at=time.time(), queues=queues, tasks=tasks, workers=workers, failures=failed)
