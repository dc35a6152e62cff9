"""The language models the test stack is configured with, all served by one ``FakeOpenAI``.

Configured names and the provider model each one sends (script replies under the latter):

- ``primary`` -> ``fake-primary`` (the default model), ``backup`` -> ``fake-backup``,
  ``third`` -> ``fake-third``;
- ``offline`` -> a loopback port nobody listens on (connection refused: a transient error).
"""

from __future__ import annotations

import json
import secrets

from tests.support.fake_openai import FakeOpenAI
from tests.support.procs import free_port

LLM_API_KEY = "test-llm-" + secrets.token_hex(16)

PROVIDER_MODEL = {"primary": "fake-primary", "backup": "fake-backup", "third": "fake-third"}


def llm_models(fake: FakeOpenAI) -> list[dict[str, object]]:
    models: list[dict[str, object]] = [
        {
            "name": name,
            "base_url": fake.base_url,
            "api_key": LLM_API_KEY,
            "model": model,
            "timeout_s": 15,
        }
        for name, model in PROVIDER_MODEL.items()
    ]
    models.append(
        {
            "name": "offline",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "api_key": LLM_API_KEY,
            "model": "fake-offline",
            "timeout_s": 5,
        }
    )
    return models


def llm_env(fake: FakeOpenAI) -> dict[str, str]:
    """For both the app (CORRAL_) and the workers (TASKS_); retries fast so tests stay quick."""
    models = json.dumps(llm_models(fake))
    env = {}
    for prefix in ("CORRAL_LLM__", "TASKS_LLM__"):
        env |= {
            f"{prefix}MODELS": models,
            f"{prefix}DEFAULT_MODEL": "primary",
            f"{prefix}RETRY_BACKOFF_S": "0.02",
            f"{prefix}RETRY_BACKOFF_MAX_S": "0.1",
        }
    return env
