"""``POST /api/llm/generate``: one model call, answered when it is done."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from corral.app.celery_client import BrokerUnavailable
from corral.app.deps import CurrentUser, ServicesDep, ToolsLimit
from corral.app.llm import service
from corral.app.llm.schemas import GenerateError, GenerateRequest, GenerateResponse

router = APIRouter(prefix="/llm", tags=["llm"])


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={code: {"model": GenerateError} for code in (409, 502, 503, 504)},
)
async def generate(
    body: GenerateRequest, user: CurrentUser, services: ServicesDep, _limit: ToolsLimit
) -> GenerateResponse:
    """Counts against the caller's `tools` rate limit."""
    limit = services.settings.max_invoke_timeout_s
    if body.timeout_s > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"timeout_s must be at most {limit:g}; follow longer calls at /api/tasks/{{id}}/events",
        )
    try:
        return await service.generate(services, user.id, body)
    except service.UnknownModels as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except BrokerUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except service.GenerationFailed as exc:
        detail = GenerateError(
            error_type=exc.error_type, message=exc.message, task_id=exc.task_id
        ).model_dump()
        raise HTTPException(exc.status, detail) from exc
