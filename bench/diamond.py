"""The two middle steps of a diamond pipeline on a freshly started worker (issue 16).

    cd backend && uv run python ../bench/diamond.py [--trials 3] [--latency-ms 50]

Goal: the two middle steps of a diamond pipeline start within 20 ms of each other on a freshly
started worker. (Before the child warm-up in ``worker_process_init``, tasks/warmup.py, they
started 384-456 ms apart: the second prefork child paid its imports on its first task.)

Per trial, a fresh stack: `make up`'s processes (``bench/_devstack.py``: its Redis, SQLite, one
worker per queue with 2 processes, the app under uvicorn), the models pointed at the scripted
OpenAI-protocol server (every answer after ``--latency-ms``), which records when each request
arrives. Once the stack is ready (every queue has a live worker) and both llm_q children have
logged their warm-up, with no llm task sent before, one 4-step diamond A -> (B, C) -> D is posted
(``POST /api/pipelines/runs``, timed to the run's terminal event): the fresh run. Right after, in
the same stack, the same diamond on another input: the warm baseline. Measured:
  - start gap: |arrival of B's request - arrival of C's| at the model server;
  - A -> first middle: A's answer sent -> the first of B's and C's requests arriving;
  - end to end: the POST until the run's terminal event.
A breakdown table splits the path: the gaps between B's and C's sends (``queued_at``) and
started events as the app saw them (``started_at``); per step, from the llm_q worker's log, the
message received -> task body started (pool hand-off to a child, pre-run hooks) and body started
-> the request arriving at the model (the task's own work: the first task on a child pays here
for whatever the warm-up did not build).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[1] / "backend"
# bench/mcp.py would shadow the mcp package the app imports: drop this folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(BACKEND_DIR))
sys.path.append(str(Path(__file__).resolve().parent))  # _devstack: after site-packages

import httpx  # noqa: E402
from _devstack import Devstack  # noqa: E402

GOAL_MS = 20.0
WARMED = "child warmed"
TERMINAL = {"succeeded", "failed", "cancelled"}


def diamond(tag: str) -> dict[str, Any]:
    """A -> (B, C) -> D; each prompt starts with its step's name (``tag`` keeps runs apart)."""
    steps = [
        {"name": "A", "prompt_template": "step A of {query}"},
        {"name": "B", "prompt_template": "step B after {A}", "depends_on": ["A"]},
        {"name": "C", "prompt_template": "step C after {A}", "depends_on": ["A"]},
        {"name": "D", "prompt_template": "step D joins {B} and {C}", "depends_on": ["B", "C"]},
    ]
    return {"steps": steps, "input": {"query": f"{tag}-{uuid.uuid4().hex[:8]}"}}


def run_diamond(api: httpx.Client, tag: str) -> tuple[str, dict[str, Any], float]:
    """Post one diamond and wait for its terminal event: (query, run state, seconds)."""
    body = diamond(tag)
    began = time.perf_counter()
    resp = api.post("/api/pipelines/runs", json=body)
    resp.raise_for_status()
    run_id = resp.json()["run_id"]
    status, event = "", ""
    with api.stream("GET", f"/api/pipelines/runs/{run_id}/events", timeout=120) as events:
        for line in events.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "run":
                status = json.loads(line.split(":", 1)[1]).get("status", "")
                if status in TERMINAL:
                    break
    took = time.perf_counter() - began
    if status != "succeeded":
        raise SystemExit(f"diamond run {run_id} ended {status or 'without a terminal event'}")
    state = api.get(f"/api/pipelines/runs/{run_id}").json()
    return str(body["input"]["query"]), state, took


def _ts(value: str | None) -> float:
    if not value:
        return float("nan")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def measure(fake: Any, api: httpx.Client, tag: str) -> dict[str, Any]:
    """One diamond; times in ms from what the model server and the run state recorded."""
    query, state, took = run_diamond(api, tag)
    mine = [r for r in fake.requests() if query in r.prompt]
    by_step: dict[str, Any] = {}
    for req in mine:
        match = re.match(r"step ([ABCD]) ", req.prompt)
        if match:
            by_step.setdefault(match.group(1), req)
    if sorted(by_step) != ["A", "B", "C", "D"] or len(mine) != 4:
        raise SystemExit(f"expected one request per step, got {[r.prompt for r in mine]}")
    a, b, c = by_step["A"], by_step["B"], by_step["C"]
    steps = {s["name"]: s for s in state["steps"]}
    assert a.finished_at is not None
    out: dict[str, Any] = {
        "gap": abs(b.received_at - c.received_at) * 1000,
        "a_to_first": (min(b.received_at, c.received_at) - a.finished_at) * 1000,
        "e2e": took * 1000,
        "queued_gap": abs(_ts(steps["B"]["queued_at"]) - _ts(steps["C"]["queued_at"])) * 1000,
        "started_gap": abs(_ts(steps["B"]["started_at"]) - _ts(steps["C"]["started_at"])) * 1000,
    }
    for name, req in (("A", a), ("B", b), ("C", c)):
        out[f"{name}_task"] = steps[name]["task_ids"][-1]
        out[f"{name}_arrival"] = req.received_at
    return out


def worker_times(log: str, run: dict[str, Any]) -> None:
    """Add, per step A/B/C, the llm_q worker's view (its JSON log lines, wall clock): message
    received by the worker -> task body started (the pool hands it to a child, which runs the
    pre-run hooks), and body started -> the model request arriving (the task's own work)."""
    seen: dict[tuple[str, str], float] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event = str(entry.get("event", ""))
        if event == "task body started":
            seen[(str(entry.get("task_id")), "body")] = _ts(entry.get("timestamp"))
        elif event.endswith("] received") and "[" in event:
            task_id = event.rsplit("[", 1)[1].split("]", 1)[0]
            seen[(task_id, "received")] = _ts(entry.get("timestamp"))
    nan = float("nan")
    for name in ("A", "B", "C"):
        task_id, arrival = run[f"{name}_task"], run[f"{name}_arrival"]
        received, body = seen.get((task_id, "received"), nan), seen.get((task_id, "body"), nan)
        run[f"{name}_recv_to_body"] = (body - received) * 1000
        run[f"{name}_body_to_request"] = (arrival - body) * 1000


def wait_children_warmed(stack: Devstack, timeout_s: float = 120.0) -> list[str]:
    """The llm_q worker log's warm-up lines, once both children have written theirs."""
    log = stack.data_dir / "logs" / "worker-llm_q.log"
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        lines = [line.strip() for line in text.splitlines() if WARMED in line]
        if len(lines) >= 2:
            return lines
        time.sleep(0.1)
    print(f"note: {len(lines)} of 2 llm_q children logged {WARMED!r} within {timeout_s:.0f} s")
    return lines


def trial(fake: Any, env: dict[str, str], venv: str, settle_s: float) -> dict[str, Any]:
    with Devstack(env, venv=venv) as stack:
        warmed = wait_children_warmed(stack)
        time.sleep(settle_s)  # the rest of the stack done starting (beat, other workers)
        with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=120) as api:
            fresh = measure(fake, api, "fresh")
            warm = measure(fake, api, "warm")
        time.sleep(0.5)  # the worker's last log lines flushed
        log = (stack.data_dir / "logs" / "worker-llm_q.log").read_text(errors="replace")
    worker_times(log, fresh)
    worker_times(log, warm)
    return {"fresh": fresh, "warm": warm, "warmed": warmed, "log": log}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3, help="fresh stacks")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument(
        "--settle-s", type=float, default=2.0, help="idle time after the stack is ready"
    )
    parser.add_argument("--show-warmup", action="store_true", help="print the children's lines")
    parser.add_argument("--worker-log", help="copy the last trial's llm_q worker log here")
    args = parser.parse_args()

    from tests.support.fake_openai import FakeOpenAI, Reply
    from tests.support.llm_env import LLM_API_KEY, llm_env
    from tests.support.sandbox import ensure_sandbox_venv

    venv = str(ensure_sandbox_venv())
    delay = args.latency_ms / 1000
    results = []
    with FakeOpenAI(api_key=LLM_API_KEY) as fake:
        fake.respond_with(lambda req: Reply(text=f"answer to {req.prompt}", delay_s=delay))
        env = {**llm_env(fake), "CORRAL_RATE_LIMITS__TOOLS": "1000000/minute"}
        for n in range(1, args.trials + 1):
            result = trial(fake, env, venv, args.settle_s)
            results.append(result)
            f, w = result["fresh"], result["warm"]
            print(f"trial {n}: fresh start gap {f['gap']:.1f} ms, warm {w['gap']:.1f} ms")
            if args.show_warmup:
                for line in result["warmed"]:
                    print(f"  {line}")
    if args.worker_log:
        Path(args.worker_log).write_text(results[-1]["log"])

    print(
        f"\nDiamond A -> (B, C) -> D, scripted model {args.latency_ms} ms, `make up`'s processes "
        "(llm_q: 1 worker, 2 processes); fresh = first llm tasks of a new stack"
    )
    print(
        "| trial | fresh start gap ms | warm start gap ms | A→first middle ms fresh / warm "
        "| end-to-end ms fresh / warm |"
    )
    print("|---:|---:|---:|---:|---:|")
    for n, r in enumerate(results, 1):
        f, w = r["fresh"], r["warm"]
        print(
            f"| {n} | {f['gap']:.1f} | {w['gap']:.1f} | {f['a_to_first']:.1f} / "
            f"{w['a_to_first']:.1f} | {f['e2e']:.0f} / {w['e2e']:.0f} |"
        )

    def med(kind: str, key: str) -> float:
        return statistics.median(r[kind][key] for r in results)

    print(
        f"| median | {med('fresh', 'gap'):.1f} | {med('warm', 'gap'):.1f} | "
        f"{med('fresh', 'a_to_first'):.1f} / {med('warm', 'a_to_first'):.1f} | "
        f"{med('fresh', 'e2e'):.0f} / {med('warm', 'e2e'):.0f} |"
    )
    fresh_gap = med("fresh", "gap")
    print(
        f"goal fresh start gap <= {GOAL_MS:.0f} ms: "
        f"{'met' if fresh_gap <= GOAL_MS else 'NOT met'} (median {fresh_gap:.1f} ms)"
    )

    print(
        "\nBreakdown (ms). App: the run state's queued_at/started_at (sent, started event seen). "
        "Worker: its log (message received, task body started). Model: request arrival."
    )
    print(
        "| trial | run | B/C queued_at gap (app) | B/C started_at gap (app) "
        "| received→body A / B / C (worker) | body→request A / B / C (worker→model) |"
    )
    print("|---:|---|---:|---:|---|---|")
    for n, r in enumerate(results, 1):
        for kind in ("fresh", "warm"):
            x = r[kind]
            recv = " / ".join(f"{x[f'{s}_recv_to_body']:.1f}" for s in "ABC")
            body = " / ".join(f"{x[f'{s}_body_to_request']:.1f}" for s in "ABC")
            print(
                f"| {n} | {kind} | {x['queued_gap']:.1f} | {x['started_gap']:.1f} | {recv} "
                f"| {body} |"
            )
    return 0


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    sys.exit(main())
