"""Publish what a python_q worker's sandbox enforces (seccomp, cgroup mode) for the app to read.

The worker's start-up self-test finds the layers; the result goes into one Redis hash in the
streams DB (``SANDBOX_WORKERS_KEY``), one field per worker, removed when the worker stops.
Readiness (``/api/readyz``) and ``/api/tools`` show it. Best effort: a Redis hiccup at start
must not stop the worker (readiness then shows no entry for it).
"""

from __future__ import annotations

import time
from typing import Any

import redis
import structlog

from corral.task_schemas.python import SANDBOX_WORKERS_KEY, SandboxCapabilities

log = structlog.get_logger(__name__)


def capabilities_of(backend: str, reported: dict[str, Any] | None) -> SandboxCapabilities:
    """The self-test's ``capabilities`` answer (see ``BwrapSandbox.capabilities``) as the
    shared model."""
    reported = reported or {}
    cgroups = reported.get("cgroups") or {}
    return SandboxCapabilities(
        backend=backend,
        seccomp=bool(reported.get("seccomp", False)),
        cgroups=str(cgroups.get("mode", "none")),
        cgroup_controllers=[str(c) for c in cgroups.get("controllers", [])],
        cgroup_reason=str(cgroups.get("reason", ""))[:500],
        published_at=time.time(),
    )


def publish(redis_url: str, worker: str, caps: SandboxCapabilities) -> None:
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5) as r:
            r.hset(SANDBOX_WORKERS_KEY, worker, caps.model_dump_json())
    except redis.RedisError as exc:
        log.warning("could not publish the sandbox's capabilities", reason=str(exc))


def withdraw(redis_url: str, worker: str) -> None:
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as r:
            r.hdel(SANDBOX_WORKERS_KEY, worker)
    except redis.RedisError as exc:
        log.warning("could not withdraw the sandbox's capabilities", reason=str(exc))
