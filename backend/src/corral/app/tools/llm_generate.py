"""The ``llm_generate`` tool: one ``llm.generate`` call with the same arguments as the task."""

from __future__ import annotations

from pydantic import BaseModel

from corral.app.llm.service import UnknownModels, check_models
from corral.app.tools.registry import Tool, ToolCall, register_tool
from corral.app.tools.service import BadArguments
from corral.task_schemas import LLM_GENERATE, LLMGenerateInput, Queue


async def _build_input(args: LLMGenerateInput, call: ToolCall) -> tuple[BaseModel, Queue | None]:
    try:
        check_models(call.services.settings.llm, [args.model, *args.fallback_models])
    except UnknownModels as exc:
        raise BadArguments(
            "llm_generate", [{"loc": ["model"], "msg": str(exc), "type": "unknown_model"}]
        ) from exc
    return args, None


register_tool(
    Tool(
        name="llm_generate",
        description="Ask a configured language model (fallbacks, JSON mode with repair, cache).",
        arguments=LLMGenerateInput,
        task=LLM_GENERATE,
        build_input=_build_input,
    )
)
