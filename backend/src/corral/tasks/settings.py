"""Worker settings: prefix ``TASKS_``, nested delimiter ``__``, file ``.env.tasks``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral.config import (
    BrokerSettings,
    LLMSettings,
    RedisSettings,
    StorageSettings,
    StreamSettings,
)
from corral.tasks.circuit.settings import CircuitSettings
from corral.tasks.sandbox.settings import SandboxSettings
from corral.tasks.sessions.settings import SessionSettings
from corral.telemetry import TelemetrySettings


class CeleryOptionError(ValueError):
    """A ``TASKS_CELERY__<option>`` names no Celery setting or has a bad value."""


def coerce_celery_options(raw: dict[str, Any]) -> dict[str, Any]:
    """Check every override names a real Celery setting and convert it to that setting's type.

    Celery itself silently ignores unknown lowercase keys; we refuse them so a typo never
    leaves a worker running with a setting nobody asked for.
    """
    from celery.app.defaults import NAMESPACES, flatten

    known = dict(flatten(NAMESPACES))
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = name.lower()
        option = known.get(key)
        if option is None:
            close = sorted(k for k in known if key.split("_")[0] in k)[:5]
            hint = f" (did you mean one of {close}?)" if close else ""
            raise CeleryOptionError(f"TASKS_CELERY__{name}: unknown Celery option{hint}")
        if isinstance(value, str) and option.type in {"dict", "tuple", "any", "int", "float"}:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                if option.type in {"dict", "tuple"}:
                    raise CeleryOptionError(
                        f"TASKS_CELERY__{name}: expected JSON for a {option.type}"
                    ) from exc
        try:
            out[key] = option.to_python(value) if value is not None else None
        except (TypeError, ValueError) as exc:
            raise CeleryOptionError(
                f"TASKS_CELERY__{name}={value!r}: not a valid {option.type}"
            ) from exc
    return out


class MaintenanceSettings(BaseModel):
    """Housekeeping scheduled by ``celery beat`` (``TASKS_MAINTENANCE__...``)."""

    purge_interval_s: float = Field(default=3600.0, gt=0, description="How often to purge.")
    scratch_ttl_s: int = Field(default=86_400, ge=0, description="Scratch objects live this long.")
    scratch_kinds: list[str] = Field(
        default_factory=lambda: ["scratch"], description="Object kinds that are scratch."
    )


class RetentionSettings(BaseModel):
    """How long user records are kept (``TASKS_RETENTION__...``); ``system.purge`` on beat.

    Every kind is kept forever unless its ``*_days`` is set. The purge needs the app's database
    (``database_url``, the same URL as ``CORRAL_DATABASE__URL``); without it, it skips."""

    database_url: str | None = Field(
        default=None, description="sqlite+aiosqlite:///... or postgresql+asyncpg://..."
    )
    dataset_days: float | None = Field(default=None, gt=0, description="Datasets (and files).")
    pipeline_run_days: float | None = Field(
        default=None, gt=0, description="Finished pipeline runs and their steps."
    )
    task_run_days: float | None = Field(
        default=None, gt=0, description="Finished task runs, their artifacts and objects."
    )
    batch: int = Field(default=200, ge=1, le=10_000, description="Records per transaction.")
    interval_s: float = Field(default=3600.0, gt=0, description="How often beat sends it.")


class DeliverySettings(BaseModel):
    """Redelivery bounds (``TASKS_DELIVERY__...``); see ``corral.tasks.delivery``."""

    visibility_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Redis broker: override the timeout derived from the registry (tests).",
    )
    visibility_margin_s: float = Field(
        default=60.0, ge=0, description="Added to the longest hard time limit of the queues."
    )
    restore_interval_s: float = Field(
        default=10.0, gt=0, description="Redis broker: seconds between restore sweeps."
    )


class TasksSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TASKS_",
        env_nested_delimiter="__",
        env_file=".env.tasks",
        extra="ignore",
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings, description="python_q: TASKS_SANDBOX__BACKEND etc."
    )
    sessions: SessionSettings = Field(
        default_factory=SessionSettings, description="python_q: TASKS_SESSIONS__* (sessions)."
    )
    circuit: CircuitSettings = Field(
        default_factory=CircuitSettings, description="circuit_q: TASKS_CIRCUIT__* limits."
    )
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="TASKS_RETENTION__*: system.purge."
    )
    telemetry: TelemetrySettings = Field(
        default_factory=TelemetrySettings, description="Traces: TASKS_TELEMETRY__EXPORTER etc."
    )
    task_events: bool = Field(
        default=True,
        description="Send Celery task events (Flower, `celery events`); false turns them off.",
    )
    celery: dict[str, Any] = Field(
        default_factory=dict, description="Any Celery option, e.g. TASKS_CELERY__worker_concurrency"
    )
    expose_tracebacks: bool = Field(
        default=False, description="Put Python tracebacks into `error` events (dev only)."
    )
    result_expires_s: int = Field(default=86_400, ge=60)
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("celery", mode="after")
    @classmethod
    def _known_celery_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        return coerce_celery_options(value)
