"""App settings: prefix ``CORRAL_``, nested delimiter ``__``, file ``.env.app``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral.app.budgets.settings import BudgetSettings
from corral.app.chat.settings import ChatSettings
from corral.app.db.settings import DatabaseSettings
from corral.app.ratelimit.settings import RateLimitSettings
from corral.app.task_runs.settings import TaskRunSettings
from corral.config import (
    BrokerSettings,
    LLMSettings,
    RedisSettings,
    StorageSettings,
    StreamSettings,
    reject_placeholder,
)
from corral.telemetry import TelemetrySettings


class AuthSettings(BaseModel):
    """``dev``: one local user with an HS256 token; ``oidc``: RS/ES tokens checked with JWKS."""

    mode: Literal["dev", "oidc"] = "dev"
    dev_secret: SecretStr | None = Field(
        default=None, description="Signs the dev user's token; required in dev mode."
    )
    dev_user_id: str = "dev-user"
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_client_id: str | None = Field(
        default=None,
        description="Public client id for the web UI's single sign-on (code + PKCE); "
        "unset: the UI only takes pasted tokens.",
    )
    oidc_scopes: str = Field(default="openid profile email", description="Scopes the UI asks for.")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    leeway_s: int = Field(default=30, ge=0, le=600, description="Allowed clock skew.")

    @field_validator("dev_secret")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        value = reject_placeholder(value, "auth.dev_secret")
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("auth.dev_secret must be at least 32 characters")
        return value

    @model_validator(mode="after")
    def _mode_complete(self) -> AuthSettings:
        if self.mode == "dev" and self.dev_secret is None:
            raise ValueError("auth.mode=dev needs CORRAL_AUTH__DEV_SECRET (32+ random characters)")
        if self.mode == "oidc" and not (
            self.oidc_issuer and self.oidc_audience and self.oidc_jwks_url
        ):
            raise ValueError(
                "auth.mode=oidc needs CORRAL_AUTH__OIDC_ISSUER, _OIDC_AUDIENCE and _OIDC_JWKS_URL"
            )
        return self


class AppStorageSettings(StorageSettings):
    """The app's view of the object store: adds local signed URLs and the upload cap."""

    signing_secret: SecretStr | None = Field(
        default=None, description="Signs local-backend URLs (HMAC); required when backend=local."
    )
    public_base_url: str | None = Field(
        default=None,
        description="Origin put in local signed URLs, e.g. http://127.0.0.1:8078; "
        "unset: URLs are relative to the app (fine for the app's own frontend).",
    )
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    url_ttl_s: int = Field(default=300, ge=1, le=7 * 86_400, description="Presigned URL life.")

    @field_validator("signing_secret")
    @classmethod
    def _secret_strength(cls, value: SecretStr | None) -> SecretStr | None:
        value = reject_placeholder(value, "storage.signing_secret")
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("storage.signing_secret must be at least 32 characters")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("storage.public_base_url must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _local_needs_secret(self) -> AppStorageSettings:
        if self.backend == "local" and self.signing_secret is None:
            raise ValueError(
                "storage.backend=local needs CORRAL_STORAGE__SIGNING_SECRET (32+ random characters)"
            )
        return self


class DatasetSettings(BaseModel):
    """Uploaded datasets for circuit analysis (``CORRAL_DATASETS__...``)."""

    max_upload_bytes: int = Field(default=500 * 1024 * 1024, ge=1, description="Upload cap.")
    worker_base_url: str | None = Field(
        default=None,
        description="Origin the circuit_q workers reach this app at, e.g. http://app:8078; "
        "needed with the local storage backend (its signed URLs are served by the app). "
        "Unset: storage.public_base_url.",
    )
    preview_rows: int = Field(default=5, ge=0, le=100, description="Sample rows kept per dataset.")
    result_url_ttl_s: int = Field(
        default=3600, ge=60, le=7 * 86_400, description="Life of result download URLs."
    )
    ingest_check_interval_s: float = Field(
        default=15.0,
        ge=0,
        le=3600,
        description="Seconds between checks of datasets still processing (an ingest whose task "
        "was lost, e.g. by a Redis flush, is sent again); 0 turns the periodic check off.",
    )
    ingest_lost_after_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="An ingest whose event stream is gone this long after it was sent (and "
        "which stored no result) is lost and sent again.",
    )
    max_ingest_attempts: int = Field(default=3, ge=1, le=20, description="Sends per dataset.")

    @field_validator("worker_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("datasets.worker_base_url must start with http:// or https://")
        return value.rstrip("/") if value else value


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_",
        env_nested_delimiter="__",
        env_file=".env.app",
        extra="ignore",
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    storage: AppStorageSettings = Field(default_factory=AppStorageSettings)
    auth: AuthSettings
    llm: LLMSettings = Field(default_factory=LLMSettings)
    datasets: DatasetSettings = Field(default_factory=DatasetSettings)
    frontend_dir: Path | None = Field(
        default=None, description="Built frontend served at /; default: the repo's frontend/."
    )
    readiness_cache_s: float = Field(default=5.0, ge=0)
    readiness_timeout_s: float = Field(default=1.0, gt=0, le=10)
    max_invoke_timeout_s: float = Field(default=600.0, gt=0)
    max_json_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Cap on non-upload request bodies; larger ones get 413 before parsing.",
    )
    sse_ping_s: float = Field(default=15.0, gt=0)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    task_runs: TaskRunSettings = Field(default_factory=TaskRunSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    telemetry: TelemetrySettings = Field(
        default_factory=TelemetrySettings, description="Traces: CORRAL_TELEMETRY__EXPORTER etc."
    )
    admin_user_ids: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Users who may see the Operations page (/api/ops/*), by user id.",
    )
