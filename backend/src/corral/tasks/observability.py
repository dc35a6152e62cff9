"""Worker-side traces, task metrics and heartbeats (docs/operations.md).

Traces: every worker process (the prefork children included, after the fork) installs the
tracer provider; ``CeleryInstrumentor`` opens a ``run/<task>`` span whose parent is the context
the app put into the message headers (``traceparent``). A ``queue wait`` span covers the time
from the app's send (header ``corral_sent``) to the start, so the gap shows in the trace.

Metrics: each task adds to the Redis hash of ``corral.task_schemas.metrics`` once when it starts
(started, queue wait) and once when it ends (succeeded/failed/lost, run time, CPU seconds); the
app exposes the hash at ``/metrics``. The main worker process writes a heartbeat (its queues and
active task count) every few seconds, which the app turns into workers-per-queue and health.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

import structlog
from celery import Task
from celery.signals import (
    celeryd_after_setup,
    task_failure,
    task_prerun,
    task_success,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor, HTTPXClientInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation

from corral.task_schemas import REGISTRY, WORKER_LOST
from corral.task_schemas.events import set_trace_id_source
from corral.task_schemas.metrics import (
    FAILURES_KEPT,
    FAILURES_KEY,
    HEARTBEAT_S,
    METRICS_KEY,
    RUN_BUCKETS,
    WAIT_BUCKETS,
    WORKERS_KEY,
    field,
    histogram_fields,
)
from corral.tasks.celery_app import settings
from corral.tasks.run_clock import cpu_now
from corral.tasks.stream_notifier import _client, add_deferred, defer_increments
from corral.telemetry import (
    current_trace_id,
    extract_context,
    instrument_redis,
    setup_tracing,
    tracer,
)

log = structlog.get_logger(__name__)

SERVICE = "corral-worker"

# task_id -> (monotonic start, CPU seconds so far) in this (child) process
_running: dict[str, tuple[float, float]] = {}


def install_tracing() -> None:
    setup_tracing(settings.telemetry, SERVICE)
    set_trace_id_source(current_trace_id)
    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]  # idempotent
    HTTPXClientInstrumentor().instrument()  # downloads (datasets, inputs)
    HTTPX2ClientInstrumentor().instrument()  # the model calls (openai's client uses httpx2)
    instrument_redis()  # stream events and the result, under the task's run span


install_tracing()


@worker_process_init.connect
def _tracing_after_fork(**_: Any) -> None:
    # Batch exporters' threads do not survive fork: each child sets its exporter up again.
    setup_tracing(settings.telemetry, SERVICE)


def _incr(fields: list[str], floats: dict[str, float] | None = None) -> None:
    """Bump the task counters; not traced (bookkeeping, not the task's work: two spans per
    run that would tell an operator nothing)."""
    try:
        pipe = _client(settings.redis.streams_url).pipeline(transaction=False)
        add_deferred(pipe, settings.redis.streams_url)
        for name in fields:
            pipe.hincrby(METRICS_KEY, name, 1)
        for name, value in (floats or {}).items():
            pipe.hincrbyfloat(METRICS_KEY, name, value)
        with suppress_instrumentation():
            pipe.execute()
    except Exception as exc:  # metrics never fail a task
        log.warning("task metrics not recorded", error=str(exc))


@task_prerun.connect
def _task_started(task_id: str, task: Task, **_: Any) -> None:
    if task.name not in REGISTRY:
        return
    now_wall = time.time()
    _running[task_id] = (time.monotonic(), cpu_now())
    fields = [field("started", task.name)]
    sent = getattr(task.request, "corral_sent", None)
    floats: dict[str, float] = {}
    if isinstance(sent, int | float) and 0 < sent <= now_wall + 5:
        wait_s = max(0.0, now_wall - float(sent))
        fields += histogram_fields("wait", task.name, wait_s, WAIT_BUCKETS)
        floats[field("wait", "sum", task.name)] = wait_s
        # The wait as its own span, a sibling of the run span under the app's send span.
        span = tracer().start_span(
            "queue wait",
            context=extract_context(task.request),
            start_time=int(float(sent) * 1e9),
            attributes={"celery.task_name": task.name, "queue_wait_s": wait_s},
        )
        span.end(end_time=int(now_wall * 1e9))
    # With the `started` entry's write (or the next one), not a round trip before the task.
    counts: dict[str, int | float] = {name: 1 for name in fields}
    defer_increments(settings.redis.streams_url, METRICS_KEY, {**counts, **floats})


def _finished(task: Task, task_id: str, outcome: str) -> None:
    started = _running.pop(task_id, None)
    fields = [field(outcome, task.name)]
    floats: dict[str, float] = {}
    if started is not None:
        run_s = time.monotonic() - started[0]
        cpu_s = max(0.0, cpu_now() - started[1])
        fields += histogram_fields("run", task.name, run_s, RUN_BUCKETS)
        floats[field("run", "sum", task.name)] = run_s
        floats[field("cpu_seconds", task.name)] = cpu_s
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("corral.cpu_s", cpu_s)
    _incr(fields, floats)


@task_success.connect
def _task_succeeded(sender: Task, **_: Any) -> None:
    if sender.name in REGISTRY:
        _finished(sender, sender.request.id, "succeeded")


@task_failure.connect
def _task_failed(sender: Task, task_id: str, exception: BaseException, **_: Any) -> None:
    if sender.name not in REGISTRY:
        return
    from corral.tasks.lifecycle import describe_failure

    error_type, message = describe_failure(exception)
    lost = error_type == WORKER_LOST
    _finished(sender, task_id, "lost" if lost else "failed")
    record = {
        "task_id": task_id,
        "task_name": sender.name,
        "error_type": error_type,
        "message": message[:300],
        "trace_id": current_trace_id() or getattr(sender.request, "traceparent", "")[3:35],
        "worker": str(sender.request.hostname or ""),
        "at": time.time(),
    }
    try:
        pipe = _client(settings.redis.streams_url).pipeline(transaction=False)
        pipe.lpush(FAILURES_KEY, json.dumps(record))
        pipe.ltrim(FAILURES_KEY, 0, FAILURES_KEPT - 1)
        pipe.execute()
    except Exception as exc:
        log.warning("failure not recorded for operations", error=str(exc))


def record_tokens(model: str, prompt: int, completion: int) -> None:
    """Token totals per model (``corral_llm_tokens_total``), from the model call."""
    _incr(
        [],
        {
            field("tokens", model, "prompt"): float(prompt),
            field("tokens", model, "completion"): float(completion),
        },
    )


# --- heartbeats (main worker process) ---------------------------------------------------------

_worker: dict[str, Any] = {}
_stop = threading.Event()


@celeryd_after_setup.connect
def _remember_worker(sender: str, instance: Any, **_: Any) -> None:
    try:
        queues = sorted(instance.app.amqp.queues.consume_from)
    except Exception:
        queues = []
    _worker.update(hostname=str(sender), queues=queues)


def _beat() -> None:
    from celery.worker import state

    client = _client(settings.redis.streams_url)
    while not _stop.is_set():
        beat = {
            "queues": _worker.get("queues", []),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "ts": time.time(),
            "active": len(state.active_requests),
            "processed": int(sum(state.total_count.values())),
        }
        try:
            client.hset(WORKERS_KEY, _worker["hostname"], json.dumps(beat))
        except Exception as exc:
            log.warning("worker heartbeat not written", error=str(exc))
        _stop.wait(HEARTBEAT_S)


@worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    if "hostname" in _worker:
        threading.Thread(target=_beat, name="corral-heartbeat", daemon=True).start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    _stop.set()
    if "hostname" in _worker:
        try:
            _client(settings.redis.streams_url).hdel(WORKERS_KEY, _worker["hostname"])
        except Exception as exc:
            log.warning("worker heartbeat not removed", error=str(exc))
