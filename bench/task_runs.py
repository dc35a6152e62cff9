"""What recording every task in SQL costs (issue: the assistant, "send after commit").

Run: ``cd backend && uv run python ../bench/task_runs.py [--n 200] [--burst 200]``.

In one run, against a private redis-server, one real llm_q worker, a fresh SQLite file and a
PostgreSQL database (``CORRAL_TEST_POSTGRES_URL`` or a private server, as in the tests):
  1. baseline: ``sender.send`` + ``long_poll_celery_result`` of a no-op echo (no database),
  2. ``task_runs.submit`` (row committed, then sent, then followed by the tracker) + the same
     wait, on SQLite and on PostgreSQL,
  3. a burst of concurrent submits (time until every one is done and its row says ``done``).
Prints a table with ratios against the baseline measured in the same run.
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

BACKEND = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND))

from sqlalchemy import func, select  # noqa: E402

from corral.app.db.models import TaskRun  # noqa: E402
from corral.app.services import Services  # noqa: E402
from corral.app.settings import AppSettings  # noqa: E402
from corral.app.streams import TaskDone, long_poll_celery_result  # noqa: E402
from corral.app.task_runs import service as task_runs  # noqa: E402
from corral.task_schemas import SYSTEM_ECHO, EchoInput, Queue, task_events_key  # noqa: E402
from tests.support.db import new_sqlite_database, postgres_server  # noqa: E402
from tests.support.procs import env_vars, start_redis, start_worker, wait_workers_ready  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one(services: Services, record: bool) -> float:
    t0 = time.perf_counter()
    task_id = str(uuid.uuid4())
    async with services.hub.subscribe(task_events_key(task_id)) as sub:
        if record:
            await task_runs.submit(
                services,
                SYSTEM_ECHO,
                EchoInput(),
                owner_id="bench",
                queue=Queue.LLM,
                task_id=task_id,
            )
        else:
            await services.sender.send(
                SYSTEM_ECHO, EchoInput(), owner_id="bench", queue=Queue.LLM, task_id=task_id
            )
        outcome = await long_poll_celery_result(
            task_id, timeout_s=30, hub=services.hub, backend=services.results, subscription=sub
        )
    assert isinstance(outcome, TaskDone)
    return time.perf_counter() - t0


async def burst(services: Services, n: int) -> float:
    t0 = time.perf_counter()
    ids = await asyncio.gather(
        *[
            task_runs.submit(services, SYSTEM_ECHO, EchoInput(), owner_id="bench", queue=Queue.LLM)
            for _ in range(n)
        ]
    )
    await asyncio.gather(
        *[
            long_poll_celery_result(i, timeout_s=120, hub=services.hub, backend=services.results)
            for i in ids
        ]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with services.db.session() as session:
            done = await session.scalar(
                select(func.count()).where(TaskRun.id.in_(ids), TaskRun.state == "done")
            )
        if done == n:
            return time.perf_counter() - t0
        await asyncio.sleep(0.02)
    raise RuntimeError("rows did not all reach done")


async def run(
    env: dict[str, str], database_url: str, n: int, burst_n: int, *, record: bool = True
) -> dict[str, object]:
    """``n`` sequential round trips (and a burst) on one app process; ``record``: via submit."""
    with env_vars(env | {"CORRAL_DATABASE__URL": database_url}):
        settings = AppSettings()  # type: ignore[call-arg]
    services = await Services.start(settings)
    try:
        await services.users.ensure("bench")
        for _ in range(20):  # warm-up
            await one(services, record=record)
        times = [await one(services, record=record) for _ in range(n)]
        wall = await burst(services, burst_n) if burst_n else None
        return {"times": times, "burst_s": wall}
    finally:
        await services.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="sequential round trips per case")
    parser.add_argument("--burst", type=int, default=200, help="concurrent submits")
    args = parser.parse_args()

    server = start_redis()
    env = {
        "TASKS_REDIS__URL": server.url,
        "CORRAL_REDIS__URL": server.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_STORAGE__SIGNING_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_TASK_RUNS__RECONCILE_INTERVAL_S": "0",
    }
    worker = start_worker(("llm_q",), env, name="llm_q@bench-task-runs", concurrency=4)
    results: dict[str, dict[str, object]] = {}
    try:
        wait_workers_ready(server.url + "/0", [worker])
        sqlite = new_sqlite_database(Path(tempfile.mkdtemp(prefix="bench-db-")))
        results["send only (no database)"] = await run(env, sqlite, args.n, 0, record=False)
        results["submit, SQLite"] = await run(env, sqlite, args.n, args.burst)
        with postgres_server() as pg:
            results["submit, PostgreSQL"] = await run(env, pg.create_database(), args.n, args.burst)
    finally:
        worker.stop()
        server.stop()

    base = statistics.median(results["send only (no database)"]["times"])  # type: ignore[arg-type]
    print(f"\nNo-op echo on llm_q: send + wait, n={args.n}, {os.cpu_count()} cores")
    print(
        f"| method | p50 ms | p99 ms | p50 vs send only | burst of {args.burst}: "
        "s until every row is done |"
    )
    print("|---|---|---|---|---|")
    for name, data in results.items():
        times: list[float] = data["times"]  # type: ignore[assignment]
        p50 = statistics.median(times)
        wall = data.get("burst_s")
        print(
            f"| {name} | {p50 * 1000:.1f} | {pct(times, 0.99) * 1000:.1f} | {p50 / base:.2f}x | "
            f"{'-' if wall is None else f'{wall:.2f}'} |"
        )


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    asyncio.run(main())
