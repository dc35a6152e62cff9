"""Settings shared by the app and the workers: Redis, task streams, the object store.

Only this module and ``corral.task_schemas`` may be imported by both ``corral.app`` and
``corral.tasks``. Each side builds its own ``BaseSettings`` subclass (prefix ``CORRAL_`` for the
app, ``TASKS_`` for workers) out of the models defined here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
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
    streams_db: int = Field(default=2, ge=0, le=15)

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


class StreamSettings(BaseModel):
    """Bounds on every task's event stream."""

    ttl_s: int = Field(default=86_400, ge=60, description="Stream and task metadata lifetime.")
    maxlen: int = Field(default=10_000, ge=100, description="Approximate MAXLEN per stream.")
    inline_result_max_bytes: int = Field(
        default=16_384,
        ge=0,
        description="Results whose JSON is smaller than this ride in the `done` event.",
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
