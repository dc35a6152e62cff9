"""Pipeline machinery overhead per step, against calling the provider directly (issue 4).

Run: ``cd backend && uv run python ../bench/pipeline.py [--runs 5] [--latency-ms 50]``.

One private redis-server, one llm_q worker (10 processes), the app in-process, and the scripted
OpenAI-protocol server answering every request after a fixed latency. For a 10-step chain
(each step depends on the previous one) and a 10-wide fan-out (10 independent steps), in the
same run:
  - direct: the official ``openai`` client calling the scripted server (the baseline; the
    fan-out issues its 10 requests from 10 threads at once),
  - generate: the same calls as ``POST /api/llm/generate`` (app -> Redis -> worker -> provider),
    sequential for the chain, concurrent for the fan-out,
  - pipeline: one ``POST /api/pipelines/runs``, timed until the run's terminal SSE event.
Reports medians over ``--runs`` and the overhead per step versus direct.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BACKEND = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND))

import httpx  # noqa: E402
import openai  # noqa: E402

from tests.support.db import new_sqlite_database  # noqa: E402
from tests.support.fake_openai import FakeOpenAI, Reply  # noqa: E402
from tests.support.llm_env import LLM_API_KEY, llm_env  # noqa: E402
from tests.support.procs import (  # noqa: E402
    UvicornThread,
    env_vars,
    start_redis,
    start_worker,
    wait_workers_ready,
)

STEPS = 10


def chain_steps() -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"name": "s0", "prompt_template": "start {query}"}]
    steps += [
        {
            "name": f"s{i}",
            "prompt_template": f"step {i} after {{s{i - 1}}}",
            "depends_on": [f"s{i - 1}"],
        }
        for i in range(1, STEPS)
    ]
    return steps


def fanout_steps() -> list[dict[str, Any]]:
    return [{"name": f"f{i}", "prompt_template": f"branch {i} of {{query}}"} for i in range(STEPS)]


def direct(fake: FakeOpenAI, concurrent: bool) -> float:
    client = openai.OpenAI(api_key=LLM_API_KEY, base_url=fake.base_url, max_retries=0)

    def one(i: int) -> None:
        client.chat.completions.create(
            model="fake-primary", messages=[{"role": "user", "content": f"direct {i}"}]
        )

    began = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(STEPS) as pool:
            list(pool.map(one, range(STEPS)))
    else:
        for i in range(STEPS):
            one(i)
    elapsed = time.perf_counter() - began
    client.close()
    return elapsed


async def generate(api: httpx.AsyncClient, concurrent: bool) -> float:
    async def one(i: int) -> None:
        resp = await api.post("/api/llm/generate", json={"prompt": f"gen {i}", "timeout_s": 60})
        resp.raise_for_status()

    began = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(one(i) for i in range(STEPS)))
    else:
        for i in range(STEPS):
            await one(i)
    return time.perf_counter() - began


LAST_RUN: list[str] = []


async def pipeline(api: httpx.AsyncClient, steps: list[dict[str, Any]]) -> float:
    began = time.perf_counter()
    resp = await api.post("/api/pipelines/runs", json={"steps": steps, "input": {"query": "q"}})
    resp.raise_for_status()
    run_id = resp.json()["run_id"]
    LAST_RUN[:] = [run_id]
    async with api.stream("GET", f"/api/pipelines/runs/{run_id}/events", timeout=120) as events:
        event = ""
        async for line in events.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "run":
                status = json.loads(line.split(":", 1)[1]).get("status")
                if status in {"succeeded", "failed", "cancelled"}:
                    if status != "succeeded":
                        raise RuntimeError(f"bench run {run_id} ended {status}")
                    break
    return time.perf_counter() - began


async def main(runs: int, latency_ms: int) -> None:
    redis = start_redis()
    fake = FakeOpenAI(api_key=LLM_API_KEY).start()
    fake.respond_with(
        lambda req: Reply(text=f"answer to {req.prompt[:40]}", delay_s=latency_ms / 1000)
    )
    env = {
        **llm_env(fake),
        "TASKS_REDIS__URL": redis.url,
        "CORRAL_REDIS__URL": redis.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": "bench-" + "x" * 40,
        "CORRAL_STORAGE__SIGNING_SECRET": "bench-" + "y" * 40,
        "CORRAL_STORAGE__LOCAL_DIR": tempfile.mkdtemp(prefix="corral-bench-objects-"),
        # Alembic runs its own event loop: migrate from a thread.
        "CORRAL_DATABASE__URL": await asyncio.to_thread(
            new_sqlite_database, Path(tempfile.mkdtemp(prefix="corral-bench-"))
        ),
        "TASKS_LOG_LEVEL": "WARNING",
        "CORRAL_RATE_LIMITS__TOOLS": "1000000/minute",  # measure the machinery, not the limiter
    }
    worker = start_worker(("llm_q",), env, name="llm_q@bench", concurrency=STEPS)
    try:
        wait_workers_ready(redis.url + "/0", [worker])
        from corral.app.auth.service import issue_dev_token
        from corral.app.main import create_app
        from corral.app.settings import AppSettings

        with env_vars(env):
            settings = AppSettings()
        headers = {"Authorization": f"Bearer {issue_dev_token(settings.auth)}"}
        with UvicornThread(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as api:
                # Warm every worker process, connection pool and code path once.
                await generate(api, concurrent=True)
                await pipeline(api, fanout_steps())
                await pipeline(api, chain_steps()[:2])
                rows = []
                for label, concurrent, steps in (
                    ("10-step chain", False, chain_steps()),
                    ("10-wide fan-out", True, fanout_steps()),
                ):
                    base = statistics.median(
                        [await asyncio.to_thread(direct, fake, concurrent) for _ in range(runs)]
                    )
                    gen = statistics.median([await generate(api, concurrent) for _ in range(runs)])
                    pipe = statistics.median([await pipeline(api, steps) for _ in range(runs)])
                    rows.append((label, base, gen, pipe))
                    if label == "10-step chain":
                        timeline = await chain_timeline(api, redis.url, fake, latency_ms)
    finally:
        worker.stop()
        fake.stop()
        redis.stop()

    check_requests = len(fake.requests())
    print(f"\nscripted provider latency {latency_ms} ms, median of {runs} runs, {STEPS} steps")
    header = (
        f"| {'scenario':<16} | {'direct ms':>9} | {'generate ms':>11} | {'pipeline ms':>11} "
        f"| {'pipeline/direct':>15} | {'overhead/step ms':>16} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for label, base, gen, pipe in rows:
        print(
            f"| {label:<16} | {base * 1000:>9.0f} | {gen * 1000:>11.0f} | {pipe * 1000:>11.0f} "
            f"| {pipe / base:>14.2f}x | {(pipe - base) * 1000 / STEPS:>16.1f} |"
        )
    print(f"\n({check_requests} provider requests served)")
    print("\nWhere a chained step's time goes (last chain run, median over steps 1-9, ms):")
    print("| segment | ms |")
    print("|---|---|")
    for name, value in timeline.items():
        print(f"| {name} | {value:.1f} |")


async def chain_timeline(
    api: httpx.AsyncClient, redis_url: str, fake: FakeOpenAI, latency_ms: int
) -> dict[str, float]:
    """Per chained step, from the task streams' entry ids and the provider's arrival times."""
    import redis as redis_sync

    from corral.config import RedisSettings
    from corral.task_schemas import task_events_key

    run = (await api.get(f"/api/pipelines/runs/{LAST_RUN[0]}")).json()
    client = redis_sync.Redis.from_url(
        f"{redis_url}/{RedisSettings().streams_db}", decode_responses=True
    )
    arrivals = {r.prompt: r.received_at for r in fake.requests()}  # the newest of each prompt
    rows: list[dict[str, float]] = []
    for step in run["steps"]:
        (task_id,) = step["task_ids"]
        at = {
            fields["type"]: int(entry.split("-")[0]) / 1000
            for entry, fields in client.xrange(task_events_key(task_id))
        }
        if step["name"] == "s0":
            at["request"] = at["started"]
        else:
            mark = f"step {step['name'][1:]} after"
            at["request"] = max(t for p, t in arrivals.items() if p.startswith(mark))
        rows.append(at)
    client.close()
    segments: dict[str, list[float]] = {}
    for prev, cur in itertools.pairwise(rows):
        parts = {
            "app: previous done -> queued (wake, SQL row, send)": cur["queued"] - prev["done"],
            "broker + worker pick-up: queued -> started": cur["started"] - cur["queued"],
            "worker: started -> request at provider": cur["request"] - cur["started"],
            f"provider answer + worker: request -> done, minus {latency_ms} ms": cur["done"]
            - cur["request"]
            - latency_ms / 1000,
        }
        for name, value in parts.items():
            segments.setdefault(name, []).append(value * 1000)
    return {name: statistics.median(values) for name, values in segments.items()}


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency-ms", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.latency_ms))
