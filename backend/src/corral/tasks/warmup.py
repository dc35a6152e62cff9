"""Warm each prefork child right after the fork, so its first task is as fast as its tenth.

Without this, the first task on every child pays for what is built lazily: the ``openai.OpenAI``
client (an httpx client with its SSL context, ~20-60 ms), openai's lazily imported resource and
response-type modules, its request type hints, nested chunk models and platform headers (``uname
-p`` in a subprocess), pydantic's validators for a chat completion, a DuckDB connection's
extension load, and the Redis connections of the result backend and of the event streams. Two
parallel steps landing on two fresh children then start far apart (issue 16: 384-456 ms before
any warm-up; ``bench/diamond.py`` measures it). The heavy modules themselves (openai, duckdb,
pyarrow) are imported in the parent before the fork; this builds the per-process objects. The
sandbox is warmed by ``python_tool_task`` in its own ``worker_process_init`` handler.

Every step is best effort: a warm-up failure is logged and never stops the child.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery.signals import worker_process_init

from corral.task_schemas import Queue
from corral.tasks.celery_app import app, settings

log = structlog.get_logger(__name__)


def consumed_queues() -> set[str]:
    """The queues this worker consumes (inherited from the parent by the forked child)."""
    queues = getattr(app.amqp, "queues", None)
    consume_from = getattr(queues, "consume_from", None) or {}
    return {str(name) for name in consume_from}


def _warm_llm() -> None:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    from corral.tasks.llm.clients import client_for, create_params

    create_params()
    for config in settings.llm.models:
        client = client_for(config)
        _ = client.chat.completions  # openai imports its resources on first access
    # pydantic builds a model's validator on first use: build the two the model calls return
    ChatCompletion.model_validate(
        {"id": "w", "object": "chat.completion", "created": 0, "model": "w", "choices": []}
    )
    chunk = {
        "id": "w",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "w",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "w"}, "finish_reason": None}
        ],
        "usage": {
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "total_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    ChatCompletionChunk.model_validate(chunk)
    _warm_openai_internals(chunk)
    for config in settings.llm.models:
        _ = client_for(config).default_headers  # platform headers: `uname -p` runs once


def _warm_openai_internals(chunk: dict[str, Any]) -> None:
    """What openai builds on a child's first call (measured: ~8 ms of its first task): the
    request parameters' type hints and the stream's nested chunk models (private helpers)."""
    from openai._models import construct_type
    from openai._utils import maybe_transform
    from openai.types.chat import ChatCompletionChunk, completion_create_params

    maybe_transform(
        {
            "messages": [{"role": "user", "content": "w"}],
            "model": "w",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        completion_create_params.CompletionCreateParamsStreaming,
    )
    construct_type(type_=ChatCompletionChunk, value=chunk)


def _warm_duckdb() -> None:
    import duckdb
    import pyarrow as pa

    with duckdb.connect(":memory:") as con:
        con.register("w", pa.table({"x": [1]}))
        con.execute("SELECT count(*) FROM w").fetchall()


def _warm_backend() -> None:
    from corral.tasks.stream_notifier import _client as streams_client

    client = getattr(app.backend, "client", None)
    ping = getattr(client, "ping", None)
    if callable(ping):
        ping()
    # The first Redis command of a task (the prerun counter, `started`) uses the streams pool.
    streams_client(settings.redis.streams_url).ping()


def warm_child(queues: set[str]) -> dict[str, float]:
    """Build this child's per-process objects for the queues it consumes; seconds per step."""

    def consumes(queue: Queue) -> bool:  # also its urgent and per-session variants
        return any(name.startswith(queue.value) for name in queues)

    steps: list[tuple[str, Any]] = [("backend", _warm_backend)]
    if consumes(Queue.LLM) or consumes(Queue.CIRCUIT):
        steps.append(("llm", _warm_llm))
    if consumes(Queue.CIRCUIT):
        steps.append(("duckdb", _warm_duckdb))
    took: dict[str, float] = {}
    for name, step in steps:
        start = time.perf_counter()
        try:
            step()
        except Exception as exc:  # a warm-up never stops the child
            log.warning("child warm-up step failed", step=name, error=str(exc))
            continue
        took[name] = round(time.perf_counter() - start, 4)
    return took


@worker_process_init.connect
def _warm_after_fork(**_: Any) -> None:
    queues = consumed_queues()
    took = warm_child(queues)
    log.info("child warmed", queues=sorted(queues), seconds=took)
