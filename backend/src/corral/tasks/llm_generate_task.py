"""``llm.generate``: one language-model call with retries, fallbacks, JSON repair and a cache."""

from __future__ import annotations

from typing import Any

from corral.task_schemas import LLM_GENERATE, LLMGenerateInput, LLMGenerateOutput
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.celery_app import settings
from corral.tasks.llm.cache import ResponseCache
from corral.tasks.llm.generate import Generation


@corral_task(LLM_GENERATE)
def llm_generate(ctx: TaskContext, params: LLMGenerateInput) -> LLMGenerateOutput:
    """See ``corral.tasks.llm.generate`` for the order of retries, fallbacks and repairs."""

    def progress(message: str, data: Any) -> None:
        ctx.progress(message=message, data=data)

    cache = ResponseCache(settings.redis.streams_url, settings.llm.cache_ttl_s)
    return Generation(settings.llm, params, progress, cache, owner_id=ctx.owner_id).run()
