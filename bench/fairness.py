"""Fair share: user B's wait behind user A's backlog, with and without it, in one run.

    cd backend && uv run python ../bench/fairness.py [--tasks 100] [--sleep 0.2]

One 2-process llm_q worker and its own Redis; the app runs as a real process (uvicorn), once
with fair share on (``CORRAL_FAIR__LLM_Q=2``) and once off, each on a fresh SQLite database.
User A submits ``--tasks`` echo tasks sleeping ``--sleep`` s, then user B submits one; B's wait
is from its run's creation to its start (the record's timestamps). Then the scheduler's added
latency for a single user under the cap: p50 of a no-op echo round trip (submit + wait) with
fair share on minus off. Goals: B's wait >= 50x shorter with fair share; added p50 <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND))

import httpx  # noqa: E402

from tests.support.app_process import AppProcess, app_process  # noqa: E402
from tests.support.db import new_sqlite_database  # noqa: E402
from tests.support.procs import start_redis, start_worker, wait_workers_ready  # noqa: E402


async def submit(client: httpx.AsyncClient, sleep_s: float, timeout_s: float = 0.01) -> str:
    args = {"payload": None, "sleep_s": sleep_s, "queue": "llm_q"}
    resp = await client.post(
        "/api/tools/echo/invoke", json={"arguments": args, "timeout_s": timeout_s}
    )
    resp.raise_for_status()
    return str(resp.json()["task_id"])


async def b_wait(app: AppProcess, tasks: int, sleep_s: float) -> float:
    async with app.client("bench-a") as a, app.client("bench-b") as b:
        for _ in range(tasks):
            await submit(a, sleep_s)
        b_id = await submit(b, sleep_s)
        deadline = time.monotonic() + tasks * sleep_s + 60
        while time.monotonic() < deadline:
            run = (await b.get(f"/api/tasks/{b_id}")).json()
            if run.get("started_at"):
                started = datetime.fromisoformat(run["started_at"])
                return (started - datetime.fromisoformat(run["created_at"])).total_seconds()
            await asyncio.sleep(0.02)
    raise TimeoutError("B's task never started")


async def round_trips(app: AppProcess, n: int) -> list[float]:
    times = []
    async with app.client("bench-single") as c:
        await submit(c, 0.0, timeout_s=30)  # warm-up
        for _ in range(n):
            t0 = time.perf_counter()
            await submit(c, 0.0, timeout_s=30)
            times.append(time.perf_counter() - t0)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100, help="user A's backlog")
    parser.add_argument("--sleep", type=float, default=0.2, help="each task's duration, s")
    parser.add_argument("--n", type=int, default=100, help="single-user round trips per mode")
    args = parser.parse_args()

    server = start_redis()
    env = {
        "TASKS_REDIS__URL": server.url,
        "CORRAL_REDIS__URL": server.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_STORAGE__SIGNING_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_RATE_LIMITS__TOOLS": "1000000/minute",
        "CORRAL_FAIR__LLM_Q": "2",
    }
    work = Path(tempfile.mkdtemp(prefix="bench-fair-"))
    worker = start_worker(("llm_q",), env, name="llm_q@bench-fair", concurrency=2)
    waits: dict[str, float] = {}
    trips: dict[str, list[float]] = {}
    try:
        wait_workers_ready(server.url + "/0", [worker])
        on = {"CORRAL_FAIR__ENABLED": "true"}
        off = {"CORRAL_FAIR__ENABLED": "false"}
        with (
            app_process(env, new_sqlite_database(work), work, **on) as app_on,
            app_process(env, new_sqlite_database(work), work, **off) as app_off,
        ):
            # Round trips alternate between the two apps, so load on the machine hits both.
            trips = {"on": [], "off": []}
            for _ in range(args.n // 10):
                for mode, app in (("on", app_on), ("off", app_off)):
                    trips[mode] += await round_trips(app, 10)
            waits["on"] = await b_wait(app_on, args.tasks, args.sleep)
        # "on" leaves A's backlog waiting in its database (never sent): let the broker drain.
        await asyncio.sleep(3 * args.sleep)
        with app_process(env, new_sqlite_database(work), work, **off) as app_off:
            waits["off"] = await b_wait(app_off, args.tasks, args.sleep)
    finally:
        worker.stop()
        server.stop()

    print(f"\nA: {args.tasks} echo tasks x {args.sleep} s on a 2-process llm_q worker; B: 1 task")
    print("| fair share | B's wait s | no-op round trip p50 ms |")
    print("|---|---|---|")
    for mode in ("off", "on"):
        print(f"| {mode} | {waits[mode]:.3f} | {statistics.median(trips[mode]) * 1000:.2f} |")
    ratio = waits["off"] / max(waits["on"], 1e-3)
    added = (statistics.median(trips["on"]) - statistics.median(trips["off"])) * 1000
    print(f"\nB's wait {ratio:.0f}x shorter with fair share (goal >= 50x)")
    print(f"scheduler's added latency, single user under the cap: {added:+.2f} ms p50 (goal <= 2)")


if __name__ == "__main__":
    asyncio.run(main())
