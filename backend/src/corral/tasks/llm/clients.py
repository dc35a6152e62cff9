"""One ``openai.OpenAI`` client per process and model (prefork children never share sockets)."""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any

import openai

from corral.config import LLMSettings, ModelConfig
from corral.tasks.llm.errors import UnknownModel

_lock = threading.Lock()
_clients: dict[tuple[int, str, str], openai.OpenAI] = {}
_create_params: frozenset[str] | None = None


def client_for(config: ModelConfig) -> openai.OpenAI:
    """Retries are ours (tenacity, with fallbacks), so the client's own are off."""
    key = (os.getpid(), config.name, config.base_url)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = openai.OpenAI(
                api_key=config.api_key.get_secret_value(),
                base_url=config.base_url,
                timeout=config.timeout_s,
                max_retries=0,
            )
            _clients[key] = client
        return client


def create_params() -> frozenset[str]:
    """Keyword arguments ``chat.completions.create`` accepts; anything else goes in extra_body."""
    global _create_params
    if _create_params is None:
        signature = inspect.signature(openai.resources.chat.Completions.create)
        _create_params = frozenset(p for p in signature.parameters if p != "self")
    return _create_params


def split_options(options: dict[str, Any]) -> dict[str, Any]:
    """Known options as keyword arguments; provider-specific ones (``top_k``...) in extra_body."""
    known = create_params()
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = dict(options.get("extra_body") or {})
    for key, value in options.items():
        if key == "extra_body":
            continue
        if key in known:
            kwargs[key] = value
        else:
            extra[key] = value
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def resolve_chain(
    settings: LLMSettings, model: str | None, fallbacks: list[str]
) -> list[ModelConfig]:
    """The primary model then its fallbacks, each once, all configured."""
    primary = model or settings.default_name
    if primary is None:
        raise UnknownModel("no language model is configured on this worker (TASKS_LLM__MODELS)")
    chain: list[ModelConfig] = []
    for name in [primary, *fallbacks]:
        config = settings.get(name)
        if config is None:
            raise UnknownModel(f"unknown model {name!r}; configured: {settings.names()}")
        if config not in chain:
            chain.append(config)
    return chain
