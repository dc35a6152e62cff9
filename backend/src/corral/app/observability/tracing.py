"""Tracing in the app: the provider, FastAPI's instrumentation, trace ids in log lines."""

from __future__ import annotations

import structlog
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from sqlalchemy.ext.asyncio import AsyncEngine

from corral.task_schemas.events import set_trace_id_source
from corral.telemetry import TelemetrySettings, add_trace_id, current_trace_id, setup_tracing

SERVICE = "corral-app"
# Scrapes and probes would be most of the traces and say nothing.
EXCLUDED_URLS = "/metrics,/api/healthz,/api/readyz"


def instrument_database(engine: AsyncEngine) -> None:
    """One span per SQL statement (``db.statement``), under the request's span. The
    instrumentor is a singleton: the first app of a process gets it (one app per process in
    production)."""
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine)


def install_tracing(app: FastAPI, settings: TelemetrySettings) -> None:
    setup_tracing(settings, SERVICE)
    set_trace_id_source(current_trace_id)  # task events written here carry the trace id
    # No span per ASGI message: an SSE stream would make one per event.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    config = structlog.get_config()
    processors = list(config.get("processors", []))
    if add_trace_id not in processors:
        structlog.configure(processors=[add_trace_id, *processors])
