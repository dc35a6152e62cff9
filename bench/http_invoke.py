"""The HTTP API path against raw Celery, on the stack users run (issue 16).

    cd backend && uv run python ../bench/http_invoke.py [--n 200] [--users 30] [--per-user 10]

Stack: `make up`'s processes (``bench/_devstack.py``: its Redis, SQLite, one worker per queue
with 2 processes, the app under uvicorn), rate limits raised. In one run:
  1. sequential round trips of the no-op ``echo`` (llm_q): ``POST /api/tools/echo/invoke``
     (auth, rate limit, fair share, the ``task_runs`` row, send, stream wait, answer) against
     Celery's own ``send_task(...).get()`` on the same broker and workers, interleaved;
  2. throughput: ``users x per_user`` invokes at once (each user within its fair-share cap: the
     bench sets the llm_q cap to ``per_user``) against the same number of raw
     ``send_task().get()`` from a thread pool; tasks per second, errors.
Goals: HTTP p50 <= 2x Celery get(); throughput >= 80 % of raw Celery.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[1] / "backend"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(BACKEND_DIR))
sys.path.append(str(Path(__file__).resolve().parent))  # _devstack: after site-packages

import psutil  # noqa: E402
from _devstack import Devstack  # noqa: E402

ECHO = {"arguments": {"payload": 1, "queue": "llm_q"}, "timeout_s": 60}  # the queue get() uses


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def celery_client(stack: Devstack) -> Any:
    """A plain Celery client on the stack's broker and result backend (the baseline)."""
    from celery import Celery

    broker = stack_broker_url(stack)
    return Celery(broker=broker, backend=broker.removesuffix("/0") + "/1")


def stack_broker_url(stack: Devstack) -> str:
    import re

    title = " ".join(stack.child("redis-server").cmdline())  # "redis-server 127.0.0.1:PORT"
    port = re.search(r":(\d+)", title).group(1)  # type: ignore[union-attr]
    return f"redis://127.0.0.1:{port}/0"


def raw_round_trip(app: Any) -> float:
    t0 = time.perf_counter()
    result = app.send_task(
        "system.echo", kwargs={"input": {"payload": 1}, "owner_id": "bench"}, queue="llm_q"
    )
    result.get(timeout=60)
    result.forget()
    return time.perf_counter() - t0


async def sequential(stack: Devstack, app: Any, n: int) -> tuple[list[float], list[float]]:
    import httpx

    http: list[float] = []
    raw: list[float] = []
    async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=60) as c:
        for i in range(n + 10):
            t0 = time.perf_counter()
            resp = await c.post("/api/tools/echo/invoke", json=ECHO)
            took = time.perf_counter() - t0
            if resp.status_code != 200 or resp.json()["status"] != "done":
                raise SystemExit(f"echo invoke failed: {resp.status_code} {resp.text}")
            raw_took = await asyncio.to_thread(raw_round_trip, app)
            if i >= 10:  # warm-up
                http.append(took)
                raw.append(raw_took)
    return http, raw


class LeanConnection:
    """One keep-alive HTTP/1.1 connection that costs next to nothing per request.

    The load generator shares this machine's two cores with the stack it measures: httpx with
    300 connections spent ~9 ms of CPU per request, more than the app, and every millisecond of
    it came out of the server's share. Requests are written as bytes; answers are read by their
    ``Content-Length`` (the app's JSON answers always carry one).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> LeanConnection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def request(
        self, method: str, path: str, token: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def http_burst(
    stack: Devstack, users: int, per_user: int, rounds: int, profile: str | None = None
) -> tuple[float, int, dict[str, float]]:
    """``users x per_user`` connections, each invoking ``rounds`` times in a row."""
    import json

    from tests.support.assistant import dev_token

    secret = (stack.data_dir / "dev-secret").read_text().strip()
    body = json.dumps(ECHO).encode()
    errors = 0

    async def one(conn: LeanConnection, token: str) -> None:
        nonlocal errors
        for _ in range(rounds):
            status, answer = await conn.request("POST", "/api/tools/echo/invoke", token, body)
            if status != 200 or json.loads(answer)["status"] != "done":
                errors += 1

    tokens = [dev_token(f"bench-user-{u}", secret) for u in range(users)]
    pairs = [(await LeanConnection.open(stack.url), t) for t in tokens for _ in range(per_user)]
    for conn, token in pairs:  # first sight creates the user: not part of the timing
        status, _ = await conn.request("GET", "/api/me", token)
        assert status == 200, status
    held_before = await held_back(stack)
    spy = start_profile(stack, profile) if profile else None
    meter = CpuMeter(stack, {"app": stack.child("uvicorn")})
    t0 = time.perf_counter()
    await asyncio.gather(*(one(conn, token) for conn, token in pairs))
    took = time.perf_counter() - t0
    total = len(pairs) * rounds
    used = meter.per_task(total)
    print(f"Redis commands per HTTP invoke in the burst: {meter.commands_per_task(total)}")
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
        spy.wait(60)
    held = await held_back(stack) - held_before
    print(f"held back by fair share (the user at its cap as the app counts): {held:.0f} of {total}")
    for conn, _ in pairs:
        conn.close()
    return took, errors, used


async def held_back(stack: Devstack) -> float:
    """Runs fair share has held back so far (``corral_fair_share_refusals_total``)."""
    token = stack.headers["Authorization"].removeprefix("Bearer ")
    conn = await LeanConnection.open(stack.url)  # uvicorn closes a connection idle for 5 s
    status, text = await conn.request("GET", "/metrics", token)
    conn.close()
    assert status == 200, status
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith("corral_fair_share_refusals_total")
    )


class CpuMeter:
    """CPU seconds the stack's processes (and this one) spend between start and ``per_task``."""

    def __init__(self, stack: Devstack, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs | {
            "worker llm_q": stack.child("-Q llm_q"),
            "redis": stack.child("redis-server"),
            "bench client": psutil.Process(),
        }
        self.start = {name: _cpu(p, name != "bench client") for name, p in self.procs.items()}
        self.redis = stack_redis(stack)
        self.calls = _command_calls(self.redis)

    def commands_per_task(self, tasks: int) -> str:
        """Redis commands per task during the burst (both databases), the busiest first."""
        now = _command_calls(self.redis)
        diff = {name: now[name] - self.calls.get(name, 0) for name in now}
        top = sorted(diff.items(), key=lambda kv: -kv[1])[:8]
        return ", ".join(f"{name} {calls / tasks:.1f}" for name, calls in top if calls)

    def per_task(self, tasks: int) -> dict[str, float]:
        """Milliseconds of CPU per task, by process."""
        return {
            name: (_cpu(p, name != "bench client") - self.start[name]) / tasks * 1000
            for name, p in self.procs.items()
        }


def stack_redis(stack: Devstack) -> Any:
    import redis

    return redis.Redis.from_url(stack_broker_url(stack))


def _command_calls(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _cpu(proc: psutil.Process, children: bool = True) -> float:
    """CPU seconds of a process and (a worker's pool) its children."""
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if children else [])]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def start_profile(stack: Devstack, out: str) -> subprocess.Popen[bytes]:
    """py-spy on the app process (``pip install py-spy``), folded stacks to ``out``."""
    app = stack.child("uvicorn")
    return subprocess.Popen(
        ["py-spy", "record", "-p", str(app.pid), "-r", "250", "-f", "raw", "-o", out, "--gil",
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def raw_burst(stack: Devstack, app: Any, total: int) -> tuple[float, int, dict[str, float]]:
    errors = 0
    meter = CpuMeter(stack, {})
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(total, 64)) as pool:
        for outcome in pool.map(lambda _: _safe(app), range(total)):
            errors += outcome
    took = time.perf_counter() - t0
    print(f"Redis commands per raw round trip in the burst: {meter.commands_per_task(total)}")
    return took, errors, meter.per_task(total)


def _safe(app: Any) -> int:
    try:
        raw_round_trip(app)
        return 0
    except Exception:
        return 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="invokes per connection in a row")
    parser.add_argument("--py-spy", help="profile the app during the burst into this file")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the stack (e.g. a setting)"
    )
    args = parser.parse_args()
    # Rate limits raised and each user's llm_q cap at --per-user: every user stays within its
    # fair share (ISSUE-NOTES, 16), so the burst measures the path, not held-back releases.
    env = {
        "CORRAL_RATE_LIMITS__TOOLS": "1000000/minute",
        "CORRAL_FAIR__LLM_Q": str(max(args.per_user, 8)),
    }
    env |= dict(item.split("=", 1) for item in args.env)
    from tests.support.sandbox import ensure_sandbox_venv

    with Devstack(env, venv=str(ensure_sandbox_venv())) as stack:
        app = celery_client(stack)
        app_proc = stack.child("uvicorn")
        cpu_before = _cpu(app_proc)
        http, raw = asyncio.run(sequential(stack, app, args.n))
        per_invoke_ms = (_cpu(app_proc) - cpu_before) / (args.n + 10) * 1000
        total = args.users * args.per_user * args.rounds
        http_s, http_err, http_cpu = asyncio.run(
            http_burst(stack, args.users, args.per_user, args.rounds, args.py_spy)
        )
        raw_s, raw_err, raw_cpu = raw_burst(stack, app, total)
    h50, r50 = statistics.median(http), statistics.median(raw)
    print(f"\nNo-op echo on llm_q, n={args.n} each, interleaved; `make up`'s processes")
    print("| path | p50 ms | p99 ms | p50 vs Celery get() |")
    print("|---|---|---|---|")
    for name, values in [("HTTP invoke", http), ("Celery send_task().get()", raw)]:
        p50 = statistics.median(values)
        print(f"| {name} | {p50 * 1000:.1f} | {pct(values, 0.99) * 1000:.1f} | {p50 / r50:.2f}x |")
    print(f"goal HTTP p50 <= 2x get(): {'met' if h50 <= 2 * r50 else 'NOT met'}")
    print(f"app CPU per sequential invoke: {per_invoke_ms:.1f} ms")
    concurrent = args.users * args.per_user
    print(f"\n{concurrent} round trips at once ({args.users} users x {args.per_user}), "
          f"{args.rounds} in a row on each connection: {total} in all")  # fmt: skip
    print("| path | wall s | tasks/s | errors | vs raw |")
    print("|---|---|---|---|---|")
    print(f"| HTTP invoke | {http_s:.2f} | {total / http_s:.0f} | {http_err} | "
          f"{raw_s / http_s:.2f}x |")  # fmt: skip
    print(f"| Celery send_task().get() (64 threads) | {raw_s:.2f} | {total / raw_s:.0f} | "
          f"{raw_err} | 1.00x |")  # fmt: skip
    print(f"goal throughput >= 80 % of raw: {'met' if raw_s / http_s >= 0.8 else 'NOT met'}")
    print("\nCPU per task during each burst, ms (the machine has 2 cores: "
          f"{2000 / (total / http_s):.1f} ms per task at the HTTP rate)")  # fmt: skip
    names = list(dict.fromkeys([*http_cpu, *raw_cpu]))
    print("| path | " + " | ".join(names) + " | all |")
    print("|---" * (len(names) + 2) + "|")
    for label, cpu in [("HTTP invoke", http_cpu), ("Celery send_task().get()", raw_cpu)]:
        cells = " | ".join(f"{cpu[n]:.2f}" if n in cpu else "-" for n in names)
        print(f"| {label} | {cells} | {sum(cpu.values()):.2f} |")
    return 0


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    sys.exit(main())
