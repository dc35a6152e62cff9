"""``/metrics`` (Prometheus text): read at scrape time from Redis and this process.

Global (the same from every app process): queue depth (LLEN of the broker's lists on Redis, a
passive queue declare on RabbitMQ), task
counters, histograms, CPU seconds and tokens (the hash the workers add to, see
``corral.task_schemas.metrics``), workers per queue (their heartbeats). Per app process: open
waits, SSE clients, stream hub lag, rate-limit and fair-share refusals. docs/operations.md lists
every metric.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from corral.app.observability import counters
from corral.app.services import Services
from corral.task_schemas import ALL_QUEUES, PRIORITY_STEPS
from corral.task_schemas.delivery import broker_kind, urgent_queue
from corral.task_schemas.metrics import (
    COUNTERS,
    FAILURES_KEY,
    METRICS_KEY,
    RUN_BUCKETS,
    SEP,
    WAIT_BUCKETS,
    WORKER_STALE_S,
    WORKERS_KEY,
)

PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue + SEP + step for steps above 0


@dataclass
class WorkerBeat:
    name: str
    queues: list[str]
    active: int
    processed: int
    age_s: float

    @property
    def healthy(self) -> bool:
        return self.age_s <= WORKER_STALE_S


@dataclass
class Snapshot:
    """What one read of Redis says about queues, tasks and workers."""

    depth: dict[str, int] | None  # None: the broker is RabbitMQ (see its management API)
    counts: dict[str, dict[str, float]]  # counter -> task -> value
    hist: dict[str, dict[str, dict[str, float]]]  # wait|run -> task -> {le: n, "sum": s}
    cpu: dict[str, float]
    tokens: dict[tuple[str, str], float]
    workers: list[WorkerBeat]
    failures: list[dict[str, Any]] = field(default_factory=list)


AMQP_TIMEOUT_S = 2.0


def _amqp_depths(broker_url: str) -> dict[str, int]:
    """RabbitMQ: a passive declare answers a queue's ready-message count without creating it.
    A queue no worker has declared yet is empty (its NOT_FOUND closes only that channel)."""
    from kombu.connection import Connection

    depths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=AMQP_TIMEOUT_S) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1, timeout=AMQP_TIMEOUT_S)
        for queue in ALL_QUEUES:
            total = 0
            for name in (queue.value, urgent_queue(queue.value)):
                channel = conn.channel()
                try:
                    total += int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:
                    pass  # not declared yet: nothing waits in it
                finally:
                    try:
                        channel.close()
                    except conn.connection_errors + conn.channel_errors:
                        pass
            depths[queue.value] = total
    return depths


async def queue_depths(broker_url: str) -> dict[str, int] | None:
    """Messages waiting per workload queue, or None when the broker cannot be asked in time."""
    if broker_kind(broker_url) == "amqp":
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(_amqp_depths, broker_url), AMQP_TIMEOUT_S * 3
            )
        except Exception:  # a scrape reports what it can; the broker has its own alerts
            return None
    steps = [s for s in PRIORITY_STEPS if s]
    client = aioredis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        names = [q.value for q in ALL_QUEUES]
        for name in names:
            pipe.llen(name)
            for step in steps:
                pipe.llen(f"{name}{PRIORITY_SEP}{step}")
        lengths = await pipe.execute()
    finally:
        await client.aclose()
    per = len(steps) + 1
    return {name: int(sum(lengths[i * per : (i + 1) * per])) for i, name in enumerate(names)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def snapshot(services: Services, failures: int = 0) -> Snapshot:
    settings = services.settings
    pipe = services.redis.pipeline(transaction=False)
    pipe.hgetall(METRICS_KEY)
    pipe.hgetall(WORKERS_KEY)
    if failures:
        pipe.lrange(FAILURES_KEY, 0, failures - 1)
    replies = await pipe.execute()
    raw, beats = replies[0], replies[1]
    counts: dict[str, dict[str, float]] = {c: {} for c in COUNTERS}
    hist: dict[str, dict[str, dict[str, float]]] = {"wait": {}, "run": {}}
    cpu: dict[str, float] = {}
    tokens: dict[tuple[str, str], float] = {}
    for key, value in raw.items():
        parts, number = _text(key).split(SEP), float(_text(value))
        kind = parts[0]
        if kind in counts and len(parts) == 2:
            counts[kind][parts[1]] = number
        elif kind in hist and len(parts) >= 3:
            task = parts[2]
            slot = hist[kind].setdefault(task, {})
            name = {"bucket": parts[3] if len(parts) > 3 else "", "sum": "sum", "count": "count"}
            slot[name.get(parts[1], parts[1])] = number
        elif kind == "cpu_seconds" and len(parts) == 2:
            cpu[parts[1]] = number
        elif kind == "tokens" and len(parts) == 3:
            tokens[(parts[1], parts[2])] = number
    now = time.time()
    workers = []
    for name, value in beats.items():
        try:
            beat = json.loads(_text(value))
        except ValueError:
            continue
        workers.append(
            WorkerBeat(
                name=_text(name),
                queues=[str(q) for q in beat.get("queues", [])],
                active=int(beat.get("active", 0)),
                processed=int(beat.get("processed", 0)),
                age_s=max(0.0, now - float(beat.get("ts", 0))),
            )
        )
    failed = []
    for item in replies[2] if failures else []:
        try:
            failed.append(json.loads(_text(item)))
        except ValueError:
            continue
    depth = await queue_depths(settings.broker.resolve(settings.redis))
    return Snapshot(depth, counts, hist, cpu, tokens, sorted(workers, key=lambda w: w.name), failed)


def _histogram(
    name: str, doc: str, data: dict[str, dict[str, float]], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["task"])
    for task, slot in sorted(data.items()):
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in bounds:
            running += slot.get(repr(bound), 0.0)
            buckets.append((repr(bound), running))
        running += slot.get("+Inf", 0.0)
        buckets.append(("+Inf", running))
        family.add_metric([task], buckets, slot.get("sum", 0.0))
    return family


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot, services: Services) -> None:
        self.snap = snap
        self.services = services

    def collect(self) -> list[Metric]:
        snap = self.snap
        out: list[Metric] = []
        if snap.depth is not None:
            depth = GaugeMetricFamily(
                "corral_queue_depth", "Messages waiting in a queue.", labels=["queue"]
            )
            for queue, count in sorted(snap.depth.items()):
                depth.add_metric([queue], count)
            out.append(depth)
        for counter in COUNTERS:
            family = CounterMetricFamily(
                f"corral_tasks_{counter}", f"Tasks {counter}, by task name.", labels=["task"]
            )
            for task, value in sorted(snap.counts[counter].items()):
                family.add_metric([task], value)
            out.append(family)
        out.append(
            _histogram(
                "corral_task_queue_wait_seconds",
                "From the app's send to a worker's start, by task name.",
                snap.hist["wait"],
                WAIT_BUCKETS,
            )
        )
        out.append(
            _histogram(
                "corral_task_run_seconds",
                "From a worker's start to the outcome, by task name.",
                snap.hist["run"],
                RUN_BUCKETS,
            )
        )
        cpu = CounterMetricFamily(
            "corral_task_cpu_seconds",
            "CPU seconds of task bodies and their sandboxes, by task name.",
            labels=["task"],
        )
        for task, secs in sorted(snap.cpu.items()):
            cpu.add_metric([task], secs)
        out.append(cpu)
        tokens = CounterMetricFamily(
            "corral_llm_tokens", "Model tokens, by model and kind.", labels=["model", "kind"]
        )
        for (model, kind), total in sorted(snap.tokens.items()):
            tokens.add_metric([model, kind], total)
        out.append(tokens)
        per_queue: dict[str, int] = {q.value: 0 for q in ALL_QUEUES}
        for w in snap.workers:
            if w.healthy:
                for q in w.queues:
                    per_queue[q] = per_queue.get(q, 0) + 1
        workers = GaugeMetricFamily(
            "corral_workers", "Workers consuming a queue (fresh heartbeat).", labels=["queue"]
        )
        for queue, n in sorted(per_queue.items()):
            workers.add_metric([queue], n)
        out.append(workers)
        hub = self.services.hub
        out.append(
            GaugeMetricFamily(
                "corral_open_waits",
                "Subscriptions to task event streams open in this app process (waits, SSE).",
                value=hub.open_subscriptions,
            )
        )
        out.append(
            GaugeMetricFamily(
                "corral_stream_hub_lag_seconds",
                "Age of the newest entry at its delivery by this process's stream hub.",
                value=hub.lag_s,
            )
        )
        return out


async def render(services: Services) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(await snapshot(services), services))
    return generate_latest(registry) + generate_latest(counters.REGISTRY)
