"""Tracing in the app: the provider, FastAPI's instrumentation, trace ids in log lines."""

from __future__ import annotations

import weakref
from typing import Any

import structlog
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import get_meter
from sqlalchemy.ext.asyncio import AsyncEngine

from corral.task_schemas.events import set_trace_id_source
from corral.telemetry import (
    TelemetrySettings,
    add_trace_id,
    current_trace_id,
    instrument_redis,
    setup_tracing,
)

SERVICE = "corral-app"
_INSTRUMENTED: weakref.WeakSet[Any] = weakref.WeakSet()
# Scrapes and probes would be most of the traces and say nothing.
EXCLUDED_URLS = "/metrics,/api/healthz,/api/readyz"


def instrument_database(engine: AsyncEngine) -> None:
    """One span per SQL statement (``db.statement``), under the request's span.

    Uses the SQLAlchemy instrumentation's ``EngineTracer`` per engine: its instrumentor is once
    per process (a second app in a process would get nothing) and its declared version range
    stops below SQLAlchemy 2.1, whose event hooks it uses are unchanged."""
    if engine.sync_engine in _INSTRUMENTED:
        return
    _INSTRUMENTED.add(engine.sync_engine)
    connections = get_meter(__name__).create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    EngineTracer(trace.get_tracer(__name__), engine.sync_engine, connections)  # type: ignore[no-untyped-call]


def install_tracing(app: FastAPI, settings: TelemetrySettings) -> None:
    setup_tracing(settings, SERVICE)
    set_trace_id_source(current_trace_id)  # task events written here carry the trace id
    instrument_redis()  # sends, event writes, leases: spans under the request's span
    # No span per ASGI message: an SSE stream would make one per event.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    config = structlog.get_config()
    processors = list(config.get("processors", []))
    if add_trace_id not in processors:
        structlog.configure(processors=[add_trace_id, *processors])
