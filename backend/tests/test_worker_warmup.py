"""Prefork children are warmed right after the fork (issue 16): the first task on every child
does not pay for building the model client, openai's lazy imports or a Redis connection."""

from __future__ import annotations

from corral.tasks import warmup
from corral.tasks.celery_app import settings
from corral.tasks.llm import clients
from tests.support.procs import RedisServer, start_worker, wait_until, wait_workers_ready


def test_warm_child_builds_the_model_clients_once() -> None:
    took = warmup.warm_child({"llm_q.urgent"})  # urgent and session variants count as llm_q
    assert "llm" in took
    models = settings.llm.models
    built = {(name, url) for (_, name, url) in clients._clients}
    assert all((m.name, m.base_url) in built for m in models)
    # a second warm-up (or the first task) finds everything built: cheap
    again = warmup.warm_child({"llm_q"})
    assert again["llm"] < 0.05
    assert "duckdb" not in again  # only circuit_q workers open DuckDB


def test_a_fresh_llm_worker_warms_every_child(
    stack_env: dict[str, str], redis_server: RedisServer
) -> None:
    worker = start_worker(("llm_q",), stack_env, concurrency=2)
    try:
        wait_workers_ready(redis_server.url + "/0", [worker])

        def both_warmed() -> bool:
            lines = worker.log().splitlines()
            return sum('"child warmed"' in line and '"llm"' in line for line in lines) >= 2

        try:
            wait_until(both_warmed, 30, "both prefork children to warm up", interval=0.2)
        except TimeoutError as exc:
            raise AssertionError(worker.log()[-3000:]) from exc
        assert "child warm-up step failed" not in worker.log()
    finally:
        worker.stop()
