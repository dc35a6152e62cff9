"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from corral.app.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(services: ServicesDep) -> JSONResponse:
    ready = await services.readiness.check()
    body: dict[str, Any] = {
        "status": "ready" if ready.ok else "not ready",
        "redis": "ok" if ready.redis else "unreachable",
        "queues": ready.queues,
        "problems": ready.problems,
    }
    return JSONResponse(body, status_code=200 if ready.ok else 503)
