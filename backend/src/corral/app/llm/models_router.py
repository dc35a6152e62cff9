"""``GET /api/llm/models``: which models are configured — and, when none is, how to add one.

"No model configured" is a state the web app shows up front (a setup card on the chat page),
not a 503 after the user typed a question.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from corral.app.deps import CurrentUser, ServicesDep
from corral.app.problems import problem_responses

router = APIRouter(prefix="/llm", tags=["llm"])


class ModelInfo(BaseModel):
    name: str = Field(description="What requests, threads and pipelines call it.")
    model: str = Field(description="The provider's model id.")


class SetupExample(BaseModel):
    provider: str
    env: str = Field(description="One line to put in the environment (or .env.app/.env.tasks).")


class SetupHelp(BaseModel):
    detail: str
    settings: list[str]
    examples: list[SetupExample]


class ModelsOut(BaseModel):
    configured: bool = Field(description="False: the chat cannot answer until a model is set.")
    chat_model: str | None = Field(description="The model new conversations use.")
    models: list[ModelInfo]
    setup: SetupHelp | None = Field(description="How to connect a model; only when none is.")


def _line(name: str, base_url: str, key: str, model: str) -> str:
    value = f'[{{"name":"{name}","base_url":"{base_url}","api_key":"{key}","model":"{model}"}}]'
    return f"CORRAL_LLM__MODELS='{value}' TASKS_LLM__MODELS='{value}'"


SETUP = SetupHelp(
    detail="No language model is configured, so the assistant cannot answer yet. Set "
    "CORRAL_LLM__MODELS for the app and TASKS_LLM__MODELS for the workers to the same JSON "
    "list of OpenAI-compatible models and restart. `make up` does this on its own when "
    "OPENAI_API_KEY is set or an Ollama server runs on 127.0.0.1:11434.",
    settings=[
        "CORRAL_LLM__MODELS (the app: the chat's own model calls)",
        "TASKS_LLM__MODELS (the llm_q and circuit_q workers)",
        "CORRAL_CHAT__MODEL (optional: which configured model chats; default: the first)",
    ],
    examples=[
        SetupExample(
            provider="OpenAI",
            env=_line("gpt-4o-mini", "https://api.openai.com/v1", "sk-...", "gpt-4o-mini"),
        ),
        SetupExample(
            provider="Ollama",
            env=_line("llama3.2", "http://127.0.0.1:11434/v1", "none", "llama3.2"),
        ),
        SetupExample(
            provider="vLLM",
            env=_line("qwen", "http://127.0.0.1:8000/v1", "none", "Qwen/Qwen2.5-7B-Instruct"),
        ),
        SetupExample(
            provider="llama.cpp",
            env=_line("local", "http://127.0.0.1:8080/v1", "none", "local"),
        ),
    ],
)


@router.get("/models", response_model=ModelsOut, responses=problem_responses(401))
async def list_models(user: CurrentUser, services: ServicesDep) -> ModelsOut:
    """The configured models (never their URLs or keys), and setup help when there are none."""
    llm = services.settings.llm
    chat = services.agent_models.config(services.settings.chat.model)
    models = [ModelInfo(name=m.name, model=m.model) for m in llm.models]
    return ModelsOut(
        configured=bool(models),
        chat_model=chat.name if chat is not None else None,
        models=models,
        setup=None if models else SETUP,
    )
