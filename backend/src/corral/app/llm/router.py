"""``POST /api/llm/generate``: one model call, answered when it is done."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from corral.app.celery_client import BrokerUnavailable
from corral.app.deps import CurrentUser, ServicesDep, ToolsLimit
from corral.app.llm import service
from corral.app.llm.schemas import GenerateAccepted, GenerateRequest, GenerateResponse
from corral.app.problems import ProblemError, problem_responses

router = APIRouter(prefix="/llm", tags=["llm"])


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        202: {"model": GenerateAccepted, "description": "Still running at timeout_s"},
        **problem_responses(409, 422, 503),
    },
    summary="Ask a language model once",
)
async def generate(
    body: GenerateRequest, user: CurrentUser, services: ServicesDep, _limit: ToolsLimit
) -> GenerateResponse | JSONResponse:
    """One model call on llm_q (fallback models, JSON mode with repair, response cache),
    answered when it is done; 202 with the task id when it is still running at `timeout_s`.
    A model that rejects the request or cannot produce JSON is a 422 naming the error.
    Counts against the caller's `tools` rate limit.

    Example: `{"prompt": "Name three cortical layers", "max_tokens": 64}`"""
    limit = services.settings.max_invoke_timeout_s
    if body.timeout_s > limit:
        raise _timeout_too_long(body.timeout_s, limit)
    try:
        return await service.generate(services, user.id, body)
    except service.UnknownModels as exc:
        raise ProblemError(
            422,
            "unknown-model",
            str(exc),
            errors=[{"loc": ["body", "model"], "msg": str(exc), "type": "unknown_model"}],
        ) from exc
    except BrokerUnavailable as exc:
        raise ProblemError(503, "broker-unavailable", str(exc), retry_after_s=5) from exc
    except service.StillRunning as exc:
        accepted = GenerateAccepted(
            task_id=exc.task_id,
            status=exc.state,
            events_url=f"/api/tasks/{exc.task_id}/events",
            detail=str(exc),
        )
        return JSONResponse(accepted.model_dump(), status_code=status.HTTP_202_ACCEPTED)
    except service.GenerationFailed as exc:
        kind = "task-cancelled" if exc.status == 409 else _kebab(exc.error_type)
        raise ProblemError(
            exc.status,
            kind,
            exc.message,
            retry_after_s=10 if exc.status == 503 else None,
            extra={"error_type": exc.error_type, "task_id": exc.task_id},
        ) from exc


def _kebab(name: str) -> str:
    """``InvalidJSON`` -> ``invalid-json``, ``ProviderRejected`` -> ``provider-rejected``."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or name[i + 1 : i + 2].islower()):
            out.append("-")
        out.append(ch.lower())
    return "".join(out)


def _timeout_too_long(value: float, limit: float) -> ProblemError:
    msg = f"timeout_s must be at most {limit:g}; follow longer calls at /api/tasks/{{id}}/events"
    return ProblemError(
        422,
        "validation-error",
        msg,
        errors=[{"loc": ["body", "timeout_s"], "msg": msg, "type": "less_than_equal"}],
    )
