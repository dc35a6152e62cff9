"""What each live python_q worker's sandbox enforces, as the workers published it at start.

The worker's self-test finds the layers (seccomp filter, cgroup v2/v1 or rlimits only) and puts
them in the Redis hash ``SANDBOX_WORKERS_KEY`` (see ``corral.tasks.sandbox.publish``). Entries of
workers that are gone are left out by passing the live workers' names.
"""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis
from pydantic import ValidationError

from corral.task_schemas.python import SANDBOX_WORKERS_KEY, SandboxCapabilities


async def sandbox_layers(
    redis: aioredis.Redis, live_workers: list[str] | None = None, timeout_s: float = 2.0
) -> dict[str, SandboxCapabilities]:
    """Worker name → its sandbox's layers; only ``live_workers`` when given. Empty on errors."""
    try:
        with anyio.fail_after(timeout_s):
            raw: dict[str | bytes, str | bytes] = await redis.hgetall(SANDBOX_WORKERS_KEY)
    except Exception:
        return {}
    found: dict[str, SandboxCapabilities] = {}
    for key, value in raw.items():
        worker = key.decode() if isinstance(key, bytes) else key
        if live_workers is not None and worker not in live_workers:
            continue
        try:
            found[worker] = SandboxCapabilities.model_validate_json(value)
        except ValidationError:
            continue
    return found
