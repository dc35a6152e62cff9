"""A private stack for fault tests: its own redis-server, SQLite and workers, so killing things
never disturbs the session's shared workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from corral.task_schemas import decode_event, task_events_key
from tests.support.db import new_sqlite_database
from tests.support.procs import (
    RedisServer,
    Worker,
    start_redis,
    start_worker,
    wait_until,
    wait_workers_ready,
)

# Fault tests want quick redelivery: short visibility, a sweep every second.
FAST_BROKER_ENV = {
    "TASKS_DELIVERY__VISIBILITY_TIMEOUT_S": "6",
    "TASKS_DELIVERY__RESTORE_INTERVAL_S": "1",
}


@dataclass
class FaultStack:
    env: dict[str, str]
    redis_server: RedisServer | None
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    persistent: Any = None  # a PersistentRedis, for tests that restart it

    @property
    def redis_url(self) -> str:
        return self.env["TASKS_REDIS__URL"]

    def streams(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url + "/1", decode_responses=True)

    def worker(
        self,
        queue: str,
        *,
        name: str,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Worker:
        w = start_worker(
            (queue,),
            {**self.env, **(env or {})},
            name=name,
            concurrency=concurrency,
            log_dir=self.log_dir,
        )
        self.workers.append(w)
        if wait:
            wait_workers_ready(self.broker_url(), [w])
        return w

    def broker_url(self) -> str:
        return self.env.get("TASKS_BROKER__URL") or self.redis_url + "/0"

    def stop(self) -> None:
        for w in self.workers:
            w.stop(5)
        if self.redis_server is not None:
            self.redis_server.stop()


@contextlib.contextmanager
def fault_stack(stack_env: dict[str, str], **extra: str) -> Iterator[FaultStack]:
    server = start_redis()
    tmp = Path(tempfile.mkdtemp(prefix="corral-faults-"))
    env = {
        **stack_env,
        **FAST_BROKER_ENV,
        "TASKS_REDIS__URL": server.url,
        "CORRAL_REDIS__URL": server.url,
        "CORRAL_DATABASE__URL": new_sqlite_database(tmp),
        **extra,
    }
    stack = FaultStack(env, server, tmp)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def events(client: redis.Redis, task_id: str) -> list[tuple[str, Any]]:
    return [
        (entry_id, decode_event(fields))
        for entry_id, fields in client.xrange(task_events_key(task_id))
    ]


def started_pids(client: redis.Redis, task_id: str) -> list[int]:
    return [
        int(e.worker.rsplit(":", 1)[1])
        for _, e in events(client, task_id)
        if e.type == "started" and e.worker
    ]


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (a whole worker "host")."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def wait_for_event(
    client: redis.Redis, task_id: str, kind: str, count: int = 1, timeout: float = 30
) -> list[tuple[str, Any]]:
    def seen() -> list[tuple[str, Any]]:
        found = [(i, e) for i, e in events(client, task_id) if e.type == kind]
        return found if len(found) >= count else []

    result: list[tuple[str, Any]] = wait_until(seen, timeout, f"{count} {kind} event(s)", 0.05)
    return result


def settle(seconds: float) -> None:
    time.sleep(seconds)


# ---------------------------------------------------------------------------------------------
# Processes the fault tests kill: a Redis with its data on disk, app servers
# ---------------------------------------------------------------------------------------------


@dataclass
class PersistentRedis:
    """A redis-server with AOF on in its own directory, restartable on the same port."""

    port: int
    data_dir: Path
    proc: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        import subprocess

        from tests.support.procs import redis_server_binary

        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            wait_until(client.ping, 10, f"redis-server on {self.port}")
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@contextlib.contextmanager
def persistent_fault_stack(stack_env: dict[str, str], **extra: str) -> Iterator[FaultStack]:
    """Like ``fault_stack`` but its Redis keeps its data across a restart (AOF, as make up)."""
    from tests.support.procs import free_port

    tmp = Path(tempfile.mkdtemp(prefix="corral-faults-"))
    server = PersistentRedis(free_port(), tmp / "redis")
    server.data_dir.mkdir()
    server.start()
    env = {
        **stack_env,
        **FAST_BROKER_ENV,
        "TASKS_REDIS__URL": server.url,
        "CORRAL_REDIS__URL": server.url,
        "CORRAL_DATABASE__URL": new_sqlite_database(tmp),
        **extra,
    }
    stack = FaultStack(env, None, tmp, persistent=server)
    try:
        yield stack
    finally:
        stack.stop()
        server.stop(signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class AppProcess:
    """The app as its own process (uvicorn), so a test can SIGKILL it."""

    env: dict[str, str]
    port: int
    log_path: Path
    proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        from corral.app.auth.service import issue_dev_token
        from corral.app.settings import AuthSettings

        return issue_dev_token(
            AuthSettings(mode="dev", dev_secret=self.env["CORRAL_AUTH__DEV_SECRET"])
        )

    def start(self) -> AppProcess:
        import subprocess
        import sys

        import httpx

        from tests.support.procs import BACKEND_DIR

        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "corral.app.main:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                env={**os.environ, **self.env},
                cwd=BACKEND_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited:\n{self.log_path.read_text()[-3000:]}")
            return httpx.get(f"{self.url}/api/healthz", timeout=1).status_code == 200

        wait_until(up, 60, "app to serve", 0.2)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except Exception:
                self.kill()
