"""Many SSE clients following one task's events, on the stack users run (issue 16).

    cd backend && uv run python ../bench/sse_fanout.py [--clients 1000] [--seconds 30]

Stack: `make up`'s processes (``bench/_devstack.py``: its Redis, SQLite, one worker per queue
with 2 processes, the app under uvicorn), rate limits raised. A task is started without waiting
(``POST /api/tools/echo/invoke`` with a tiny ``timeout_s`` answers ``timeout`` and the task id);
clients follow it at ``GET /api/tasks/{id}/events`` (one asyncio process, httpx over HTTP/1.1,
one connection per client, SSE parsed here). In one run:
  1. baseline: one client follows an echo task (sleeping with progress events), ``--baseline``
     times; the delay from the ``done`` entry's write (its stream id is Redis's clock, same
     host) to the client reading it;
  2. fan-out: ``--clients`` clients open the same task's events while it sleeps ``--seconds``
     (a progress event per second); each must read ``done``. Delay done -> received per client,
     connect time, the app process's RSS (before, all connected, peak, after) and CPU, its Redis
     connections (``CLIENT LIST`` of the stack's Redis, matched to the app's sockets) and its
     ``corral_sse_clients`` gauge. Then a no-op echo invoke must still be answered.
Echo writes its last progress event just before ``done``, so the delay includes fanning out
that event too (as in the baseline); the bench client shares the machine's cores with the app,
so delays are upper bounds (its CPU is printed). On a failure the app's Python stacks
(``py-spy dump``, if installed) and the stack's logs are kept in /tmp (``--keep-logs``: always).
Goal: all clients get ``done``; app RSS reported.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[1] / "backend"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(BACKEND_DIR))
sys.path.append(str(Path(__file__).resolve().parent))  # _devstack: after site-packages

import httpx  # noqa: E402
import psutil  # noqa: E402
from _devstack import Devstack  # noqa: E402

MIB = 1024 * 1024
GRACE_S = 60.0  # after the task's planned end: a client still without `done` has hung
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {message}", flush=True)


@dataclass
class Client:
    started: float = 0.0  # perf_counter
    connected: float = 0.0  # perf_counter, response headers read
    status: int = 0
    events: int = 0
    done_at: float = 0.0  # time.time() when `done` was read
    done_id: str = ""
    error: str = ""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def entry_time(entry_id: str) -> float:
    """A stream id's time (``ms-seq``: Redis's clock at XADD), epoch seconds."""
    return int(entry_id.partition("-")[0]) / 1000


def raise_nofile(needed: int) -> str:
    """Raise the soft fd limit before the stack starts (the app inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    note = "" if soft == resource.RLIM_INFINITY or soft >= needed else f" (< {needed} needed!)"
    return f"{soft}{note}"


def redis_port(stack: Devstack) -> int:
    title = " ".join(stack.child("redis-server").cmdline())  # "redis-server 127.0.0.1:PORT"
    return int(re.search(r":(\d+)", title).group(1))  # type: ignore[union-attr]


def app_redis_clients(app: psutil.Process, port: int) -> tuple[int, int, str]:
    """(connections the app holds, all clients of the Redis, the app's by client name)."""
    import redis

    ours = {
        f"{c.laddr.ip}:{c.laddr.port}"
        for c in app.net_connections("tcp")
        if c.raddr and c.raddr.port == port
    }
    with redis.Redis(host="127.0.0.1", port=port) as r:
        clients: list[dict[str, Any]] = r.client_list()
    mine = [c for c in clients if c.get("addr") in ours]
    names: dict[str, int] = {}
    for c in mine:
        name = re.sub(r"-[0-9a-f]{8}\b", "-*", c.get("name") or "(unnamed)")
        names[name] = names.get(name, 0) + 1
    by_name = ", ".join(f"{n} {k}" for k, n in sorted(names.items()))
    return len(mine), len(clients), by_name


def sse_gauge(stack: Devstack) -> str:
    try:
        text = httpx.get(f"{stack.url}/metrics", headers=stack.headers, timeout=30).text
    except httpx.HTTPError as exc:
        return f"? ({exc!r})"
    match = re.search(r"^corral_sse_clients (\S+)$", text, re.MULTILINE)
    return match.group(1).removesuffix(".0") if match else "?"


def rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def start_task(http: httpx.AsyncClient, sleep_s: float, steps: int) -> str:
    """Send an echo task without waiting for it: `timeout` with its id."""
    args = {"payload": "fanout", "sleep_s": sleep_s, "steps": steps}
    resp = await http.post("/api/tools/echo/invoke", json={"arguments": args, "timeout_s": 0.05})
    if resp.status_code != 200 or resp.json()["status"] not in ("timeout", "done"):
        raise SystemExit(f"echo invoke failed: {resp.status_code} {resp.text}")
    return str(resp.json()["task_id"])


async def follow(http: httpx.AsyncClient, task_id: str, rec: Client) -> None:
    """Read the task's events as SSE until `done` (or the stream ends / fails)."""
    rec.started = time.perf_counter()
    try:
        async with http.stream("GET", f"/api/tasks/{task_id}/events") as resp:
            rec.connected = time.perf_counter()
            rec.status = resp.status_code
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return
            event, entry_id = "", ""
            async for line in resp.aiter_lines():
                if line:
                    field, _, value = line.partition(":")
                    if field == "event":
                        event = value.strip()
                    elif field == "id":
                        entry_id = value.strip()
                    continue
                if not event:  # a ping (comment) or a keep-alive
                    continue
                rec.events += 1
                if event == "done":
                    rec.done_at = time.time()
                    rec.done_id = entry_id
                    return
                if event in ("error", "cancelled"):
                    rec.error = f"task ended with {event}"
                    return
                event, entry_id = "", ""
            rec.error = "stream ended without done"
    except Exception as exc:
        rec.error = f"{type(exc).__name__}: {exc}"


def make_client(stack: Devstack, n: int, seconds: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=n + 16, max_keepalive_connections=n + 16)
    timeout = httpx.Timeout(connect=120, read=seconds + GRACE_S + 60, write=60, pool=120)
    return httpx.AsyncClient(
        base_url=stack.url, headers=stack.headers, limits=limits, timeout=timeout
    )


async def baseline(stack: Devstack, runs: int, sleep_s: float) -> list[float]:
    """One client per task: seconds from the `done` entry's write to its read."""
    delays = []
    async with make_client(stack, 4, sleep_s) as http:
        for _ in range(runs):
            task_id = await start_task(http, sleep_s, max(1, round(sleep_s)))
            rec = Client()
            await asyncio.wait_for(follow(http, task_id, rec), sleep_s + GRACE_S)
            if not rec.done_at:
                raise SystemExit(f"baseline client did not get done: {rec.error}")
            delays.append(rec.done_at - entry_time(rec.done_id))
    return delays


@dataclass
class FanOut:
    clients: list[Client]
    task_end: float  # the done entry's time (epoch s)
    connect_s: float  # start -> the last client's response headers
    all_connected_before_end: bool
    rss_connected: int
    rss_peak: int
    cpu_connect_s: float
    cpu_total_s: float
    bench_cpu_s: float
    wall_s: float
    redis_peak: tuple[int, int, str]
    gauge_peak: str


async def fan_out(stack: Devstack, app: psutil.Process, n: int, seconds: float) -> FanOut:
    port = redis_port(stack)
    me = psutil.Process()
    peak = rss(app)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        last_say, last_cpu = time.monotonic(), cpu(app)
        while not stop.is_set():
            peak = max(peak, rss(app))
            await asyncio.sleep(0.05)
            if time.monotonic() - last_say >= 5:
                now_cpu = cpu(app)
                say(f"fan-out: {sum(1 for r in recs if r.connected)} connected, "
                    f"{sum(1 for r in recs if r.done_at)} done, "
                    f"{sum(1 for r in recs if r.error)} failed; app "
                    f"{(now_cpu - last_cpu) / (time.monotonic() - last_say) * 100:.0f} % CPU, "
                    f"RSS {rss(app) / MIB:.0f} MiB")  # fmt: skip
                last_say, last_cpu = time.monotonic(), now_cpu

    async with make_client(stack, n, seconds) as http:
        task_id = await start_task(http, seconds, max(1, round(seconds)))
        say(f"fan-out: task {task_id} sent; opening {n} streams")
        recs = [Client() for _ in range(n)]
        sampler = asyncio.create_task(sample())
        cpu0, me0 = cpu(app), cpu(me)
        t0 = time.perf_counter()
        runs = [
            asyncio.create_task(asyncio.wait_for(follow(http, task_id, r), seconds + GRACE_S))
            for r in recs
        ]
        # All connected (or failed to): response headers read by every client.
        deadline = t0 + seconds + GRACE_S
        while any(not r.connected and not r.error for r in recs):
            if time.perf_counter() > deadline or all(t.done() for t in runs):
                break
            await asyncio.sleep(0.01)
        connect_s = time.perf_counter() - t0
        connected_wall = time.time()
        say(f"fan-out: {sum(1 for r in recs if r.connected)} connected in {connect_s:.2f} s")
        cpu_connect = cpu(app) - cpu0
        rss_connected = rss(app)
        redis_peak = await asyncio.to_thread(app_redis_clients, app, port)
        gauge_peak = await asyncio.to_thread(sse_gauge, stack)
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        wall_s = time.perf_counter() - t0
        say(f"fan-out: every client finished after {wall_s:.1f} s")
        cpu_total, bench_cpu = cpu(app) - cpu0, cpu(me) - me0
        stop.set()
        await sampler
    for rec, outcome in zip(recs, outcomes, strict=True):
        if isinstance(outcome, BaseException) and not rec.error:
            rec.error = f"{type(outcome).__name__}: {outcome}"
    ids = {r.done_id for r in recs if r.done_id}
    task_end = entry_time(min(ids)) if ids else float("nan")
    return FanOut(
        clients=recs,
        task_end=task_end,
        connect_s=connect_s,
        all_connected_before_end=connected_wall < task_end,
        rss_connected=rss_connected,
        rss_peak=peak,
        cpu_connect_s=cpu_connect,
        cpu_total_s=cpu_total,
        bench_cpu_s=bench_cpu,
        wall_s=wall_s,
        redis_peak=redis_peak,
        gauge_peak=gauge_peak,
    )


def health_check(stack: Devstack) -> str:
    """A no-op echo invoke right after the fan-out: the app must still answer."""
    t0 = time.perf_counter()
    try:
        resp = httpx.post(
            f"{stack.url}/api/tools/echo/invoke",
            json={"arguments": {"payload": 1}, "timeout_s": 30.0},
            headers=stack.headers,
            timeout=60,
        )
    except httpx.HTTPError as exc:
        return f"echo invoke FAILED after {time.perf_counter() - t0:.1f} s: {exc!r}"
    took = time.perf_counter() - t0
    status = resp.json().get("status") if resp.status_code == 200 else resp.text[:200]
    return f"echo invoke {resp.status_code} {status} in {took * 1000:.0f} ms"


def keep_diagnostics(stack: Devstack, app: psutil.Process) -> None:
    """The app's Python stacks (py-spy, if installed) and the stack's logs, kept in /tmp."""
    out = Path(tempfile.mkdtemp(prefix="sse-fanout-"))
    if shutil.which("py-spy") and app.is_running():
        with (out / "app-py-spy-dump.txt").open("w") as f:
            subprocess.run(["py-spy", "dump", "--pid", str(app.pid)], stdout=f,
                           stderr=subprocess.STDOUT, timeout=60, check=False)  # fmt: skip
    shutil.copytree(stack.data_dir / "logs", out / "logs", dirs_exist_ok=True)
    say(f"diagnostics (py-spy dump of the app, the stack's logs) kept in {out}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="the fanned-out task's run time"
    )
    parser.add_argument("--baseline", type=int, default=5, help="single-client runs")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the stack (e.g. a setting)"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the stack's logs (always on failure)"
    )
    args = parser.parse_args()
    nofile = raise_nofile(args.clients * 2 + 512)  # this process's sockets and the app's
    env = {"CORRAL_RATE_LIMITS__TOOLS": "1000000/minute"}
    env |= dict(item.split("=", 1) for item in args.env)
    from tests.support.sandbox import ensure_sandbox_venv

    with Devstack(env, venv=str(ensure_sandbox_venv())) as stack:
        app = stack.child("uvicorn")
        port = redis_port(stack)
        say(f"stack up; open files limit (bench and stack): {nofile}; app pid {app.pid}")
        base = asyncio.run(baseline(stack, args.baseline, 2.0))
        say(f"baseline: {len(base)} single-client runs done")
        time.sleep(1)
        rss_before = rss(app)
        redis_before = app_redis_clients(app, port)
        run = asyncio.run(fan_out(stack, app, args.clients, args.seconds))
        time.sleep(2)  # connections closed, the app's subscriptions gone
        rss_after = rss(app)
        redis_after = app_redis_clients(app, port)
        gauge_after = sse_gauge(stack)
        app_alive = app.is_running()
        health = health_check(stack)
        say(f"after the fan-out: {health}")
        failed = not health.startswith("echo invoke 200 done") or any(
            not r.done_at for r in run.clients
        )
        if failed or args.keep_logs:
            keep_diagnostics(stack, app)
    recs = run.clients
    got = [r for r in recs if r.done_at]
    delays = [r.done_at - entry_time(r.done_id) for r in got]
    spread = [r.done_at - min(x.done_at for x in got) for r in got]
    connects = [r.connected - r.started for r in recs if r.connected]
    events = [r.events for r in got]
    b50 = statistics.median(base)

    def ms(values: list[float]) -> str:
        if not values:
            return "- | - | -"
        return " | ".join(f"{v * 1000:.0f}" for v in (pct(values, 0.5), pct(values, 0.99),
                                                     max(values)))  # fmt: skip

    print(f"\nSSE fan-out of one echo task ({args.seconds:g} s, a progress event per second); "
          "`make up`'s processes")  # fmt: skip
    print("| run | clients | got done | done->received ms p50 | p99 | max | "
          "first->each client ms p50 | p99 | max | p50 vs 1 client |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| baseline, 1 client x {len(base)} tasks | 1 | {len(base)}/{len(base)} | "
          f"{ms(base)} | {ms([])} | 1.00x |")  # fmt: skip
    ratio = f"{pct(delays, 0.5) / b50:.1f}x" if delays and b50 > 0 else "-"
    print(f"| fan-out | {len(recs)} | {len(got)}/{len(recs)} | {ms(delays)} | {ms(spread)} | "
          f"{ratio} |")  # fmt: skip
    print(f"goal all {len(recs)} clients get done: "
          f"{'met' if len(got) == len(recs) else 'NOT met'}")  # fmt: skip
    if connects:
        late = "" if run.all_connected_before_end else " -- AFTER the task ended: raise --seconds"
        print(f"connect (response headers) per client p50 {pct(connects, 0.5) * 1000:.0f} ms, "
              f"max {max(connects) * 1000:.0f} ms; all {len(connects)} connected after "
              f"{run.connect_s:.2f} s{late}")  # fmt: skip
    if events:
        print(f"events per client (queued/started/progress/done): min {min(events)}, "
              f"max {max(events)}")  # fmt: skip
    print("\n| app process (uvicorn) | value |")
    print("|---|---|")
    print(f"| RSS before fan-out | {rss_before / MIB:.0f} MiB |")
    per_client = (run.rss_connected - rss_before) / max(1, len(connects)) / 1024
    print(f"| RSS all {len(connects)} connected | {run.rss_connected / MIB:.0f} MiB "
          f"(+{per_client:.0f} KiB/client) |")  # fmt: skip
    print(f"| RSS peak (sampled every 50 ms) | {run.rss_peak / MIB:.0f} MiB |")
    print(f"| RSS after (all closed, +2 s) | {rss_after / MIB:.0f} MiB |")
    print(f"| CPU s, connecting all clients | {run.cpu_connect_s:.2f} |")
    print(f"| CPU s, whole fan-out ({run.wall_s:.1f} s wall) | {run.cpu_total_s:.2f} |")
    for when, (mine, total, names) in [("before", redis_before), ("all connected", run.redis_peak),
                                       ("after", redis_after)]:  # fmt: skip
        print(f"| Redis connections held, {when} | {mine} ({names}; {total} clients on the "
              "Redis) |")  # fmt: skip
    print(f"| corral_sse_clients gauge, all connected / after | {run.gauge_peak} / {gauge_after} |")
    print(f"bench client CPU during the fan-out: {run.bench_cpu_s:.2f} s (same 2 cores as the app)")
    errors: dict[str, int] = {}
    for r in recs:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    for err, count in sorted(errors.items(), key=lambda kv: -kv[1])[:10]:
        print(f"client error x{count}: {err}")
    print(f"app after the run: {'alive' if app_alive else 'GONE'}, {health}")
    return 1 if failed else 0


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    sys.exit(main())
