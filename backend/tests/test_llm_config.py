"""Model configuration: secrets without defaults, placeholders refused, env JSON parsing."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from corral.app.settings import AppSettings
from corral.config import LLMSettings, ModelConfig
from corral.tasks.settings import TasksSettings
from tests.support.procs import env_vars

KEY = "sk-test-0123456789abcdef"


def model(**over: object) -> dict[str, object]:
    return {"name": "m", "base_url": "https://api.openai.com/v1", "api_key": KEY,
            "model": "gpt-4o-mini", **over}  # fmt: skip


def test_api_key_is_required() -> None:
    raw = model()
    del raw["api_key"]
    with pytest.raises(ValidationError, match="api_key"):
        ModelConfig.model_validate(raw)


@pytest.mark.parametrize("key", ["changeme", "", "  ", "sk-xxx", "your-api-key", "secret"])
def test_placeholder_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        ModelConfig.model_validate(model(api_key=key))


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:11434/v1", "http://localhost:8080/v1", "http://ollama:11434/v1",
     "http://10.0.0.5:8000/v1", "http://[::1]:8080/v1", "http://gpu-box.internal/v1"],
)  # fmt: skip
def test_keyless_none_allowed_for_local_servers(base_url: str) -> None:
    config = ModelConfig.model_validate(model(api_key="none", base_url=base_url))
    assert config.api_key.get_secret_value() == "none"


@pytest.mark.parametrize("base_url", ["https://api.openai.com/v1", "https://openrouter.ai/api/v1"])
def test_keyless_none_refused_for_public_hosts(base_url: str) -> None:
    with pytest.raises(ValidationError, match="only allowed for a server on a local"):
        ModelConfig.model_validate(model(api_key="none", base_url=base_url))


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValidationError, match="base_url must be an http"):
        ModelConfig.model_validate(model(base_url="api.openai.com/v1"))
    assert ModelConfig.model_validate(model(base_url="http://h:1/v1/")).base_url == "http://h:1/v1"


def test_settings_consistency() -> None:
    with pytest.raises(ValidationError, match="duplicate names"):
        LLMSettings.model_validate({"models": [model(), model()]})
    with pytest.raises(ValidationError, match="default_model 'x' is not among"):
        LLMSettings.model_validate({"models": [model()], "default_model": "x"})
    two = LLMSettings.model_validate({"models": [model(), model(name="n")]})
    assert two.default_name == "m" and two.names() == ["m", "n"]
    assert LLMSettings().default_name is None


def test_env_json_for_app_and_workers() -> None:
    models = json.dumps([model(name="fast", options={"temperature": 0, "top_k": 5})])
    env = {
        "TASKS_LLM__MODELS": models, "TASKS_LLM__DEFAULT_MODEL": "fast",
        "CORRAL_LLM__MODELS": models, "CORRAL_AUTH__DEV_SECRET": "x" * 40,
        "CORRAL_STORAGE__SIGNING_SECRET": "y" * 40,
    }  # fmt: skip
    with env_vars(env):
        tasks = TasksSettings()
        app = AppSettings()
    for llm in (tasks.llm, app.llm):
        (config,) = llm.models
        assert config.name == "fast" and config.options == {"temperature": 0, "top_k": 5}
        assert config.api_key.get_secret_value() == KEY
        assert KEY not in repr(llm) and KEY not in llm.model_dump_json()
    assert tasks.llm.default_model == "fast"


def test_bad_env_json_is_a_clear_error() -> None:
    bad = {"TASKS_LLM__MODELS": json.dumps([model(api_key="changeme")])}
    with env_vars(bad), pytest.raises(ValidationError, match="placeholder"):
        TasksSettings()
