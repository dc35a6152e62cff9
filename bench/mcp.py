"""MCP tool call vs HTTP invoke of ``echo``, in the same run (issue 17; goal: MCP <= 1.5x).

    cd backend && uv run python ../bench/mcp.py [--n 200]

Stack: a private redis-server, one llm_q worker, the app (uvicorn in this process). Both paths
call ``echo`` (tiny payload, no sleep, on llm_q) with the same dev token: ``POST
/api/tools/echo/invoke`` over one keep-alive HTTP connection, and ``tools/call`` through the
official ``mcp`` client (``ClientSession`` over streamable HTTP, one MCP session). Calls
alternate between the two paths so drift hits both alike. Prints p50/p95 and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[1] / "backend"
# This file is named mcp.py: keep its folder off the path so `import mcp` is the SDK.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(BACKEND_DIR))

GOAL = 1.5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(url: str, token: str, n: int) -> dict[str, list[float]]:
    import httpx
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"}
    body = {"arguments": {"payload": 1, "queue": "llm_q"}, "timeout_s": 30}
    arguments = body["arguments"]
    out: dict[str, list[float]] = {"HTTP invoke": [], "MCP tools/call": []}
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http,
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http2,
        streamable_http_client(f"{url}/mcp", http_client=http2) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()

        async def via_http() -> None:
            resp = await http.post("/api/tools/echo/invoke", json=body)
            if resp.status_code != 200 or resp.json()["status"] != "done":
                raise SystemExit(f"HTTP invoke failed: {resp.status_code} {resp.text}")

        async def via_mcp() -> None:
            result = await session.call_tool("echo", arguments)
            if result.is_error:
                raise SystemExit(f"MCP call failed: {result.content}")

        for _ in range(20):  # warm-up: connections, imports, the worker's first tasks
            await via_http()
            await via_mcp()
        for i in range(n):
            pair: list[tuple[str, Any]] = [("HTTP invoke", via_http), ("MCP tools/call", via_mcp)]
            for name, call in pair if i % 2 == 0 else reversed(pair):
                t0 = time.perf_counter()
                await call()
                out[name].append(time.perf_counter() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="calls per path")
    args = parser.parse_args()

    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings
    from tests.support.db import new_sqlite_database
    from tests.support.procs import (
        UvicornThread,
        env_vars,
        start_redis,
        start_worker,
        wait_workers_ready,
    )

    redis = start_redis()
    scratch = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    env = {
        "TASKS_REDIS__URL": redis.url,
        "CORRAL_REDIS__URL": redis.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_STORAGE__SIGNING_SECRET": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "CORRAL_STORAGE__LOCAL_DIR": str(scratch / "objects"),
        "TASKS_STORAGE__LOCAL_DIR": str(scratch / "objects"),
        "CORRAL_DATABASE__URL": new_sqlite_database(scratch),
        "CORRAL_RATE_LIMITS__TOOLS": "1000000/minute",
    }
    worker = start_worker(("llm_q",), env, name="llm_q@bench-mcp")
    try:
        wait_workers_ready(redis.url + "/0", [worker])
        with env_vars(env):
            settings = AppSettings()  # type: ignore[call-arg]
        with UvicornThread(create_app(settings)) as server:
            out = asyncio.run(measure(server.url, issue_dev_token(settings.auth), args.n))
    finally:
        worker.stop()
        redis.stop()

    http50, mcp50 = pct(out["HTTP invoke"], 0.5), pct(out["MCP tools/call"], 0.5)
    http95, mcp95 = pct(out["HTTP invoke"], 0.95), pct(out["MCP tools/call"], 0.95)
    cores = os.cpu_count()
    print(f"\nMCP tools/call vs HTTP invoke of echo (llm_q), n={args.n} each, {cores} cores")
    print("| path | p50 ms | p95 ms | p50 vs HTTP | p95 vs HTTP |")
    print("|---|---|---|---|---|")
    for name, values in out.items():
        p50, p95 = pct(values, 0.5), pct(values, 0.95)
        print(
            f"| {name} | {p50 * 1000:.1f} | {p95 * 1000:.1f} | "
            f"{p50 / http50:.2f}x | {p95 / http95:.2f}x |"
        )
    ok = mcp50 <= GOAL * http50
    verdict = "met" if ok else "NOT met"
    print(f"\ngoal MCP p50 <= {GOAL}x HTTP p50: {verdict} ({mcp50 / http50:.2f}x)")
    print(f"(p95 ratio {mcp95 / http95:.2f}x)")
    return 0


if __name__ == "__main__":
    import importlib.util

    # This folder is off the path (see above): load the sibling module by file.
    spec = importlib.util.spec_from_file_location("_machine", HERE / "_machine.py")
    assert spec is not None and spec.loader is not None
    _machine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_machine)
    _machine.announce(__file__)
    sys.exit(main())
