"""Chaos rounds: kill things under real tasks and count how every task ended.

    cd backend && uv run --frozen python ../bench/chaos.py [--child-kills 30] [--worker-kills 10]
        [--brokers redis,rabbitmq]

Faults: (1) a worker's pool child is SIGKILLed when it starts the task (once); (2) the worker's
main process is SIGKILLed while it runs the task and a replacement worker is started, on each
broker. Every round sends one ``system.echo`` on llm_q and classifies it: done, explicit error,
hung (no outcome within the deadline), duplicated (more than one completed run: two `done`s, or
a `done` recorded as ignored after another outcome), and open records (the SQL row not final).
Goal: 0 hung, 0 duplicated, 0 open. Not part of ``make bench`` (it takes minutes).
Uses a private Redis, SQLite and workers (RabbitMQ: CORRAL_TEST_RABBITMQ_URL or a private node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND))

import psutil  # noqa: E402

from corral.app.db.models import TaskRun  # noqa: E402
from corral.app.task_runs import service as task_runs  # noqa: E402
from corral.task_schemas import SYSTEM_ECHO, EchoInput, Queue  # noqa: E402
from tests.support.bus import running_services  # noqa: E402
from tests.support.faults import (  # noqa: E402
    FaultStack,
    events,
    fault_stack,
    kill,
    started_pids,
)
from tests.support.rabbitmq import rabbitmq_url  # noqa: E402

DEADLINE_S = 60.0


def base_env() -> dict[str, str]:
    objects = tempfile.mkdtemp(prefix="corral-chaos-objects-")
    return {
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": "chaos-" + secrets.token_hex(24),
        "CORRAL_STORAGE__SIGNING_SECRET": "chaos-storage-" + secrets.token_hex(24),
        "TASKS_STORAGE__LOCAL_DIR": objects,
        "CORRAL_STORAGE__LOCAL_DIR": objects,
    }


def classify(stack: FaultStack, task_id: str) -> str:
    seen = [e for _, e in events(stack.streams(), task_id)]
    completed = [e for e in seen if e.type == "done"] + [
        e for e in seen if e.type == "ignored" and e.outcome == "done"
    ]
    if len(completed) > 1:
        return "duplicated"
    terminal = [e for e in seen if e.type in ("done", "error", "cancelled")]
    if not terminal:
        return "hung"
    return "done" if terminal[0].type == "done" else "explicit error"


async def one_round(stack: FaultStack, services: object, fault: str, sleep_s: float) -> str:
    task_id = await task_runs.submit(
        services,  # type: ignore[arg-type]
        SYSTEM_ECHO,
        EchoInput(payload=fault, sleep_s=sleep_s, steps=2),
        owner_id="u-chaos",
        queue=Queue.LLM,
    )
    client = stack.streams()
    deadline = time.monotonic() + DEADLINE_S
    killed = False
    while time.monotonic() < deadline:
        if not killed and (pids := started_pids(client, task_id)):
            if fault == "child":
                kill(pids[0])
            else:
                holder = psutil.Process(pids[0]).ppid()
                kill(holder)
                dead = next(w for w in stack.workers if w.proc.pid == holder)
                stack.workers.remove(dead)
                dead.proc.wait(10)
                stack.worker("llm_q", name=f"chaos-{time.monotonic_ns()}@bench", wait=False)
            killed = True
        if classify(stack, task_id) != "hung":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # let a late duplicate show itself
    result = classify(stack, task_id)
    async with services.db.session() as session:  # type: ignore[attr-defined]
        row = await session.get(TaskRun, task_id)
    if row is None or row.state in ("queued", "running"):
        await services.tracker.sync([task_id])  # type: ignore[attr-defined]
        async with services.db.session() as session:  # type: ignore[attr-defined]
            row = await session.get(TaskRun, task_id)
    if row is None or row.state in ("queued", "running"):
        return f"{result}+open"
    return result


@contextlib.contextmanager
def broker_env(broker: str) -> Iterator[dict[str, str]]:
    if broker == "redis":
        yield {}
        return
    with rabbitmq_url() as url:
        yield {"TASKS_BROKER__URL": url, "CORRAL_BROKER__URL": url}


async def run_fault(broker: str, fault: str, rounds: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    with broker_env(broker) as extra, fault_stack(base_env(), **extra) as stack:
        workers = 1 if fault == "child" else 2
        for i in range(workers):
            stack.worker("llm_q", name=f"chaos-{fault}-{i}@bench")
        async with running_services(stack.env) as services:
            for n in range(rounds):
                outcome = await one_round(stack, services, fault, 1.0 if fault == "child" else 2.0)
                counts[outcome] += 1
                print(f"  {broker} {fault} kill {n + 1}/{rounds}: {outcome}", flush=True)
    return counts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child-kills", type=int, default=30)
    parser.add_argument("--worker-kills", type=int, default=10)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    args = parser.parse_args()
    rows = []
    brokers = [b for b in args.brokers.split(",") if b]
    plan = [(brokers[0], "child", args.child_kills)] + [
        (b, "worker", args.worker_kills) for b in brokers
    ]
    for broker, fault, rounds in plan:
        if rounds <= 0:
            continue
        started = time.monotonic()
        counts = await run_fault(broker, fault, rounds)
        rows.append((broker, fault, rounds, counts, time.monotonic() - started))
    print("\n| broker | fault | rounds | done | explicit error | hung | duplicated | open record |")
    print("|---|---|---|---|---|---|---|---|")
    for broker, fault, rounds, counts, took in rows:
        opened = sum(v for k, v in counts.items() if k.endswith("+open"))
        plain = Counter({k.removesuffix("+open"): v for k, v in counts.items()})
        print(
            f"| {broker} | {fault} SIGKILL | {rounds} | {plain['done']} | "
            f"{plain['explicit error']} | {plain['hung']} | {plain['duplicated']} | {opened} |"
            f" ({took:.0f} s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
