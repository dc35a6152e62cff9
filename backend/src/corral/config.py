"""Settings shared by the app and the workers: Redis, task streams, the object store.

Only this module and ``corral.task_schemas`` may be imported by both ``corral.app`` and
``corral.tasks``. Each side builds its own ``BaseSettings`` subclass (prefix ``CORRAL_`` for the
app, ``TASKS_`` for workers) out of the models defined here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "changethis", "secret", "password", ""})


def reject_placeholder(value: SecretStr | None, field: str) -> SecretStr | None:
    """Secrets have no default; a placeholder copied from an example file is refused."""
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError(f"{field} is a placeholder; set a real secret")
    return value


class RedisSettings(BaseModel):
    """Where Redis is. Either a full ``url`` or parts; the parts are quoted correctly."""

    url: str | None = Field(
        default=None, description="redis:// or rediss:// URL; overrides host/port/auth parts."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    ssl: bool = False
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_ca_certs: Path | None = None
    broker_db: int = Field(default=0, ge=0, le=15)
    backend_db: int = Field(default=1, ge=0, le=15)
    # Streams share the result backend's database so `done` is written in the same transaction
    # as the result (see corral/tasks/result_backend.py).
    streams_db: int = Field(default=1, ge=0, le=15)

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in {"redis", "rediss"}:
            raise ValueError("redis url must start with redis:// or rediss://")
        return value

    def url_for(self, db: int) -> str:
        """A URL for database ``db`` that redis-py, kombu and Celery all accept."""
        if self.url is not None:
            parts = urlsplit(self.url)
            query = parts.query
            if parts.scheme == "rediss" and "ssl_cert_reqs" not in query:
                query = "&".join(q for q in (query, f"ssl_cert_reqs={self.ssl_cert_reqs}") if q)
            return urlunsplit((parts.scheme, parts.netloc, f"/{db}", query, ""))
        auth = ""
        if self.password is not None:
            user = quote(self.username or "", safe="")
            auth = f"{user}:{quote(self.password.get_secret_value(), safe='')}@"
        elif self.username:
            auth = f"{quote(self.username, safe='')}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.ssl else "redis"
        params: dict[str, str] = {}
        if self.ssl:
            params["ssl_cert_reqs"] = self.ssl_cert_reqs
            if self.ssl_ca_certs is not None:
                params["ssl_ca_certs"] = str(self.ssl_ca_certs)
        query = f"?{urlencode(params)}" if params else ""
        return f"{scheme}://{auth}{host}:{self.port}/{db}{query}"

    @property
    def broker_url(self) -> str:
        return self.url_for(self.broker_db)

    @property
    def backend_url(self) -> str:
        return self.url_for(self.backend_db)

    @property
    def streams_url(self) -> str:
        return self.url_for(self.streams_db)


class BrokerSettings(BaseModel):
    """The message broker: Redis (default, the Redis above) or RabbitMQ (``amqp://``).

    One setting switches it (``CORRAL_BROKER__URL`` for the app, ``TASKS_BROKER__URL`` for
    workers); Redis stays the result backend, event streams and rate limits either way.
    """

    url: str | None = Field(
        default=None,
        description="amqp://user:pass@host:5672/vhost for RabbitMQ; unset: Redis broker_db.",
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in {
            "redis",
            "rediss",
            "amqp",
            "amqps",
            "pyamqp",
        }:
            raise ValueError("broker url must start with redis://, rediss:// or amqp://")
        return value

    def resolve(self, redis: RedisSettings) -> str:
        return self.url or redis.broker_url


class StreamSettings(BaseModel):
    """Bounds on every task's event stream."""

    ttl_s: int = Field(default=86_400, ge=60, description="Stream and task metadata lifetime.")
    maxlen: int = Field(default=10_000, ge=100, description="Approximate MAXLEN per stream.")
    inline_result_max_bytes: int = Field(
        default=16_384,
        ge=0,
        description="Results whose JSON is smaller than this ride in the `done` event.",
    )
    hub_readers: int = Field(
        default=4,
        ge=1,
        le=64,
        description="App only: blocking XREAD connections each app process splits its waits over.",
    )


class S3Settings(BaseModel):
    """S3-compatible object store (MinIO in compose, moto's server in tests)."""

    endpoint_url: str | None = Field(
        default=None, description="Endpoint the app and workers use (inside the network)."
    )
    public_endpoint_url: str | None = Field(
        default=None, description="Endpoint put in presigned URLs handed to browsers."
    )
    region: str = "us-east-1"
    bucket: str = "corral"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None

    @field_validator("secret_access_key")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        return reject_placeholder(value, "s3.secret_access_key")


class StorageSettings(BaseModel):
    """Which object store backend: a local directory (embedded default) or S3."""

    backend: Literal["local", "s3"] = "local"
    local_dir: Path = Path(".corral/objects")
    s3: S3Settings = Field(default_factory=S3Settings)

    @model_validator(mode="after")
    def _s3_complete(self) -> StorageSettings:
        if self.backend == "s3" and (
            self.s3.access_key_id is None or self.s3.secret_access_key is None
        ):
            raise ValueError("storage.backend=s3 needs s3.access_key_id and s3.secret_access_key")
        return self


# ---------------------------------------------------------------------------------------------
# Language models (read by the app for the agent and validation, and by the llm_q workers)
# ---------------------------------------------------------------------------------------------

NO_KEY = "none"
"""``api_key`` value for a keyless local server (Ollama, llama.cpp); refused for public hosts."""

_KEY_PLACEHOLDERS = frozenset(
    {"sk-xxx", "sk-...", "your-api-key", "your_api_key", "api-key", "apikey", "xxx", "<key>"}
)
_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


def _is_local_host(host: str) -> bool:
    """Loopback, private addresses and in-cluster names: where a keyless server may live."""
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost" or ("." not in host and ":" not in host):
        return True  # localhost or a single-label service name such as `ollama`
    if host.endswith((".local", ".internal", ".lan", ".localhost")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


class ModelConfig(BaseModel):
    """One OpenAI-compatible endpoint and model, referred to by ``name`` everywhere else."""

    name: str = Field(pattern=_MODEL_NAME, description="What requests and pipelines call it.")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    api_key: SecretStr = Field(
        description=f'Bearer key; "{NO_KEY}" only for a keyless server on a local/private host.'
    )
    model: str = Field(min_length=1, description="The provider's model id.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Default request options (temperature, max_tokens, extra_body, ...).",
    )
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Per provider request.")
    stream_usage: bool = Field(
        default=True,
        description="Send stream_options.include_usage (turn off for servers that reject it).",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL such as https://api.openai.com/v1")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _real_key(self) -> ModelConfig:
        key = self.api_key.get_secret_value().strip()
        if key.lower() == NO_KEY:
            if not _is_local_host(urlsplit(self.base_url).hostname or ""):
                raise ValueError(
                    f'model {self.name}: api_key "{NO_KEY}" is only allowed for a server on a '
                    "local or private host; set the provider's key"
                )
            return self
        reject_placeholder(self.api_key, f"llm model {self.name}: api_key")
        if key.lower() in _KEY_PLACEHOLDERS:
            raise ValueError(f"llm model {self.name}: api_key is a placeholder; set a real key")
        return self


class LLMSettings(BaseModel):
    """The models workers may call, retries, and the response cache."""

    models: list[ModelConfig] = Field(default_factory=list)
    default_model: str | None = Field(default=None, description="Default: the first model.")
    retry_attempts: int = Field(
        default=3, ge=1, le=10, description="Provider requests per model on 429/5xx/timeouts."
    )
    retry_backoff_s: float = Field(default=0.5, ge=0, description="First backoff; doubles.")
    retry_backoff_max_s: float = Field(default=8.0, ge=0)
    cache_ttl_s: int = Field(default=86_400, ge=1)
    cache_shared: bool = Field(
        default=False,
        description="Share cached answers across users (off: a hit would reveal another user's "
        "identical prompt).",
    )
    stream_flush_s: float = Field(default=0.05, ge=0, description="Batch streamed text this long")
    stream_flush_chars: int = Field(default=20, ge=1, description="... or this many characters.")

    @model_validator(mode="after")
    def _consistent(self) -> LLMSettings:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"llm.models: duplicate names {duplicates}")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(
                f"llm.default_model {self.default_model!r} is not among llm.models {names}"
            )
        return self

    @property
    def default_name(self) -> str | None:
        if self.default_model is not None:
            return self.default_model
        return self.models[0].name if self.models else None

    def get(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def names(self) -> list[str]:
        return [m.name for m in self.models]
