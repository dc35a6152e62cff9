"""The models ``make up`` connects on its own when ``CORRAL_LLM__MODELS`` is empty.

- ``OPENAI_API_KEY`` set: OpenAI's ``gpt-4o-mini`` (chat default) and ``gpt-4o``.
- An Ollama server on 127.0.0.1:11434: every model its ``/v1/models`` lists (asked once, with
  a short timeout, so a machine without Ollama starts just as fast).

Both the app (``CORRAL_``) and the workers (``TASKS_``) get the same list.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

OLLAMA_URL = "http://127.0.0.1:11434/v1"
OPENAI_URL = "https://api.openai.com/v1"
OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o")
_NAME_BAD = re.compile(r"[^A-Za-z0-9._:-]")


def _name(model_id: str) -> str:
    name = _NAME_BAD.sub("-", model_id).strip("-._:") or "model"
    return name[:64]


def ollama_models(base_url: str = OLLAMA_URL, timeout_s: float = 0.5) -> list[str]:
    """Model ids a local Ollama serves; [] when none answers (quickly)."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout_s) as resp:  # noqa: S310
            body: Any = json.loads(resp.read(1_000_000))
    except (OSError, ValueError):
        return []
    data = body.get("data") if isinstance(body, dict) else None
    return [str(m["id"]) for m in data or [] if isinstance(m, dict) and m.get("id")]


def detect(env: dict[str, str], *, ollama_url: str = OLLAMA_URL) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = []
    key = env.get("OPENAI_API_KEY", "").strip()
    if key:
        models += [
            {"name": m, "base_url": OPENAI_URL, "api_key": key, "model": m} for m in OPENAI_MODELS
        ]
    taken = {m["name"] for m in models}
    for model_id in ollama_models(ollama_url):
        name = _name(model_id)
        if name in taken:
            name = _name(f"ollama-{model_id}")
        taken.add(name)
        models.append({"name": name, "base_url": ollama_url, "api_key": "none", "model": model_id})
    return models


def configure(env: dict[str, str], *, ollama_url: str = OLLAMA_URL) -> str:
    """Fill in both model lists when the app's is empty; says what it did (one line)."""
    given = env.get("CORRAL_LLM__MODELS", "").strip()
    if given and given != "[]":
        return "Models: from CORRAL_LLM__MODELS."
    dotenv = Path(".env.app")
    if dotenv.is_file() and "CORRAL_LLM__MODELS=" in dotenv.read_text(errors="replace"):
        return "Models: from CORRAL_LLM__MODELS in .env.app."
    models = detect(env, ollama_url=ollama_url)
    if not models:
        return (
            "Models: none configured — the chat shows how to connect one. Set OPENAI_API_KEY, "
            f"start Ollama ({ollama_url}), or set CORRAL_LLM__MODELS and TASKS_LLM__MODELS."
        )
    value = json.dumps(models)
    env["CORRAL_LLM__MODELS"] = value
    if not env.get("TASKS_LLM__MODELS", "").strip() or env["TASKS_LLM__MODELS"] == "[]":
        env["TASKS_LLM__MODELS"] = value
    sources = []
    if any(m["base_url"] == OPENAI_URL for m in models):
        sources.append("OpenAI (OPENAI_API_KEY)")
    if any(m["base_url"] == ollama_url for m in models):
        sources.append(f"Ollama ({ollama_url})")
    names = ", ".join(m["name"] for m in models)
    return f"Models: {names} — from {' and '.join(sources)}; the chat uses {models[0]['name']}."
