"""One language-model call from the app: check the models, send ``llm.generate``, wait."""

from __future__ import annotations

from collections.abc import Iterable

from corral.app.llm.schemas import GenerateRequest, GenerateResponse
from corral.app.problems import ProblemError
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

# How a failed generation is answered over HTTP (the task's error_type -> status). A model
# that rejects the request or cannot satisfy json_mode is answered 422: the request cannot be
# done as asked (another model, or without json_mode, may do it); 503 when none answered.
ERROR_STATUS: dict[str, int] = {
    "UnknownModel": 422,
    "ProviderRejected": 422,
    "InvalidJSON": 422,
    "ProviderUnavailable": 503,
}


NO_MODEL_DETAIL = (
    "no language model is configured. Set CORRAL_LLM__MODELS (app) and TASKS_LLM__MODELS "
    "(workers) to a JSON list of OpenAI-compatible models, e.g. "
    '[{"name": "gpt-4o-mini", "base_url": "https://api.openai.com/v1", "api_key": "sk-..."}], '
    "or point base_url at a local Ollama (http://127.0.0.1:11434/v1), vLLM or llama.cpp "
    "server; see README.md, 'Connect a model'."
)


class UnknownModels(ValueError):
    """Request names a model the deployment does not configure."""


class NoModelConfigured(ProblemError):
    """The deployment has no language model at all: one problem type everywhere (chat,
    pipelines, generate, tools), 503 without ``retry_after_s`` — waiting does not fix it."""

    def __init__(self) -> None:
        super().__init__(503, "no-model-configured", NO_MODEL_DETAIL, title="No model configured")


class StillRunning(RuntimeError):
    def __init__(self, task_id: str, state: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.state = state


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
        raise NoModelConfigured()
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
            raise StillRunning(
                task_id,
                state,
                f"no answer within {request.timeout_s:g}s (task is {state.lower()}); "
                f"follow it at /api/tasks/{task_id}/events",
            )
    raise AssertionError(f"unhandled outcome {outcome!r}")
