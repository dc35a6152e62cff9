"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.app.deps import ServicesDep
from corral.app.health.sandbox import sandbox_layers
from corral.app.problems import problem_response, problem_responses
from corral.task_schemas import Queue

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving. No auth; for load balancers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses=problem_responses(503))
async def readyz(services: ServicesDep, request: Request) -> JSONResponse:
    """Readiness: Redis, the database and a live worker on every queue (and each worker's sandbox
    capabilities). 503 names what is missing. No auth."""
    ready = await services.readiness.check()
    python_workers = ready.queues.get(Queue.PYTHON.value, [])
    layers = await sandbox_layers(services.redis, python_workers) if ready.redis else {}
    body: dict[str, Any] = {
        "status": "ready" if ready.ok else "not ready",
        "redis": "ok" if ready.redis else "unreachable",
        "queues": ready.queues,
        "problems": ready.problems,
        # per python_q worker: backend, seccomp, cgroups (v2 / v1 / none = rlimits only)
        "sandbox": {worker: caps.model_dump() for worker, caps in layers.items()},
    }
    if ready.ok:
        return JSONResponse(body)
    return problem_response(
        request,
        503,
        "not-ready",
        "not ready: " + "; ".join(ready.problems),
        retry_after_s=5,
        extra=body,
    )
