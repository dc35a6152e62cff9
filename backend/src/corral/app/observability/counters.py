"""Process-local counters other parts of the app increment; exposed at ``/metrics``.

Fair share (issue 13) and the rate limiter import this small module only::

    from corral.app.observability.counters import fair_share_refused
    fair_share_refused("user_cap")
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

RATE_LIMIT_REFUSALS = Counter(
    "corral_rate_limit_refusals",
    "Requests refused by a per-user rate limit (429), by limit group.",
    ["group"],
    registry=REGISTRY,
)
FAIR_SHARE_REFUSALS = Counter(
    "corral_fair_share_refusals",
    "Tasks refused or held back by fair share, by reason.",
    ["reason"],
    registry=REGISTRY,
)
SSE_CLIENTS = Gauge(
    "corral_sse_clients",
    "Server-sent event streams open now in this app process.",
    registry=REGISTRY,
)


def rate_limit_refused(group: str) -> None:
    RATE_LIMIT_REFUSALS.labels(group=group).inc()


def fair_share_refused(reason: str = "cap") -> None:
    FAIR_SHARE_REFUSALS.labels(reason=reason).inc()
