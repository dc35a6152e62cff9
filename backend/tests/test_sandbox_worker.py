"""The python_q worker's start-up self-test, and the wasm backend through a real worker.

These workers use their own Redis databases so they never take the shared workers' tasks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from celery import Celery

from corral.task_schemas import PYTHON_RUN, PythonRunInput, PythonRunOutput, message_kwargs
from tests.support.procs import RedisServer, Worker, start_worker, wait_until, wait_workers_ready
from tests.support.sandbox import WASM_CACHE, is_root

PLOT = "import matplotlib.pyplot as plt\nplt.figure(figsize=(2, 2)); plt.plot([1, 3, 2])\n6 * 7\n"


def _isolated_env(stack_env: dict[str, str], broker_db: int, **extra: str) -> dict[str, str]:
    return {
        **stack_env,
        "TASKS_REDIS__BROKER_DB": str(broker_db),
        "TASKS_REDIS__BACKEND_DB": str(broker_db + 1),
        **extra,
    }


@pytest.fixture
def stop_later() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


BROKEN = {"TASKS_SANDBOX__BACKEND": "bwrap", "TASKS_SANDBOX__VENV_PATH": "/nonexistent/venv"}


def _refusal_reason() -> str:
    # As root the bwrap backend refuses to run at all; as a normal user the venv is missing.
    return "as root" if is_root() else "no sandbox venv"


def test_bwrap_refuses_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.tasks.sandbox import SandboxUnavailable
    from corral.tasks.sandbox.bwrap import BwrapSandbox
    from corral.tasks.sandbox.settings import SandboxSettings

    if not is_root():
        monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(SandboxUnavailable, match="refusing to run the bwrap sandbox as root"):
        BwrapSandbox(SandboxSettings()).self_test()


def test_python_q_only_worker_exits_when_the_sandbox_fails(
    stack_env: dict[str, str], tmp_path: Path, stop_later: list[Worker]
) -> None:
    env = _isolated_env(stack_env, 6, **BROKEN)
    worker = start_worker(("python_q",), env, name="refuse-only@test", log_dir=tmp_path)
    stop_later.append(worker)
    code = wait_until(lambda: worker.proc.poll(), 60, "the worker to exit")
    assert code == 78, worker.log()[-3000:]
    log = worker.log()
    assert "sandbox self-test failed: refusing python_q tasks" in log
    assert _refusal_reason() in log


def test_worker_with_other_queues_drops_only_python_q(
    stack_env: dict[str, str], redis_server: RedisServer, tmp_path: Path, stop_later: list[Worker]
) -> None:
    env = _isolated_env(stack_env, 10, **BROKEN)
    worker = start_worker(
        ("python_q", "circuit_q"), env, name="refuse-mixed@test", log_dir=tmp_path
    )
    stop_later.append(worker)
    broker = f"{redis_server.url}/10"
    wait_workers_ready(broker, [worker])
    client = Celery(broker=broker, set_as_current=False)
    try:
        replies = client.control.inspect(destination=[worker.name], timeout=2).active_queues()
    finally:
        client.close()
    names = sorted(q["name"] for q in replies[worker.name])
    assert names == ["circuit_q"], names
    assert "sandbox self-test failed" in worker.log()


def test_wasm_backend_runs_in_a_real_worker(
    stack_env: dict[str, str], redis_server: RedisServer, tmp_path: Path, stop_later: list[Worker]
) -> None:
    env = _isolated_env(
        stack_env, 12, TASKS_SANDBOX__BACKEND="wasm", TASKS_SANDBOX__WASM_CACHE_DIR=str(WASM_CACHE)
    )
    worker = start_worker(("python_q",), env, name="wasm@test", log_dir=tmp_path, concurrency=1)
    stop_later.append(worker)
    broker = f"{redis_server.url}/12"
    wait_workers_ready(broker, [worker], timeout=600)  # a first compile takes about a minute
    client = Celery(broker=broker, backend=f"{redis_server.url}/13", set_as_current=False)
    try:
        started = time.monotonic()
        async_result = client.send_task(
            PYTHON_RUN.name,
            kwargs=message_kwargs(PythonRunInput(code=PLOT), owner_id="wasm-user"),
            queue="python_q",
        )
        raw = async_result.get(timeout=120)
        took = time.monotonic() - started
    finally:
        client.close()
    out = PythonRunOutput.model_validate(raw)
    assert out.backend == "wasm"
    assert out.error is None, out
    assert out.last_expr == "42"
    assert [f.content_type for f in out.figures] == ["image/png"]
    stored = Path(stack_env["TASKS_STORAGE__LOCAL_DIR"]) / "data" / out.figures[0].key
    assert stored.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = worker.log()
    assert "sandbox warmed in child" in log, log[-3000:]
    assert took < 60, took
    # wasmtime lives in the pool child, never in the parent (it does not survive a fork).
    parent = psutil.Process(worker.proc.pid)
    assert not any("wasmtime" in m.path for m in parent.memory_maps())
    (child,) = parent.children()
    assert any("wasmtime" in m.path for m in child.memory_maps())


def _selftest(prefix: list[str], env: dict[str, str]) -> dict[str, object]:
    import json
    import subprocess
    import sys

    cmd = [*prefix, sys.executable, "-m", "corral.tasks.sandbox.cli", "selftest"]
    proc = subprocess.run(
        [*cmd, "--backend", "auto"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_auto_picks_bwrap_when_it_works_else_wasm() -> None:
    from tests.support.sandbox import (
        SANDBOX_VENV,
        as_sandbox_user,
        ensure_sandbox_venv,
        sandbox_user_home,
    )

    ensure_sandbox_venv()
    base = {"TASKS_SANDBOX__VENV_PATH": str(SANDBOX_VENV)}
    unprivileged = {**base, "HOME": sandbox_user_home()}
    assert _selftest(as_sandbox_user(), unprivileged)["backend"] == "bwrap"
    # No usable venv: bwrap's self-test fails, auto falls back to wasm.
    broken = {
        "TASKS_SANDBOX__VENV_PATH": "/nonexistent",
        "TASKS_SANDBOX__WASM_CACHE_DIR": str(WASM_CACHE),
    }
    assert _selftest([], broken)["backend"] == "wasm"
