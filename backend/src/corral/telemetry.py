"""Tracing shared by the app and the workers (OpenTelemetry), see docs/operations.md.

Trace context is always created and propagated: every request and task has a trace id, carried
to the workers in the Celery message headers (``traceparent``), written into every task event
and log line. *Exporting* is what settings turn on: ``exporter`` = ``none`` (default: spans are
not recorded, only their ids exist), ``console`` (dev), ``otlp`` (a collector's OTLP/HTTP
endpoint) or ``file`` (JSON lines, used by tests to collect spans of several processes).

One ``TracerProvider`` per process, installed once; ``setup_tracing`` may be called again (a new
app in the same process, a forked worker child) and re-points its sampler and exporter.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from pydantic import BaseModel, Field

TRACER_NAME = "corral"


class TelemetrySettings(BaseModel):
    """``CORRAL_TELEMETRY__*`` (app) / ``TASKS_TELEMETRY__*`` (workers)."""

    exporter: Literal["none", "console", "otlp", "file"] = Field(
        default="none",
        description="Where finished spans go; none: ids are still made and propagated.",
    )
    otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces",
        max_length=500,
        description="OTLP/HTTP traces endpoint of a collector (exporter=otlp).",
    )
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of new traces recorded when exporting."
    )
    file_path: Path | None = Field(
        default=None, description="exporter=file: spans appended here as JSON lines (tests)."
    )
    service_name: str | None = Field(default=None, max_length=100)


class _Switch(Sampler):
    """Root sampler that follows the current settings (off: ids only, nothing recorded)."""

    def __init__(self) -> None:
        self.ratio = 0.0
        self._ratio_sampler: Sampler = TraceIdRatioBased(0.0)

    def set_ratio(self, ratio: float) -> None:
        self.ratio = ratio
        self._ratio_sampler = TraceIdRatioBased(ratio)

    def should_sample(self, parent_context: Any, trace_id: int, *args: Any, **kwargs: Any) -> Any:
        if self.ratio <= 0.0:
            return SamplingResult(Decision.DROP)
        if self.ratio >= 1.0:
            return SamplingResult(Decision.RECORD_AND_SAMPLE)
        return self._ratio_sampler.should_sample(parent_context, trace_id, *args, **kwargs)

    def get_description(self) -> str:
        return f"CorralSwitch({self.ratio})"


class _Fanout(SpanProcessor):
    """The provider's one processor; its delegates are swapped by ``setup_tracing``."""

    def __init__(self) -> None:
        self.delegates: list[SpanProcessor] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        for d in self.delegates:
            d.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for d in self.delegates:
            d.on_end(span)

    def shutdown(self) -> None:
        for d in self.delegates:
            d.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(d.force_flush(timeout_millis) for d in self.delegates)


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per span to a file (several processes may share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s)) + "\n" for s in spans)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
        "span_id": format(ctx.span_id, "016x") if ctx else "",
        "parent_id": format(parent.span_id, "016x") if parent else None,
        "service": str(span.resource.attributes.get("service.name", "")),
        "pid": os.getpid(),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": {k: _jsonable(v) for k, v in (span.attributes or {}).items()},
        "status": span.status.status_code.name,
    }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


_lock = threading.Lock()
_provider: TracerProvider | None = None
_inner_provider: TracerProvider | None = None
_sampler = _Switch()
_fanout = _Fanout()
_configured_pid = 0


def _exporter_processor(settings: TelemetrySettings) -> SpanProcessor | None:
    if settings.exporter == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    if settings.exporter == "file":
        if settings.file_path is None:
            raise ValueError("telemetry.exporter=file needs telemetry.file_path")
        return SimpleSpanProcessor(JsonLinesExporter(settings.file_path))
    return None


def setup_tracing(settings: TelemetrySettings, service_name: str) -> TracerProvider:
    """Install (once per process) or re-point the process's tracer provider."""
    global _provider, _configured_pid
    with _lock:
        if _provider is None:
            resource = Resource.create({"service.name": settings.service_name or service_name})
            _provider = TracerProvider(resource=resource, sampler=ParentBased(_sampler))
            _provider.add_span_processor(_fanout)
            trace.set_tracer_provider(_provider)
            _set_inner_provider(resource)
        processor = _exporter_processor(settings)
        old = _fanout.delegates
        _fanout.delegates = [processor] if processor is not None else []
        if _configured_pid == os.getpid():
            for d in old:  # same process: flush what the old exporter holds
                d.shutdown()
        _configured_pid = os.getpid()
        _sampler.set_ratio(settings.sample_ratio if processor is not None else 0.0)
        return _provider


def _set_inner_provider(resource: Resource) -> None:
    global _inner_provider
    _inner_provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    _inner_provider.add_span_processor(_fanout)


def inner_tracer_provider() -> TracerProvider:
    """A provider whose spans are recorded only inside an existing trace, never as new ones.

    For instrumentations of chatty clients (Redis): a command under a request or task span is
    part of that trace; the stream hub's blocking reads, lease renewals and the broker's polling
    would otherwise each start a trace of their own. Same exporters as the main provider."""
    if _inner_provider is None:
        raise RuntimeError("setup_tracing() first")
    return _inner_provider


def instrument_redis() -> None:
    """Spans for redis-py commands (sync and asyncio clients), children of the current span."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=inner_tracer_provider())


def exporting() -> bool:
    return bool(_fanout.delegates)


def flush(timeout_ms: int = 5000) -> None:
    _fanout.force_flush(timeout_ms)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside any span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_id else None


def inject_headers(carrier: dict[str, Any]) -> dict[str, Any]:
    """Put the current context (``traceparent``) into message headers."""
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, Any] | Any) -> otel_context.Context:
    """The context sent in message headers (a mapping or a Celery request)."""
    if isinstance(carrier, Mapping):
        return propagate.extract(carrier)
    value = getattr(carrier, "traceparent", None)
    return propagate.extract({"traceparent": value} if isinstance(value, str) else {})


def add_trace_id(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every log line inside a span carries its ``trace_id``."""
    if "trace_id" not in event_dict:
        trace_id = current_trace_id()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict
