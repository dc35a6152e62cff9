"""Round-trip and fan-in benchmark of the task bus (issue: Foundation).

Run: ``cd backend && uv run python ../bench/roundtrip.py [--n 200] [--waits 10000]``.

In one run, against one private redis-server and real workers (one per queue):
  1. no-op round trip through ``long_poll_celery_result`` (send + stream wait),
  2. the same through Celery's own ``AsyncResult.get()`` (the baseline),
  3. a status-polling loop every 2 s (what many apps do),
  4. N concurrent waits in one process: wall time, Redis connections used for waiting, RSS.
  5. tracing off vs on (100% sampling, every span exported): the round trip of 1. inside a
     request span, against a second Redis whose llm_q worker exports its spans too;
     interleaved batches, so both see the same machine load. "On" is the production exporter
     (OTLP/HTTP, batched) sending to a collector on loopback that decodes and counts the spans.
Prints a table with ratios against the Celery baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BACKEND = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND))

import psutil  # noqa: E402
import redis  # noqa: E402

from corral.app.services import Services  # noqa: E402
from corral.app.settings import AppSettings  # noqa: E402
from corral.app.streams import TaskDone, long_poll_celery_result  # noqa: E402
from corral.task_schemas import (  # noqa: E402
    ALL_QUEUES,
    SYSTEM_ECHO,
    EchoInput,
    Queue,
    task_events_key,
)
from corral.telemetry import (  # noqa: E402
    TelemetrySettings,
    instrument_redis,
    setup_tracing,
    tracer,
)
from tests.support.db import new_sqlite_database  # noqa: E402
from tests.support.procs import (  # noqa: E402
    env_vars,
    start_redis,
    start_worker,
    wait_workers_ready,
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_long_poll(services: Services, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        task_id = str(uuid.uuid4())
        async with services.hub.subscribe(task_events_key(task_id)) as sub:
            await services.sender.send(
                SYSTEM_ECHO, EchoInput(), owner_id="bench", queue=Queue.LLM, task_id=task_id
            )
            outcome = await long_poll_celery_result(
                task_id, timeout_s=30, hub=services.hub, backend=services.results, subscription=sub
            )
        assert isinstance(outcome, TaskDone)
        times.append(time.perf_counter() - t0)
    return times


def _service(resource_spans: object) -> str:
    for attr in getattr(resource_spans, "resource").attributes:  # noqa: B009
        if attr.key == "service.name":
            return str(attr.value.string_value).removeprefix("corral-")
    return "?"


class Collector:
    """An OTLP/HTTP traces receiver on loopback: decodes each export, counts its spans."""

    def __init__(self) -> None:
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        collector = self
        self.spans = 0
        self.names: Counter[str] = Counter()
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                found = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                with collector.lock:
                    collector.spans += found
                    collector.names.update(
                        f"{_service(r)}:{sp.name}" for r in request.resource_spans
                        for s in r.scope_spans for sp in s.spans
                    )  # fmt: skip
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


async def bench_tracing(
    off: Services, on: Services, endpoint: str, n: int, rounds: int = 5
) -> tuple[list[float], list[float]]:
    """The long-poll round trip inside a request span: exporting off vs on, interleaved."""
    quiet = TelemetrySettings()
    loud = TelemetrySettings(exporter="otlp", otlp_endpoint=endpoint, sample_ratio=1.0)
    times: dict[bool, list[float]] = {False: [], True: []}

    async def batch(services: Services, traced: bool, k: int) -> list[float]:
        setup_tracing(loud if traced else quiet, "corral-app")
        out = []
        for _ in range(k):
            t0 = time.perf_counter()
            with tracer().start_as_current_span("POST /api/tools/echo/invoke"):
                await bench_long_poll(services, 1)
            out.append(time.perf_counter() - t0)
        return out

    setup_tracing(quiet, "corral-app")
    instrument_redis()  # as the app does: Redis commands are spans inside the request's trace
    await batch(on, True, 10)  # warm-up
    for _ in range(rounds):
        for traced in (False, True):
            times[traced] += await batch(on if traced else off, traced, max(1, n // rounds))
    setup_tracing(quiet, "corral-app")
    return times[False], times[True]


def bench_celery_get(services: Services, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = services.celery.send_task(
            SYSTEM_ECHO.name, kwargs={"input": {}, "owner_id": "bench"}, queue=Queue.LLM.value
        )
        result.get(timeout=30)
        times.append(time.perf_counter() - t0)
    return times


def bench_polling(services: Services, n: int, interval: float = 2.0) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = services.celery.send_task(
            SYSTEM_ECHO.name, kwargs={"input": {}, "owner_id": "bench"}, queue=Queue.LLM.value
        )
        while result.state != "SUCCESS":
            time.sleep(interval)
        times.append(time.perf_counter() - t0)
    return times


async def bench_fan_in(services: Services, redis_url: str, waits: int) -> dict[str, float]:
    admin = redis.Redis.from_url(redis_url)
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    ids = [str(uuid.uuid4()) for _ in range(waits)]
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(
            long_poll_celery_result(tid, timeout_s=600, hub=services.hub, backend=services.results)
        )
        for tid in ids
    ]
    await asyncio.sleep(0.5)
    peak_conn, peak_rss = 0, 0

    def sample() -> None:
        nonlocal peak_conn, peak_rss
        waiting = sum(
            1 for c in admin.client_list() if c.get("name", "").startswith(services.hub.client_name)
        )
        peak_conn = max(peak_conn, waiting)
        peak_rss = max(peak_rss, proc.memory_info().rss)

    sends = [
        services.sender.send(
            SYSTEM_ECHO,
            EchoInput(payload=i),
            owner_id="bench",
            queue=ALL_QUEUES[i % 3],
            task_id=tid,
        )
        for i, tid in enumerate(ids)
    ]
    await asyncio.gather(*sends)
    while not all(t.done() for t in tasks):
        sample()
        await asyncio.sleep(0.5)
    sample()
    wall = time.perf_counter() - t0
    ok = sum(
        1
        for i, t in enumerate(tasks)
        if isinstance(t.result(), TaskDone) and t.result().output["payload"] == i
    )
    admin.close()
    return {
        "wall_s": wall,
        "connections": peak_conn,
        "rss_mb": peak_rss / 2**20,
        "rss_growth_mb": (peak_rss - rss_before) / 2**20,
        "correct": ok,
    }


def start_bench_worker(queue: Queue, env: dict[str, str]) -> Any:
    """One worker for ``queue``; python_q's runs as the sandbox user with bwrap, as deployed
    (as root bwrap refuses to start, the self-test fails and the worker never answers)."""
    if queue != Queue.PYTHON:
        return start_worker((queue.value,), env, name=f"{queue.value}@bench")
    from tests.support.sandbox import (
        as_sandbox_user,
        check_sandbox_host,
        ensure_sandbox_venv,
        python_worker_env,
        sandbox_env,
    )

    check_sandbox_host()
    ensure_sandbox_venv()
    return start_worker(
        (queue.value,),
        {**env, **sandbox_env(), **python_worker_env()},
        name=f"{queue.value}@bench",
        wrap=as_sandbox_user(),
    )


def print_tracing(tr_off: list[float], tr_on: list[float], spans: int) -> None:
    off50, on50 = statistics.median(tr_off), statistics.median(tr_on)
    print(f"\nTracing (round trip in a request span), n={len(tr_off)} each, interleaved")
    print("| tracing | p50 ms | p99 ms | p50 vs off |")
    print("|---|---|---|---|")
    for name, values in [("off (ids only, default)", tr_off), ("on (100%, exported)", tr_on)]:
        p50 = statistics.median(values)
        p99 = pct(values, 0.99)
        print(f"| {name} | {p50 * 1000:.1f} | {p99 * 1000:.1f} | {p50 / off50:.2f}x |")
    print(
        f"spans exported: {spans}; added at p50: {(on50 / off50 - 1) * 100:+.1f}% "
        f"(goal <= +10%: {'met' if on50 <= off50 * 1.10 else 'NOT met'})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="round trips per method")
    parser.add_argument("--poll-n", type=int, default=5)
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--trace-n", type=int, default=200, help="round trips per tracing mode")
    parser.add_argument(
        "--tracing-only", action="store_true", help="only 5. (llm_q workers only; quick)"
    )
    args = parser.parse_args()

    server = start_redis()
    env = {
        "TASKS_REDIS__URL": server.url,
        "CORRAL_REDIS__URL": server.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_STORAGE__SIGNING_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_DATABASE__URL": new_sqlite_database(Path(tempfile.mkdtemp(prefix="bench-db-"))),
    }
    queues = [Queue.LLM] if args.tracing_only else ALL_QUEUES
    workers = [start_bench_worker(q, env) for q in queues]
    # Tracing on: a second Redis with an llm_q worker that exports every span to a file.
    traced_server = start_redis()
    collector = Collector()
    traced_env = {
        **env,
        "TASKS_REDIS__URL": traced_server.url,
        "CORRAL_REDIS__URL": traced_server.url,
        "TASKS_TELEMETRY__EXPORTER": "otlp",
        "TASKS_TELEMETRY__OTLP_ENDPOINT": collector.endpoint,
    }
    traced_worker = start_worker((Queue.LLM.value,), traced_env, name="llm_q@bench-traced")
    try:
        wait_workers_ready(server.url + "/0", workers)
        wait_workers_ready(traced_server.url + "/0", [traced_worker])
        with env_vars(env):
            settings = AppSettings()
        services = await Services.start(settings)
        try:
            if not args.tracing_only:
                await bench_long_poll(services, 20)  # warm-up
                await asyncio.to_thread(bench_celery_get, services, 20)
                # Interleaved rounds: a change of load during the run hits both methods alike.
                lp, cg = [], []
                rounds = 10
                for _ in range(rounds):
                    lp += await bench_long_poll(services, max(1, args.n // rounds))
                    cg += await asyncio.to_thread(bench_celery_get, services, args.n // rounds)
                po = await asyncio.to_thread(bench_polling, services, args.poll_n)
                fan = await bench_fan_in(services, server.url, args.waits)
            with env_vars(traced_env):
                traced_settings = AppSettings()
            traced = await Services.start(traced_settings)
            try:
                tr_off, tr_on = await bench_tracing(
                    services, traced, collector.endpoint, args.trace_n
                )
                await asyncio.sleep(6)  # the batch processors (5 s schedule) send what they hold
            finally:
                await traced.aclose()
        finally:
            await services.aclose()
    finally:
        for w in [*workers, traced_worker]:
            w.stop()
        server.stop()
        traced_server.stop()
    spans = collector.spans
    if spans:
        per_trip = ", ".join(
            f"{name} {count / max(1, len(tr_on) + 10):.1f}"
            for name, count in collector.names.most_common(12)
        )
        print(f"spans per traced round trip, by name: {per_trip}")
    collector.close()
    print_tracing(tr_off, tr_on, spans)
    if args.tracing_only:
        return

    base50 = statistics.median(cg)
    print(
        f"\nNo-op round trip (echo on llm_q), n={args.n} (polling n={args.poll_n}), "
        f"{os.cpu_count()} cores"
    )
    print("| method | p50 ms | p99 ms | p50 vs Celery get() |")
    print("|---|---|---|---|")
    for name, values in [
        ("long_poll_celery_result", lp),
        ("Celery AsyncResult.get()", cg),
        ("status polling every 2 s", po),
    ]:
        p50 = statistics.median(values)
        print(
            f"| {name} | {p50 * 1000:.1f} | {pct(values, 0.99) * 1000:.1f} | {p50 / base50:.2f}x |"
        )
    print(f"\n{args.waits} concurrent waits in one process")
    print("| wall s | waiting Redis connections (peak) | RSS MB (peak) | RSS growth MB | correct |")
    print("|---|---|---|---|---|")
    print(
        f"| {fan['wall_s']:.1f} | {fan['connections']:.0f} | {fan['rss_mb']:.0f} | "
        f"{fan['rss_growth_mb']:.0f} | {fan['correct']:.0f}/{args.waits} |"
    )
    verdict = statistics.median(lp) <= base50 and fan["connections"] <= 4 and fan["rss_mb"] < 300
    print(
        f"\ntargets (p50 <= 1.0x get(), <= 4 connections, < 300 MB): "
        f"{'met' if verdict else 'NOT met'}"
    )


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    asyncio.run(main())
