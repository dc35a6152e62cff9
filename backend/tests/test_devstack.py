"""`make up`'s stack: starts everything, prints URL and token, keeps data, leaves no orphans,
restarts a crashed child, and stops only on SIGINT/SIGTERM (even started with SIGINT ignored)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.procs import BACKEND_DIR, free_port, wait_until
from tests.support.sandbox import ensure_sandbox_venv


@pytest.fixture
def data_root() -> Iterator[Path]:
    """Not pytest's tmp_path: concurrent pytest sessions rotate /tmp/pytest-of-<user> away
    under a long-running stack; and the python_q worker (another user) must traverse it."""
    root = Path(tempfile.mkdtemp(prefix="corral-devstack-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _ignore_sigint() -> None:
    """Like a stack started from a script in the background: SIGINT inherited as ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Devstack:
    def __init__(self, data_dir: Path, port: int, *, sigint_ignored: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "TASKS_"))}
        # The sandbox venv the other tests use (built once), instead of a fresh one per data dir.
        env["TASKS_SANDBOX__VENV_PATH"] = str(ensure_sandbox_venv())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral.devstack",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--concurrency",
                "1",
            ],
            cwd=BACKEND_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_ignore_sigint if sigint_ignored else None,
        )
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def text(self) -> str:
        return "".join(self.output)

    def wait_up(self) -> str:
        wait_until(
            lambda: (
                "Corral is up" in self.text() and "Dev token" in self.text() and self._after_token()
            ),
            150,
            f"devstack to start; output:\n{self.text()}",
            interval=0.2,
        )
        return self._after_token()

    def _after_token(self) -> str:
        match = re.search(r"Dev token.*\n(\S+)\n", self.text())
        return match.group(1) if match else ""

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(30)


def test_make_up_stack_runs_keeps_data_and_stops_cleanly(data_root: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack = Devstack(data_root / "data", port, sigint_ignored=True)
    try:
        token = stack.wait_up()
        assert f"Corral is up: {url}" in stack.text()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            assert http.get("/api/readyz").status_code == 200
            body = http.post("/api/tools/echo/invoke", json={"arguments": {"payload": "hi"}}).json()
            assert body["status"] == "done"
            plot = http.post(
                "/api/tools/run_python/invoke",
                json={
                    "arguments": {
                        "code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\n6 * 7"
                    },
                    "timeout_s": 120,
                },
                timeout=150,
            ).json()
            assert plot["status"] == "done", plot
            assert plot["output"]["last_expr"] == "42"
            png = http.get(plot["output"]["figures"][0]["url"])
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
            page = http.get("/")
            assert page.status_code == 200 and "<title>Corral</title>" in page.text
        children = stack.descendants()
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "redis-server" in names and "uvicorn" in names
        assert names.count("corral.tasks.main worker") >= 3
        assert "corral.tasks.main beat" in names
        assert (data_root / "data" / "corral.db").is_file()  # migrated SQLite under the data dir
        host = next(p.cmdline() for p in children if "corral.tasks.sessions.host" in p.cmdline())
        host_folder = Path(host[host.index("--socket") + 1]).parent
        assert host_folder.is_dir()
        assert stack.interrupt() == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left: {[p.cmdline() for p in alive]}"
        # Every child stopped on its own (Redis last, so the others could still reach it):
        # none had to be killed, and the python_q worker removed its session host's folder.
        assert "did not stop" not in stack.text(), stack.text()
        assert not host_folder.exists()
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()

    # Same data dir: same dev secret (old token still valid), Redis data kept.
    again = Devstack(data_root / "data", port)
    try:
        again.wait_up()
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            tasks = http.get("/api/tasks").json()
            assert body["task_id"] in [t["task_id"] for t in tasks]
    finally:
        again.interrupt()


def _child(stack: Devstack, needle: str) -> psutil.Process:
    for proc in psutil.Process(stack.proc.pid).children():
        if needle in " ".join(proc.cmdline()):
            return proc
    raise AssertionError(f"no child running {needle!r}")


def test_crashed_worker_and_redis_are_restarted_and_sigterm_stops_all(data_root: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack = Devstack(data_root / "data", port)
    try:
        token = stack.wait_up()
        headers = {"Authorization": f"Bearer {token}"}
        worker = _child(stack, "-Q llm_q")
        worker.kill()
        wait_until(
            lambda: (
                "worker llm_q was killed by SIGKILL" in stack.text()
                and "worker llm_q restarted" in stack.text()
            ),
            20,
            f"the restart; output:\n{stack.text()}",
        )
        restarted = _child(stack, "-Q llm_q")
        assert restarted.pid != worker.pid
        redis = _child(stack, "redis-server")
        redis.kill()
        wait_until(lambda: "redis restarted" in stack.text(), 20, "redis restart")
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:

            def llm_q_answers() -> bool:
                ready = http.get("/api/readyz").json()
                return bool(ready.get("status") == "ok" or not ready.get("problems"))

            wait_until(llm_q_answers, 60, "readiness after the restarts", interval=0.5)
            # The restarted worker (on the restarted Redis) runs work; the app kept serving.
            done = http.post(
                "/api/tools/echo/invoke",
                json={"arguments": {"payload": "after", "queue": "llm_q"}, "timeout_s": 30},
            ).json()
            assert done["status"] == "done", done
            pool_child = int(done["output"]["worker"].rsplit(":", 1)[1])
            assert psutil.Process(pool_child).ppid() == restarted.pid, done
        children = stack.descendants()
        stack.proc.send_signal(signal.SIGTERM)
        assert stack.proc.wait(30) == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left: {[p.cmdline() for p in alive]}"
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()


def test_sigkilled_supervisor_leaves_no_child(data_root: Path) -> None:
    stack = Devstack(data_root / "data", free_port(), sigint_ignored=True)
    try:
        stack.wait_up()
        children = stack.descendants()
        assert len(children) >= 6  # redis, 3 workers (+ pool children), app, beat
        stack.proc.kill()
        stack.proc.wait(10)
        _gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"orphans left: {[p.cmdline() for p in alive]}"
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
