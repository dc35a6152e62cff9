"""The language models the test stack is configured with, all served by one ``FakeOpenAI``.

Configured names and the provider model each one sends (script replies under the latter):

- ``primary`` -> ``fake-primary`` (the default model), ``backup`` -> ``fake-backup``,
  ``third`` -> ``fake-third``;
- ``offline`` -> a loopback port nobody listens on (connection refused: a transient error).
"""

from __future__ import annotations

import json
import secrets

import psutil
import redis

from tests.support.fake_openai import FakeOpenAI
from tests.support.procs import Worker, free_port, wait_until

LLM_API_KEY = "test-llm-" + secrets.token_hex(16)

PROVIDER_MODEL = {"primary": "fake-primary", "backup": "fake-backup", "third": "fake-third"}


def llm_models(fake: FakeOpenAI) -> list[dict[str, object]]:
    models: list[dict[str, object]] = [
        {
            "name": name,
            "base_url": fake.base_url,
            "api_key": LLM_API_KEY,
            "model": model,
            "timeout_s": 15,
        }
        for name, model in PROVIDER_MODEL.items()
    ]
    models.append(
        {
            "name": "offline",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "api_key": LLM_API_KEY,
            "model": "fake-offline",
            "timeout_s": 5,
        }
    )
    return models


def llm_env(fake: FakeOpenAI) -> dict[str, str]:
    """For both the app (CORRAL_) and the workers (TASKS_); retries fast so tests stay quick."""
    models = json.dumps(llm_models(fake))
    env: dict[str, str] = {}
    for prefix in ("CORRAL_LLM__", "TASKS_LLM__"):
        env |= {
            f"{prefix}MODELS": models,
            f"{prefix}DEFAULT_MODEL": "primary",
            f"{prefix}RETRY_BACKOFF_S": "0.02",
            f"{prefix}RETRY_BACKOFF_MAX_S": "0.1",
        }
    return env


def wait_pool_full(worker: Worker, size: int = 2, timeout: float = 10.0) -> None:
    """Wait until the worker has ``size`` live children.

    After a revoke with terminate, Celery's prefork pool may reap the killed child only at its
    next maintenance tick (up to 5 s); until then one slot is missing. Tests that assert
    parallelism wait for the pool to be whole again.
    """

    def full() -> bool:
        children = psutil.Process(worker.proc.pid).children()
        alive = [c for c in children if c.status() != psutil.STATUS_ZOMBIE]
        return len(alive) >= size and len(alive) == len(children)

    wait_until(full, timeout, f"{size} live pool processes in {worker.name}", interval=0.1)


def wait_worker_idle(broker_url: str, worker: Worker, timeout: float = 60.0) -> None:
    """Wait until no message of the worker's queues is taken (unacked) and its pool is whole.

    Tests elsewhere in the session may leave long tasks (a 30 s echo) on the shared llm_q
    worker; tests that measure parallelism or wait with deadlines start from an idle worker.
    With ``acks_late`` a running or reserved message stays in kombu's ``unacked`` hash
    (``[message, exchange, routing_key]``) until it finishes, so one HVALS tells.
    """
    client = redis.Redis.from_url(broker_url)
    try:

        def idle() -> bool:
            taken = [json.loads(raw)[2] for raw in client.hvals("unacked")]
            return not any(queue in worker.queues for queue in taken)

        wait_until(idle, timeout, f"{worker.name} to be idle", interval=0.1)
    finally:
        client.close()
    wait_pool_full(worker, timeout=timeout)
