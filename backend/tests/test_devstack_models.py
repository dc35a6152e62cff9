"""``make up`` connects a model on its own: OPENAI_API_KEY and/or a local Ollama's models."""

from __future__ import annotations

import json
import time

from corral.config import LLMSettings
from corral.devstack.models import OPENAI_URL, configure
from tests.support.fake_openai import FakeOpenAI
from tests.support.procs import free_port


def test_an_ollama_server_s_models_are_configured_for_app_and_workers() -> None:
    with FakeOpenAI() as ollama:  # serves GET /v1/models like Ollama's OpenAI API
        ollama.script("llama3.2:latest")
        ollama.script("qwen2.5/coder 7b")
        env: dict[str, str] = {}
        message = configure(env, ollama_url=ollama.base_url)
    models = json.loads(env["CORRAL_LLM__MODELS"])
    assert env["TASKS_LLM__MODELS"] == env["CORRAL_LLM__MODELS"]
    assert [m["model"] for m in models] == ["llama3.2:latest", "qwen2.5/coder 7b"]
    assert all(m["base_url"] == ollama.base_url and m["api_key"] == "none" for m in models)
    settings = LLMSettings(models=models)  # valid as the app and workers will read them
    assert settings.names() == ["llama3.2:latest", "qwen2.5-coder-7b"]
    assert "llama3.2:latest" in message and "Ollama" in message


def test_openai_key_comes_first_and_nothing_listening_is_quick() -> None:
    env = {"OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    started = time.monotonic()
    message = configure(env, ollama_url=f"http://127.0.0.1:{free_port()}/v1")
    assert time.monotonic() - started < 2
    models = json.loads(env["CORRAL_LLM__MODELS"])
    assert [m["name"] for m in models] == ["gpt-4o-mini", "gpt-4o"]
    assert {m["base_url"] for m in models} == {OPENAI_URL}
    assert "gpt-4o-mini" in message and "OPENAI_API_KEY" in message


def test_given_models_are_left_alone_and_none_found_says_what_to_set() -> None:
    given = {"CORRAL_LLM__MODELS": '[{"name": "x"}]'}
    assert configure(dict(given)) == "Models: from CORRAL_LLM__MODELS."
    env: dict[str, str] = {}
    message = configure(env, ollama_url=f"http://127.0.0.1:{free_port()}/v1")
    assert "CORRAL_LLM__MODELS" not in env
    assert "OPENAI_API_KEY" in message and "CORRAL_LLM__MODELS" in message
