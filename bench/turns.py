"""Chat turn latency: the model's first token to the browser-facing SSE event.

    cd backend && uv run python ../bench/turns.py [--runs 200]

In one run, against the same scripted OpenAI-protocol server (in this process, so one clock):
  1. **direct**: the official ``openai`` async client streams a completion from the server; time
     from the server sending the first text chunk to the client reading it.
  2. **turn**: the app (a separate uvicorn process with its own Redis) runs a chat turn; a
     client follows ``GET /api/turns/{id}/events``; time from the server sending the model's
     first text chunk to the client reading the first ``text`` event. The path: the app's
     model stream -> the turn's event writer (first delta unbatched) -> Redis stream -> the
     process's StreamHub -> SSE -> HTTP.
Each answer is held until the reader is attached (the scripted server waits on an event), so
only the streaming path is timed. Prints p50/p99 of both and what the turn adds
(goal: <= 20 ms at p50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BACKEND = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND))

import httpx  # noqa: E402
import openai  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402

from tests.support.app_process import app_process  # noqa: E402
from tests.support.db import new_sqlite_database  # noqa: E402
from tests.support.fake_openai import FakeOpenAI, Reply  # noqa: E402
from tests.support.llm_env import LLM_API_KEY, llm_env  # noqa: E402
from tests.support.procs import start_redis, wait_until  # noqa: E402

AGENT = "fake-primary"
TEXT = "The first token travels from the model to the browser. " * 2


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def held_reply(fake: FakeOpenAI) -> threading.Event:
    hold = threading.Event()
    fake.script(AGENT, Reply(text=TEXT, chunk_size=8, chunk_delay_s=0.002, hold=hold))
    return hold


async def direct(fake: FakeOpenAI, runs: int) -> list[float]:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=LLM_API_KEY, max_retries=0)
    out = []
    try:
        for _ in range(runs):
            fake.reset()
            hold = held_reply(fake)
            stream = asyncio.create_task(
                client.chat.completions.create(
                    model=AGENT, messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
            await asyncio.to_thread(wait_until, lambda: fake.requests(), 10, "the request")
            hold.set()
            response = await stream
            async for chunk in response:
                if chunk.choices and chunk.choices[0].delta.content:
                    seen = time.perf_counter()
                    break
            await response.close()
            first = fake.requests()[0].first_content_at
            assert first is not None
            out.append(seen - first)
    finally:
        await client.close()
    return out


async def turns(fake: FakeOpenAI, url: str, headers: dict[str, str], runs: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(runs):
            fake.reset()
            hold = held_reply(fake)
            thread = (await client.post("/api/threads", json={})).json()["id"]
            resp = await client.post(f"/api/threads/{thread}/messages", json={"content": "hi"})
            assert resp.status_code == 202, resp.text
            turn_id = resp.json()["turn_id"]
            seen = None
            async with aconnect_sse(client, "GET", f"/api/turns/{turn_id}/events") as source:
                async for sse in source.aiter_sse():
                    if sse.event == "turn_started":
                        await asyncio.to_thread(wait_until, lambda: fake.requests(), 10, "model")
                        hold.set()
                    elif sse.event == "text" and seen is None:
                        seen = time.perf_counter()
                    elif sse.event in ("done", "error", "cancelled"):
                        assert sse.event == "done", sse.data
                        break
            first = fake.requests()[0].first_content_at
            assert first is not None and seen is not None
            out.append(seen - first)
    return out


def summary(name: str, values: list[float]) -> dict[str, Any]:
    return {
        "path": name,
        "runs": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(pct(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    redis = start_redis()
    fake = FakeOpenAI(api_key=LLM_API_KEY).start()
    work = Path(tempfile.mkdtemp(prefix="corral-bench-turns-"))
    env = {
        **llm_env(fake),
        "CORRAL_REDIS__URL": redis.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": secrets.token_hex(24),
        "CORRAL_STORAGE__LOCAL_DIR": str(work / "objects"),
        "CORRAL_STORAGE__SIGNING_SECRET": secrets.token_hex(24),
        "CORRAL_RATE_LIMITS__ENABLED": "false",
        "CORRAL_CHAT__TOOLS": "[]",
    }
    try:
        with app_process(env, new_sqlite_database(work), work) as app:
            headers = app.headers("bench-user")
            asyncio.run(turns(fake, app.url, headers, 5))  # warm up
            asyncio.run(direct(fake, 5))
            turn_times = asyncio.run(turns(fake, app.url, headers, args.runs))
            direct_times = asyncio.run(direct(fake, args.runs))
    finally:
        fake.stop()
        redis.stop()
    rows = [summary("direct openai stream", direct_times), summary("turn SSE", turn_times)]
    added = rows[1]["p50_ms"] - rows[0]["p50_ms"]
    print("first token -> reader (same scripted server, same run)")
    print(f"{'path':<24}{'runs':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for r in rows:
        print(f"{r['path']:<24}{r['runs']:>6}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['max_ms']:>10}")
    print(f"added by the durable turn at p50: {added:.2f} ms (goal <= 20 ms)")
    print(json.dumps({"rows": rows, "added_p50_ms": round(added, 2)}))
    return 0


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    raise SystemExit(main())
