"""The stack users run (`make up`'s processes), started privately for a benchmark.

``python -m corral.devstack`` on a fresh data directory and a free port: its own Redis, one
worker per queue (2 processes each, as `make up`), the app under uvicorn and beat, supervised
(a killed worker is restarted). Settings for the bench (rate limits raised, a scripted model)
come in as environment variables; the dev token is read from the banner.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import psutil

BACKEND_DIR = Path(__file__).resolve().parents[1] / "backend"
START_TIMEOUT_S = 300.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Devstack:
    """``with Devstack(env) as stack:`` → ``stack.url``, ``stack.headers``; stopped with SIGTERM."""

    def __init__(self, env: dict[str, str] | None = None, *, venv: str | None = None) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-stack-"))
        self.data_dir.chmod(0o711)  # the python_q worker runs as another user
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers: dict[str, str] = {}
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "TASKS_"))}
        if venv:
            base["TASKS_SANDBOX__VENV_PATH"] = venv
        self._env = {**base, **(env or {})}
        self._lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Devstack:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral.devstack", "--data-dir", str(self.data_dir),
             "--port", str(self.port)],
            cwd=BACKEND_DIR, env=self._env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (token := self._token()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise SystemExit("the stack did not start:\n" + "".join(self._lines[-40:]))
            time.sleep(0.2)
        self.headers = {"Authorization": f"Bearer {token}"}
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def _token(self) -> str:
        match = re.search(r"Dev token.*\n(\S+)\n", "".join(self._lines))
        return match.group(1) if match else ""

    def child(self, needle: str) -> psutil.Process:
        """The supervisor's child whose command line contains ``needle`` (e.g. ``-Q python_q``)."""
        assert self.proc is not None
        for proc in psutil.Process(self.proc.pid).children():
            if needle in " ".join(proc.cmdline()):
                return proc
        raise RuntimeError(f"no child of the stack runs {needle!r}")

    def kill_tree(self, needle: str) -> None:
        """SIGKILL a child and everything under it (a worker host lost); the supervisor
        restarts it."""
        top = self.child(needle)
        for proc in [*top.children(recursive=True), top]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("the stack did not become ready again")
