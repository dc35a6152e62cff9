"""One language-model call from the app: check the models, send ``llm.generate``, wait."""

from __future__ import annotations

from collections.abc import Iterable

from corral.app.llm.schemas import GenerateRequest, GenerateResponse
from corral.app.services import Services
from corral.app.streams import (
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskTimedOut,
    long_poll_celery_result,
)
from corral.app.task_runs import service as task_runs
from corral.config import LLMSettings
from corral.task_schemas import LLM_GENERATE, message_priority

# How a failed generation is answered over HTTP (the task's error_type -> status).
ERROR_STATUS: dict[str, int] = {
    "UnknownModel": 422,
    "ProviderRejected": 502,
    "InvalidJSON": 502,
    "ProviderUnavailable": 503,
}


class UnknownModels(ValueError):
    """Request names a model the deployment does not configure."""


class GenerationFailed(RuntimeError):
    def __init__(self, status: int, error_type: str, message: str, task_id: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.task_id = task_id


def check_models(settings: LLMSettings, names: Iterable[str | None]) -> None:
    """Every named model (``None``: the default) must be configured; says which are not."""
    configured = settings.names()
    if not configured:
        raise UnknownModels("no language model is configured (CORRAL_LLM__MODELS is empty)")
    unknown = sorted({n for n in names if n is not None and n not in configured})
    if unknown:
        raise UnknownModels(f"unknown model(s) {unknown}; configured: {configured}")


async def generate(services: Services, owner_id: str, request: GenerateRequest) -> GenerateResponse:
    check_models(services.settings.llm, [request.model, *request.fallback_models])
    task_id = await task_runs.submit(
        services,
        LLM_GENERATE,
        request.task_input(),
        owner_id=owner_id,
        priority=message_priority(request.urgent),
    )
    outcome = await long_poll_celery_result(
        task_id, timeout_s=request.timeout_s, hub=services.hub, backend=services.results
    )
    match outcome:
        case TaskDone(output=output):
            return GenerateResponse.model_validate({**output, "task_id": task_id})
        case TaskFailed(error_type=error_type, message=message):
            status = ERROR_STATUS.get(error_type, 502)
            raise GenerationFailed(status, error_type, message, task_id)
        case TaskCancelled(reason=reason):
            raise GenerationFailed(409, "Cancelled", reason, task_id)
        case TaskTimedOut(state=state):
            raise GenerationFailed(
                504,
                "Timeout",
                f"no answer within {request.timeout_s:g}s (task is {state.lower()}); "
                f"follow it at /api/tasks/{task_id}/events",
                task_id,
            )
    raise AssertionError(f"unhandled outcome {outcome!r}")
