"""Where task metrics live in Redis (the streams database), shared by the app and the workers.

Workers (and the app, for ``sent``) add to one hash, ``corral:metrics``, in round trips they make
anyway or one small pipeline per task; the app's ``/metrics`` reads it at scrape time. So task
counters are global across app and worker processes, survive worker restarts, and need neither a
pushgateway nor an exporter port per worker (docs/operations.md).
"""

from __future__ import annotations

METRICS_KEY = "corral:metrics"
WORKERS_KEY = "corral:workers"  # hostname -> JSON heartbeat {queues, pid, ts, active}
FAILURES_KEY = "corral:ops:failures"  # newest first, JSON {task_id, task_name, ...}
FAILURES_KEPT = 100
WORKER_STALE_S = 30.0  # a heartbeat older than this: the worker is gone
HEARTBEAT_S = 5.0

SEP = "|"
# Upper bounds (seconds) of the queue-wait and run-time histograms.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

COUNTERS = ("sent", "started", "succeeded", "failed", "lost")


def field(*parts: str) -> str:
    return SEP.join(parts)


def histogram_fields(kind: str, task: str, value: float, buckets: tuple[float, ...]) -> list[str]:
    """Fields to HINCRBY 1 for one observation: the first bucket it fits (cumulated on read)."""
    le = next((b for b in buckets if value <= b), None)
    return [
        field(kind, "bucket", task, "+Inf" if le is None else repr(le)),
        field(kind, "count", task),
    ]
