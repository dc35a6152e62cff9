"""The app as a real OS process (uvicorn), so a test can SIGKILL it mid-work."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.assistant import dev_token
from tests.support.procs import BACKEND_DIR, free_port, wait_until


@dataclass
class AppProcess:
    url: str
    secret: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def headers(self, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {dev_token(sub, self.secret)}"}

    def client(self, sub: str, timeout: float = 60) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(sub), timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, the turn's lease is left to expire."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def app_process(
    stack_env: dict[str, str], database_url: str, log_dir: Path, **overrides: str
) -> Iterator[AppProcess]:
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "CORRAL_DATABASE__URL": database_url,
        "CORRAL_DATASETS__WORKER_BASE_URL": f"http://127.0.0.1:{port}",
        "CORRAL_RATE_LIMITS__KEY_PREFIX": f"rl-{uuid.uuid4().hex[:8]}",
        **overrides,
    }
    log_path = log_dir / f"app-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "corral.app.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=BACKEND_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = AppProcess(f"http://127.0.0.1:{port}", env["CORRAL_AUTH__DEV_SECRET"], proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited:\n{app.log()[-3000:]}")
        return httpx.get(f"{app.url}/api/healthz", timeout=1).status_code == 200

    try:
        wait_until(up, 90, f"the app on port {port}", interval=0.1)
        yield app
    finally:
        app.stop()
